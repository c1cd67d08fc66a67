"""Built-in plugins. ``BUILTINS`` maps each plugin's name to its module and whether it
is enabled when plugins.toml does not say."""

BUILTINS: dict[str, tuple[str, bool]] = {}
