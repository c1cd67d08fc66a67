"""mcp: the tools of MCP servers, mounted as tools the model may call.

Each ``[plugins.mcp.servers.<name>]`` table is one server: a command started over
stdio (``command``, ``args``, ``env``, ``cwd``) or a streamable HTTP endpoint (``url``,
``headers``; secrets as ``{ env = "NAME" }``). Its tools appear as ``<name>_<tool>``
(``prefix`` changes that). Servers are connected when the app starts, each within
``connect_timeout``; one that is down makes the plugin ``degraded`` in ``/health``
and is retried with back-off (``reconnect_initial`` doubling up to
``reconnect_max``), and a live one is probed every ``probe_interval`` seconds, which
also picks up changes to its tool list. A call that fails or takes longer than
``call_timeout`` reaches the model as an error result, never as a broken turn.

Built on the official ``mcp`` SDK (``pip install 'mami[mcp]'``), imported only when
the plugin is enabled and starts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core import hookimpl
from core.config import validate_table
from core.errors import ConfigError
from core.runtime import Runtime

if TYPE_CHECKING:
    from core.tools import Toolset

PLUGIN = "mcp"
SERVER_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,32}$")


@dataclass
class ServerSettings:
    """One ``[plugins.mcp.servers.<name>]`` table."""

    command: str = ""
    """Executable of a stdio server (with ``args``); or give ``url``."""
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    """Environment of the stdio server, over a minimal one (PATH, HOME, ...)."""
    cwd: str = ""
    url: str = ""
    """Streamable HTTP endpoint (``https://host/mcp``); or give ``command``."""
    headers: dict[str, str] = field(default_factory=dict)
    """HTTP headers, e.g. ``Authorization = { env = "MCP_TOKEN" }`` (the whole value)."""
    prefix: str | None = None
    """Put before each tool name; unset: ``<name>_``."""
    call_timeout: float | None = None
    """Seconds for one call to this server's tools; unset: the plugin's."""


@dataclass
class Settings:
    """``[plugins.mcp]``."""

    servers: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``[plugins.mcp.servers.<name>]`` tables (see :class:`ServerSettings`)."""
    connect_timeout: float = 10.0
    """Seconds to start or reach a server and list its tools."""
    call_timeout: float = 30.0
    """Seconds one tool call may take."""
    reconnect_initial: float = 1.0
    """Seconds before the first reconnection attempt; doubles each time."""
    reconnect_max: float = 60.0
    """Longest wait between reconnection attempts."""
    probe_interval: float = 30.0
    """Seconds between checks that a connected server still answers."""

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "call_timeout", "reconnect_initial", "reconnect_max",
                     "probe_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"[plugins.{PLUGIN}] {name}: must be greater than 0")
        self.server_settings()

    def server_settings(self) -> dict[str, ServerSettings]:
        """The checked server tables by name; raises ConfigError naming the key."""
        where = f"[plugins.{PLUGIN}]"
        parsed: dict[str, ServerSettings] = {}
        for name, table in self.servers.items():
            at = f"{where} servers.{name}"
            if not SERVER_NAME.match(name):
                raise ConfigError(f"{at}: a server name is 1-32 letters, digits, _ or -")
            try:
                server = validate_table(ServerSettings, table, "", f"plugins.mcp.servers.{name}")
            except ConfigError as exc:
                raise ConfigError(str(exc).removeprefix(": ")) from exc
            if bool(server.command) == bool(server.url):
                raise ConfigError(f"{at}: give either command (stdio) or url (streamable HTTP)")
            if server.url and not server.url.startswith(("http://", "https://")):
                raise ConfigError(f"{at} url: must start with http:// or https://")
            if server.call_timeout is not None and server.call_timeout <= 0:
                raise ConfigError(f"{at} call_timeout: must be greater than 0")
            if server.prefix is not None and not re.fullmatch(r"[a-zA-Z0-9_-]*", server.prefix):
                raise ConfigError(f"{at} prefix: letters, digits, _ or - only")
            parsed[name] = server
        return parsed


@hookimpl
async def startup(runtime: Runtime) -> None:
    """Connect to every server (each within ``connect_timeout``; one that is down is
    retried in the background)."""
    from plugins.mcp_tools.client import MCPToolset

    toolset = MCPToolset(runtime.settings(PLUGIN) or Settings())
    try:
        await toolset.start()
    except BaseException:
        await toolset.aclose()
        raise
    runtime.state[PLUGIN] = toolset


@hookimpl
def register_tools(register: Callable[[Toolset], None], runtime: Runtime) -> None:
    toolset = runtime.state.get(PLUGIN)
    if toolset is not None:
        register(toolset)
