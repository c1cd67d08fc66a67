"""Core sub-commands beyond serve/db/plugins, one module each. Each implements the
``register_commands`` hook like any plugin and is registered by :class:`core.plugins.PluginHost`
(``CORE_PLUGINS``); keep heavy imports inside the command functions."""
