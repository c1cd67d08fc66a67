"""The `mami ingest` command (not built yet)."""
