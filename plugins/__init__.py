"""Built-in plugins. ``BUILTINS`` maps each plugin's name to its module and whether it
is enabled when plugins.toml does not say."""

BUILTINS: dict[str, tuple[str, bool]] = {
    "local-llm": ("plugins.local_llm", True),
    "openai-llm": ("plugins.openai_llm", False),
    "forge-image": ("plugins.forge_image", True),
    "token-ws-auth": ("plugins.token_ws_auth", True),
    "chroma-rag": ("plugins.chroma_rag", True),
    "memory": ("plugins.memory", True),
    "web-ui": ("plugins.web_ui", True),
    "builtin-tools": ("plugins.builtin_tools", False),
    "mcp": ("plugins.mcp_tools", False),
}
