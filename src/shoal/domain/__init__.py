"""Fish-farm logic on top of server events: inventory, correlation, health."""
