"""The `mami worker` command (not built yet)."""
