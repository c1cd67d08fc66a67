"""The `mami chat` command (not built yet)."""
