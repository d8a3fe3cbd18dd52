"""The LwM2M server: registration interface, device management, observe, send."""
