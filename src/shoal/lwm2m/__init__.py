"""Sans-IO LwM2M: paths, object model, content formats, message rules."""
