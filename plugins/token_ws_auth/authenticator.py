"""The authenticator: bearer tokens for HTTP, signed single-use tickets for WebSockets.

Spent tickets and failed attempts live in the database, shared by every process and
Lambda environment (:mod:`plugins.token_ws_auth.state`); only a cache of recently seen
active tokens is kept in the process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from litestar.exceptions import WebSocketDisconnect

from core.errors import AuthError
from core.protocols import Check, Principal
from plugins.token_ws_auth import keys, redact, tickets, tokens
from plugins.token_ws_auth.state import SharedAuthState

if TYPE_CHECKING:
    from pathlib import Path

    from core.db import Database
    from core.runtime import Runtime
    from plugins.token_ws_auth import Settings

log = logging.getLogger("mami.auth")

SUBPROTOCOL = "mami.v1"
TICKET_PREFIX = "mami.ticket."
NOT_AUTHENTICATED, FORBIDDEN, POLICY, TIMEOUT = 4401, 4403, 1008, 4408
TOUCH_EVERY = timedelta(minutes=5)


class TooManyAttempts(AuthError):
    status_code = 429
    code = "rate_limit_exceeded"


class RecentTokens:
    """Tokens this process saw active within a ticket's lifetime, so a handshake with a
    ticket issued here needs no database round trip (a burst of handshakes would queue
    behind the chat's writes). Revocation through this process forgets a token at once;
    a revocation elsewhere (CLI, another process) closes the socket at the chat
    socket's next ``still_valid`` poll instead."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self.seen: dict[str, tuple[tokens.TokenInfo, float]] = {}

    def remember(self, info: tokens.TokenInfo) -> None:
        moment = time.monotonic()
        if len(self.seen) > 10_000:
            self.seen = {k: v for k, v in self.seen.items() if v[1] > moment - self.max_age}
        self.seen[info.id] = (info, moment)

    def forget(self, token_id: str) -> None:
        self.seen.pop(token_id, None)

    def get(self, token_id: str, owner: str) -> tokens.TokenInfo | None:
        entry = self.seen.get(token_id)
        if entry is None or entry[1] <= time.monotonic() - self.max_age:
            return None
        info = entry[0]
        expired = info.expires_at is not None and info.expires_at <= tokens.now()
        return None if expired or info.owner != owner else info


@dataclass
class SocketLimits:
    """Per-socket message counter (kept in the socket's ASGI scope)."""

    sent: deque[float] = field(default_factory=deque)


class TokenAuthenticator:
    """Implements :class:`core.protocols.Authenticator` plus ticket issuing and the
    per-message limits the chat socket asks for with :meth:`check_message`."""

    name = "token-ws-auth"

    def __init__(self, runtime: Runtime, settings: Settings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.shared = SharedAuthState(runtime.db, settings.max_failed_attempts,
                                      settings.failure_window)
        self.recent = RecentTokens(settings.ticket_ttl)
        self._key: bytes | None = None

    @property
    def db(self) -> Database:
        return self.runtime.db

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = keys.load_signing_key(self.settings.signing_key_env, self.key_path)
        return self._key

    @property
    def key_path(self) -> Path:
        return self.runtime.config.data_dir / "auth" / "ws-signing.key"

    @property
    def allowed_origins(self) -> set[str]:
        """The exact allow-list (this plugin's and ``[server] allowed_origins``), plus the
        server's own public origin."""
        allowed = set(self.settings.allowed_origins)
        allowed.update(o.rstrip("/") for o in self.runtime.config.server.allowed_origins)
        configured = urlsplit(self.runtime.config.server.public_url or "")
        if configured.scheme and configured.netloc:
            allowed.add(f"{configured.scheme}://{configured.netloc}")
        public = urlsplit(str(self.runtime.state.get("public_url") or ""))
        if public.scheme and public.netloc:
            allowed.add(f"{public.scheme}://{public.netloc}")
            # a wildcard bind: each address mami serve printed is the server's own too
            for address in self.runtime.state.get("server_addresses", ()):
                name = f"[{address}]" if ":" in address else address
                allowed.add(f"{public.scheme}://{name}:{public.port or 80}")
        return allowed

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        """Whether a page at ``origin`` may use this server: one of
        :attr:`allowed_origins`, or the server's own origin as the browser reached it
        (``Origin`` naming the ``Host`` the request went to, as for a page opened at
        ``http://localhost:8000`` when mami printed ``127.0.0.1``). Core's BrowserGuard
        has already refused every ``Host`` this server does not serve (DNS rebinding);
        where it serves any (``[server] allowed_hosts = ["*"]``, Lambda) only the lists
        count."""
        if origin in self.allowed_origins:
            return True
        if self.runtime.serverless or "*" in self.runtime.config.server.allowed_hosts:
            return False
        own = urlsplit(origin)
        return bool(host) and own.scheme in ("http", "https") and not own.path \
            and own.netloc == str(host).strip().lower()

    # -- HTTP -------------------------------------------------------------------------

    async def authenticate_http(self, headers: Mapping[str, str], client: str | None) -> Principal:
        """The principal of a ``Authorization: Bearer <token>`` request, or AuthError:
        401 (missing, malformed, wrong, expired, revoked), 403 (origin not allowed),
        429 (too many failed attempts from this address)."""
        lowered = {k.lower(): v for k, v in headers.items()}
        origin = lowered.get("origin")
        if origin is not None and not self.origin_allowed(origin, lowered.get("host")):
            raise AuthError(f"origin {origin!r} is not allowed: add it to [server] "
                            "allowed_origins", status_code=403)
        header = lowered.get("authorization")
        if not header:
            raise AuthError("missing credential: send 'Authorization: Bearer <token>'")
        scheme, _, credential = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not credential.strip() or " " in credential.strip():
            await self._failed(client)
            raise AuthError("malformed Authorization header: expected 'Bearer <token>'")
        info = await tokens.verify_token(self.db, credential.strip())
        if info is None:
            await self._failed(client)
            raise AuthError("invalid, expired or revoked token")
        self.recent.remember(info)
        if info.last_used_at is None or info.last_used_at < tokens.now() - TOUCH_EVERY:
            await tokens.touch(self.db, info.id, TOUCH_EVERY)
        return Principal(owner=info.owner, credential_id=info.id, expires_at=info.expires_at)

    async def _failed(self, client: str | None) -> None:
        """Count a failure; once the address is over the limit its failures are 429s
        (a valid credential from it is still served: one bad client behind a shared
        address or proxy must not lock the others out)."""
        if await self.shared.fail(client):
            raise TooManyAttempts("too many failed authentication attempts; try again later")

    async def malformed_request(self, headers: Mapping[str, str], client: str | None) -> bool:
        """A request refused as malformed before it was authenticated (see
        :class:`core.security.BrowserGuard`): a failed attempt of ``client`` unless it
        carries a valid token. True when the address is over the limit."""
        header = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
        scheme, _, credential = header.strip().partition(" ")
        if (scheme.lower() == "bearer" and credential.strip()
                and await tokens.verify_token(self.db, credential.strip()) is not None):
            return False
        return await self.shared.fail(client)

    async def issue_ticket(self, principal: Principal) -> tuple[str, tickets.Ticket]:
        """A single-use WebSocket ticket bound to the principal's owner and token."""
        return tickets.issue(self.key, self.settings.algorithm, principal.owner,
                             principal.credential_id, self.settings.ticket_ttl)

    # -- WebSocket --------------------------------------------------------------------

    async def accept_websocket(self, socket: Any) -> Principal | None:
        """Check Origin and ticket before the socket is used. Accepts and returns the
        principal, or closes with 1008 (too many failures), 4403 (origin), 4401 (bad
        ticket) or 4408 (no ticket in time) and returns ``None``."""
        headers, offered, subprotocol = _handshake(socket)
        client = getattr(getattr(socket, "client", None), "host", None)
        origin = headers.get("origin")
        if origin is None and not self.settings.allow_missing_origin:
            return await self._refuse(socket, subprotocol, FORBIDDEN, "origin required")
        if origin is not None and not self.origin_allowed(origin, headers.get("host")):
            return await self._refuse(socket, subprotocol, FORBIDDEN, "origin not allowed")
        in_header = [p[len(TICKET_PREFIX):] for p in offered if p.startswith(TICKET_PREFIX)]
        if in_header:
            principal = await self._redeem(in_header[0])
            await socket.accept(subprotocols=subprotocol)
        else:
            await socket.accept(subprotocols=subprotocol)
            try:
                first = await asyncio.wait_for(socket.receive_text(), self.settings.ticket_wait)
            except TimeoutError:
                await socket.close(code=TIMEOUT, reason="no ticket in time")
                return None
            except WebSocketDisconnect:
                return None
            principal = await self._redeem(_ticket_from_message(first))
        if principal is None:
            if await self.shared.fail(client):
                await socket.close(code=POLICY, reason="too many failed attempts")
            else:
                await socket.close(code=NOT_AUTHENTICATED, reason="invalid, used or expired ticket")
        return principal

    async def accept_anonymous(self, socket: Any) -> bool:
        """For ``[core] auth = false``: without it any web page could drive the socket
        (cross-site WebSocket hijacking). Accepts and returns True, or closes with 4403
        and returns False when the socket has an Origin that is not on the allow-list.
        Sockets without Origin (non-browser clients) are accepted."""
        headers, _offered, subprotocol = _handshake(socket)
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, headers.get("host")):
            await self._refuse(socket, subprotocol, FORBIDDEN, "origin not allowed")
            return False
        await socket.accept(subprotocols=subprotocol)
        return True

    async def _refuse(
        self, socket: Any, subprotocol: str | None, code: int, reason: str
    ) -> Principal | None:
        """Close with ``code``; always ``None``."""
        # A close before accept reaches the client as HTTP 403 without a code.
        await socket.accept(subprotocols=subprotocol)
        await socket.close(code=code, reason=reason)
        return None

    async def _redeem(self, ticket: str) -> Principal | None:
        """The principal of a valid, unused ticket whose token is still active; the
        ticket is spent. ``None`` for anything else."""
        try:
            claims = tickets.verify(self.key, self.settings.algorithm, ticket)
        except tickets.TicketError:
            return None
        if not await self.shared.spend(claims.ticket_id, claims.expires_at):
            return None
        if claims.token_id is None:
            if self.runtime.config.core.auth:
                return None
            return Principal(owner=claims.owner)
        info = self.recent.get(claims.token_id, claims.owner) or await tokens.active_token(
            self.db, claims.token_id, claims.owner)
        if info is None:
            return None
        return Principal(owner=info.owner, credential_id=info.id, expires_at=info.expires_at)

    async def still_valid(self, principal: Principal) -> bool:
        """False once the principal's token expired or was revoked."""
        if principal.credential_id is None:
            return not self.runtime.config.core.auth
        if principal.expires_at is not None and principal.expires_at <= tokens.now():
            return False
        info = await tokens.active_token(self.db, principal.credential_id, principal.owner)
        if info is None:
            self.recent.forget(principal.credential_id)
            return False
        self.recent.remember(info)
        return True

    async def credential_name(self, principal: Principal) -> str | None:
        """The name of the principal's token (for ``GET /api/me``)."""
        if principal.credential_id is None:
            return None
        info = await tokens.active_token(self.db, principal.credential_id, principal.owner)
        return info.name if info is not None else None

    async def revoke(self, token_id: str, owner: str | None = None) -> tokens.TokenInfo | None:
        """Revoke a token (of ``owner`` only, when given); it stops working at once here."""
        self.recent.forget(token_id)
        return await tokens.revoke_token(self.db, token_id, owner)

    def check_message(self, socket: Any, size: int) -> int | None:
        """Call for each message a socket receives: 1008 when it is larger than
        ``max_message_bytes`` or over ``messages_per_minute``, else ``None``."""
        if size > self.settings.max_message_bytes:
            return POLICY
        limits = socket.scope.setdefault("mami.token_ws_auth", SocketLimits())
        moment = time.monotonic()
        while limits.sent and limits.sent[0] <= moment - 60:
            limits.sent.popleft()
        if len(limits.sent) >= self.settings.messages_per_minute:
            return POLICY
        limits.sent.append(moment)
        return None

    # -- start ------------------------------------------------------------------------

    async def start(self) -> None:
        """Install log redaction, load the signing key, then warn that auth is off or
        create the first admin token."""
        redact.install()
        _ = self.key
        core = self.runtime.config.core
        if not core.auth:
            log.warning("authentication is OFF ([core] auth = false): every caller is "
                        "served as owner %r; do not expose this server", core.local_owner)
            return
        if (not self.settings.bootstrap_admin or self.runtime.serverless
                or not getattr(self.runtime, "repair_on_start", True)):  # doctor, plugins
            return
        if await tokens.count_tokens(self.db) > 0:
            return
        if not await self.runtime.claim_once(self.name, "bootstrap-admin"):
            return
        token, _info = await tokens.create_token(self.db, self.settings.admin_owner, "admin")
        print(bootstrap_message(self.public_url, token), flush=True)

    async def doctor(self) -> list[Check]:
        """The signing key's source and mode, and whether browsers' origins will match
        (see ``mami doctor``)."""
        env = self.settings.signing_key_env
        if os.environ.get(env):
            key = Check("signing key", "ok", f"from ${env}")
        else:
            mode = stat.S_IMODE(self.key_path.stat().st_mode)
            key = Check("signing key", "ok" if not mode & 0o077 else "fail",
                        f"{self.key_path} (mode {mode:o})", f"chmod 600 {self.key_path}")
        server = self.runtime.config.server
        loopback = server.host in ("127.0.0.1", "localhost", "::1")
        if server.public_url:
            parts = urlsplit(server.public_url)
            origins = Check("allowed origins", "ok",
                            f"{parts.scheme}://{parts.netloc} plus "
                            f"{len(self.settings.allowed_origins)} configured")
            if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost"):
                origins = Check("allowed origins", "warn",
                                f"[server] public_url {server.public_url} is plain http",
                                "serve browsers over https (deploy/server has nginx configs)")
        elif loopback:
            origins = Check("allowed origins", "ok", "loopback only")
        else:
            origins = Check("allowed origins", "warn",
                            f"[server] host is {server.host} but public_url is empty: pages "
                            "opened at another address are refused", "set [server] public_url "
                            "to the address browsers use, or list it in allowed_origins")
        return [key, origins]

    @property
    def public_url(self) -> str:
        server = self.runtime.config.server
        url = self.runtime.state.get("public_url") or f"http://{server.host}:{server.port}"
        return str(url).rstrip("/")


def bootstrap_message(url: str, token: str) -> str:
    """What the first start prints, once (like Jupyter's login URL)."""
    return (
        "\nmami: created the first admin token. It is shown only this once:\n\n"
        f"    {url}/?token={token}\n\n"
        "or, with curl:\n\n"
        f'    curl -H "Authorization: Bearer {token}" {url}/api/tokens\n\n'
        "Make more with `mami token create --owner NAME`.\n"
    )


def _handshake(socket: Any) -> tuple[dict[str, str], list[str], str | None]:
    """The socket's headers (lower-case names), the subprotocols it offers, and the one
    the server answers with (``mami.v1`` when offered)."""
    headers = {k.lower(): v for k, v in socket.headers.items()}
    offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
    return headers, offered, SUBPROTOCOL if SUBPROTOCOL in offered else None


def _ticket_from_message(text: str) -> str:
    """A first message is the ticket itself or ``{"type": "auth", "ticket": "..."}``."""
    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return ""
        ticket = data.get("ticket") if isinstance(data, dict) else None
        return ticket if isinstance(ticket, str) else ""
    return text
