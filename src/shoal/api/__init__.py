"""HTTP API (FastAPI): inventory, device operations, telemetry, live events."""
