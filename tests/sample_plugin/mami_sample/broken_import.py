"""A plugin that cannot be imported."""

raise RuntimeError("sample plugin exploded on import")
