"""token-ws-auth: API tokens for HTTP, short-lived signed tickets for WebSockets.

HTTP requests send ``Authorization: Bearer <token>``. A WebSocket client first trades
its token for a single-use ticket (``POST /api/ws-ticket``) and offers it as the
subprotocol ``mami.ticket.<ticket>`` next to ``mami.v1`` (or sends it as its first
message). See :mod:`plugins.token_ws_auth.authenticator`.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from core import hookimpl
from core.errors import ConfigError
from core.migrations import MigrationSource
from core.protocols import Authenticator
from core.runtime import Runtime

PLUGIN = "token-ws-auth"


@dataclass
class Settings:
    """``[plugins.token-ws-auth]``."""

    allowed_origins: list[str] = field(default_factory=list)
    """Exact browser origins allowed to open sockets (``https://chat.example.com``).
    No wildcards; the server's own ``[server] public_url`` origin is always allowed."""
    allow_missing_origin: bool = False
    """Allow sockets without an Origin header (non-browser clients such as scripts)."""
    algorithm: str = "HS256"
    """The only ticket signature algorithm accepted: HS256, HS384 or HS512."""
    signing_key_env: str = "MAMI_SIGNING_KEY"
    """Environment variable with the ticket signing key (at least 32 bytes). When it is
    unset, a key file is created with mode 0600 under ``<data_dir>/auth/``."""
    ticket_ttl: float = 30.0
    """Seconds a WebSocket ticket stays valid (at most 60)."""
    ticket_wait: float = 5.0
    """Seconds a socket without a ticket in its subprotocol has to send it (then 4408)."""
    max_message_bytes: int = 65536
    """Largest WebSocket message accepted; a larger one closes the socket with 1008."""
    messages_per_minute: int = 60
    """Messages one socket may send per minute; more close it with 1008."""
    max_failed_attempts: int = 10
    """Failed authentications (and malformed requests without a valid token) per client
    address within ``failure_window`` before that address's failures are refused (HTTP
    429, WebSocket 1008); a valid token from it is still served. Counted in the
    database, across every process and Lambda environment that shares it."""
    failure_window: float = 300.0
    """Seconds over which failed attempts are counted."""
    bootstrap_admin: bool = True
    """On the first start with no tokens, create an admin token and print it once."""
    admin_owner: str = "admin"
    """Owner of the token created on the first start."""

    def __post_init__(self) -> None:
        from plugins.token_ws_auth.tickets import ALGORITHMS

        where = f"[plugins.{PLUGIN}]"
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"{where} algorithm: must be one of {', '.join(ALGORITHMS)}")
        if not 0 < self.ticket_ttl <= 60:
            raise ConfigError(f"{where} ticket_ttl: must be between 0 and 60 seconds")
        for name in ("ticket_wait", "failure_window"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{where} {name}: must be positive")
        for name in ("max_message_bytes", "messages_per_minute", "max_failed_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where} {name}: must be at least 1")
        for origin in self.allowed_origins:
            if "*" in origin or origin.endswith("/") or "://" not in origin:
                raise ConfigError(
                    f"{where} allowed_origins: {origin!r} is not an exact origin "
                    "like https://chat.example.com"
                )


def authenticator_of(runtime: Runtime) -> Any:
    """This plugin's authenticator in ``runtime`` (registered at start)."""
    return runtime.state[PLUGIN]


@hookimpl
def register_authenticators(register: Callable[[Authenticator], None], runtime: Runtime) -> None:
    from plugins.token_ws_auth.authenticator import TokenAuthenticator

    authenticator = TokenAuthenticator(runtime, runtime.settings(PLUGIN) or Settings())
    runtime.state[PLUGIN] = authenticator
    register(authenticator)


@hookimpl
def register_migrations(register: Callable[[MigrationSource], None]) -> None:
    from plugins.token_ws_auth.models import MIGRATIONS

    register(MIGRATIONS)


@hookimpl
def register_routes(runtime: Runtime) -> list[Any]:
    from plugins.token_ws_auth.routes import routes

    return list(routes)


@hookimpl
def register_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from plugins.token_ws_auth.commands import add_token_command

    add_token_command(subparsers)


@hookimpl
def startup(runtime: Runtime) -> Awaitable[None] | None:
    authenticator = runtime.state.get(PLUGIN)
    return authenticator.start() if authenticator is not None else None
