"""Browser-facing defences that hold whatever the plugins and ``[core] auth``: a ``Host``
allow-list (DNS rebinding), an ``Origin`` check on unsafe methods and WebSocket
upgrades (cross-site request forgery), and JSON-only request bodies (a cross-site
"simple" ``text/plain`` or form POST needs no preflight).

A handler that accepts uploads says so with ``opt={ACCEPTS_UPLOADS: True}``; it may then
also receive ``multipart/form-data``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware

from core.errors import error_body

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Receive, Scope, Send

    from core.runtime import Runtime

ACCEPTS_UPLOADS = "mami.accepts_uploads"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})
CLOSE_FORBIDDEN = 4403


def host_name(host: str) -> str:
    """The name part of a ``Host`` header or netloc, lower-case, without port or brackets
    (``[::1]:8000`` is ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of a URL, or ``None`` when it has none."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        return None
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}".lower()


class BrowserGuard(ASGIMiddleware):
    """Refuses, before any handler runs:

    - a ``Host`` not on the allow-list: 421 (a WebSocket is closed with 4403);
    - an unsafe method or a WebSocket upgrade whose ``Origin`` is neither the server's
      own (its ``Host``), the ``public_url``'s, one in ``[server] allowed_origins`` nor
      one the authenticator allows: 403 (4403);
    - an unsafe method with a body that is not JSON (or multipart where uploads are
      accepted): 415.

    Lambda skips the ``Host`` check: API Gateway and function URLs route by host
    themselves, so no foreign name reaches the function."""

    scopes = (ScopeType.HTTP, ScopeType.WEBSOCKET)

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def allowed_hosts(self) -> set[str] | None:
        """Host names served, or ``None`` when any is (``"*"`` or Lambda)."""
        server = self.runtime.config.server
        if self.runtime.serverless or "*" in server.allowed_hosts:
            return None
        names = set(LOOPBACK_HOSTS) | {host_name(h) for h in server.allowed_hosts}
        if server.host not in WILDCARD_BINDS:
            names.add(host_name(server.host))
        for url in (server.public_url, str(self.runtime.state.get("public_url") or "")):
            hostname = urlsplit(url).hostname
            if hostname and hostname not in WILDCARD_BINDS:
                names.add(hostname.lower())
        return names

    def origin_allowed(self, origin: str, host: str) -> bool:
        """Whether a browser page at ``origin`` may write to this server, reached as
        ``host`` (already checked against the host allow-list)."""
        origin = origin.strip().lower()
        netloc = urlsplit(origin).netloc
        if netloc and netloc == host.strip().lower():
            return True
        server = self.runtime.config.server
        allowed = {o.rstrip("/").lower() for o in server.allowed_origins}
        for url in (server.public_url, str(self.runtime.state.get("public_url") or "")):
            if (own := origin_of(url)) is not None:
                allowed.add(own)
        extra: Iterable[str] = getattr(self.runtime.authenticator, "allowed_origins", ()) or ()
        allowed.update(o.lower() for o in extra)
        return origin in allowed

    def refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        """``(status, message, code)`` when the request must be refused, else ``None``."""
        headers = headers_of(scope)
        host = headers.get("host", "")
        hosts = self.allowed_hosts()
        if hosts is not None and host_name(host) not in hosts:
            return (421, f"host {host!r} is not served here: add it to [server] allowed_hosts "
                         "or set [server] public_url", "host_not_allowed")
        websocket = scope["type"] == ScopeType.WEBSOCKET
        if not websocket and scope.get("method", "GET") not in UNSAFE_METHODS:
            return None
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, host):
            return (403, f"origin {origin!r} is not allowed to write here: add it to "
                         "[server] allowed_origins", "origin_not_allowed")
        if websocket:
            return None
        return self._body_refusal(scope, headers)

    def _body_refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str, str] | None:
        has_body = headers.get("content-length", "0").strip() not in ("", "0") or (
            "transfer-encoding" in headers)
        media = headers.get("content-type", "").partition(";")[0].strip().lower()
        if not media and not has_body:
            return None
        handler = scope.get("route_handler")
        uploads = bool(getattr(handler, "opt", {}).get(ACCEPTS_UPLOADS))
        if media == "application/json" or (media.startswith("application/")
                                           and media.endswith("+json")):
            return None
        if uploads and media == "multipart/form-data":
            return None
        expected = "application/json" + (" or multipart/form-data" if uploads else "")
        return (415, f"unsupported Content-Type {media or '(none)'!r}: send {expected}",
                "unsupported_media_type")

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        refused = self.refusal(scope)
        if refused is None:
            await next_app(scope, receive, send)
            return
        status, message, code = refused
        if scope["type"] == ScopeType.WEBSOCKET:
            # Accept, then close: a close before accept reaches the client as a bare 403.
            await receive()
            offered = headers_of(scope).get("sec-websocket-protocol", "")
            accept: dict[str, Any] = {"type": "websocket.accept"}
            if offered.strip():  # a browser drops a socket that answers none it offered
                accept["subprotocol"] = offered.split(",")[0].strip()
            await send(accept)  # type: ignore[arg-type]
            await send({"type": "websocket.close", "code": CLOSE_FORBIDDEN, "reason": message[:120]})
            return
        body = json.dumps(error_body(status, message, code=code)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def headers_of(scope: Scope) -> dict[str, str]:
    """A scope's headers by lower-case name."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def guards(runtime: Runtime) -> list[Any]:
    """The middleware :func:`core.app.create_app` installs."""
    return [BrowserGuard(runtime)]
