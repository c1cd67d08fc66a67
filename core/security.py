"""Browser-facing defences that hold whatever the plugins and ``[core] auth``: a ``Host``
allow-list (DNS rebinding), an ``Origin`` check on unsafe methods and WebSocket
upgrades (cross-site request forgery), and JSON-only request bodies (a cross-site
"simple" ``text/plain`` or form POST needs no preflight).

A handler that accepts uploads says so with ``opt={ACCEPTS_UPLOADS: True}``; it may then
also receive ``multipart/form-data``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware

from core.errors import MamiError, error_body
from core.plugins import describe

if TYPE_CHECKING:
    from litestar.types import ASGIApp, HTTPResponseStartEvent, Receive, Scope, Send

    from core.runtime import Runtime

log = logging.getLogger("mami.security")

ACCEPTS_UPLOADS = "mami.accepts_uploads"
MAX_JSON_DEPTH = 64
MAX_INT_DIGITS = 18  # what a 64-bit integer column holds
_MARK = bytes(0x31 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))  # digit: "1"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})
CLOSE_FORBIDDEN = 4403
PRINCIPAL_KEY = "mami.principal"
"""The scope key under which an authenticated request carries its principal."""
MALFORMED = frozenset({400, 413})
TOO_MANY = (429, "too many failed requests from this address; try again later",
            "rate_limit_exceeded")


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


class _BigInt(str):
    """An integer literal too long to store, kept as text so its field can be named."""


def _int_literal(text: str) -> int | _BigInt:
    return _BigInt(text) if len(text.lstrip("-")) > MAX_INT_DIGITS else int(text)


def _long_digit_run(data: bytes) -> bool:
    """Whether ``data`` has more than :data:`MAX_INT_DIGITS` digits in a row (a C-speed
    scan: a regular expression takes 30 ms on a 1 MiB body)."""
    marked = data.translate(_MARK)
    return b"1" * (MAX_INT_DIGITS + 1) in marked


def _field(path: tuple[str | int, ...]) -> str:
    """``messages[0].content`` for ``("messages", 0, "content")``."""
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else key)
    return text


def _first_problem(value: Any) -> tuple[str, str | None] | None:
    """Depth, long integers and NUL characters in a parsed JSON value (iteratively: the
    value may nest as deeply as the parser allows)."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if len(path) >= MAX_JSON_DEPTH and isinstance(item, dict | list):
            return f"JSON nested deeper than {MAX_JSON_DEPTH} levels", None
        field = _field(path) or None
        if isinstance(item, _BigInt):
            return f"{field or 'body'}: integer has more than {MAX_INT_DIGITS} digits", field
        if isinstance(item, str):
            if "\x00" in item:
                return f"{field or 'body'}: contains a NUL character", field
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                if "\x00" in key:
                    return f"{field or 'body'}: a key contains a NUL character", field
                stack.append((child, (*path, key)))
        elif isinstance(item, list):
            stack.extend((item[i], (*path, i)) for i in reversed(range(len(item))))
    return None


def json_problem(raw: bytes | str) -> tuple[str, str | None] | None:
    """What is wrong with a JSON text before it may be handled and stored, as ``(message,
    field)``: nested deeper than :data:`MAX_JSON_DEPTH`, an integer longer than
    :data:`MAX_INT_DIGITS` digits, or a NUL character in a string (PostgreSQL cannot store
    one). ``None`` when it has none of these; invalid JSON is left to the handler.

    Only a text that could have a problem is parsed here (more brackets than the depth
    limit, a ``\\u0000`` escape or a long run of digits): most bodies cost a few C-speed
    scans."""
    data = raw.encode() if isinstance(raw, str) else raw
    suspicious = (data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH
                  or b"\\u0000" in data or b"\x00" in data or _long_digit_run(data))
    if not suspicious:
        return None
    try:
        value = json.loads(data, parse_int=_int_literal)
    except RecursionError:
        return f"JSON nested deeper than {MAX_JSON_DEPTH} levels", None
    except ValueError:
        return None
    return _first_problem(value)


class BrowserGuard(ASGIMiddleware):
    """Refuses, before any handler runs:

    - a ``Host`` not on the allow-list: 421 (a WebSocket is closed with 4403);
    - an unsafe method or a WebSocket upgrade whose ``Origin`` is neither the server's
      own (its ``Host``), the ``public_url``'s, one in ``[server] allowed_origins`` nor
      one the authenticator allows: 403 (4403);
    - an unsafe method with a body that is not JSON (or multipart where uploads are
      accepted): 415;
    - a NUL character in the URL, or a JSON body with a problem :func:`json_problem`
      finds: 400 naming the field; a body over ``max_body``: 413.

    With ``[core] auth`` on, such a malformed request (and a 400 or 413 a handler gives
    before the caller is authenticated, such as invalid JSON) counts as a failed attempt
    of its address, through the authenticator's optional ``malformed_request``; over
    the limit it is answered 429. Malformed requests with a valid credential do not
    count.

    Lambda skips the ``Host`` check: API Gateway and function URLs route by host
    themselves, so no foreign name reaches the function."""

    scopes = (ScopeType.HTTP, ScopeType.WEBSOCKET)

    def __init__(self, runtime: Runtime, max_body: int) -> None:
        self.runtime = runtime
        self.max_body = max_body

    def allowed_hosts(self) -> set[str] | None:
        """Host names served, or ``None`` when any is (``"*"`` or Lambda)."""
        server = self.runtime.config.server
        if self.runtime.serverless or "*" in server.allowed_hosts:
            return None
        names = set(LOOPBACK_HOSTS) | {host_name(h) for h in server.allowed_hosts}
        if server.host not in WILDCARD_BINDS:
            names.add(host_name(server.host))
        # a wildcard bind serves the addresses mami serve printed (core.cli)
        names.update(a.lower() for a in self.runtime.state.get("server_addresses", ()))
        for url in (server.public_url, str(self.runtime.state.get("public_url") or "")):
            hostname = urlsplit(url).hostname
            if hostname and hostname not in WILDCARD_BINDS:
                names.add(hostname.lower())
        return names

    def origin_allowed(self, origin: str, host: str) -> bool:
        """Whether a browser page at ``origin`` may write to this server, reached as
        ``host`` (already checked against the host allow-list). A page whose origin is
        the ``Host`` it wrote to counts as the server's own only where that ``Host`` was
        checked: with ``allowed_hosts = ["*"]`` a DNS-rebinding page (``evil.example``
        resolving to this server) would pass as its own. On Lambda the platform routes
        by host, so its own origin stays allowed."""
        origin = origin.strip().lower()
        netloc = urlsplit(origin).netloc
        host_checked = self.runtime.serverless or self.allowed_hosts() is not None
        if host_checked and netloc and netloc == host.strip().lower():
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
        if "\x00" in scope.get("path", "") or b"%00" in scope.get("query_string", b""):
            return 400, "the URL contains a NUL character", "invalid_characters"
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
        param = None
        if refused is None and _is_json_write(scope):
            body, more = await self._read_body(receive)
            if more:
                refused = (413, f"the request body is over the limit of {self.max_body} bytes",
                           "request_too_large")
            elif (problem := json_problem(body)) is not None:
                refused = (400, problem[0], "invalid_request_body")
                param = problem[1]
            else:
                receive = _replay(body, receive)
        if refused is None:
            if self._counts_malformed(scope):
                send = self._counting(scope, send)
            await next_app(scope, receive, send)
            return
        status, message, code = refused
        if status in MALFORMED and self._counts_malformed(scope) and await self._over_limit(scope):
            await _send_error(send, *TOO_MANY)
            return
        if scope["type"] == ScopeType.WEBSOCKET:
            # Accept, then close: a close before accept reaches the client as a bare 403.
            await receive()
            offered = headers_of(scope).get("sec-websocket-protocol", "")
            accept: dict[str, Any] = {"type": "websocket.accept"}
            if offered.strip():  # a browser drops a socket that answers none it offered
                accept["subprotocol"] = offered.split(",")[0].strip()
            await send(accept)  # type: ignore[arg-type]
            await send({"type": "websocket.close", "code": CLOSE_FORBIDDEN,
                        "reason": message[:120]})
            return
        await _send_error(send, status, message, code, param)

    def _counts_malformed(self, scope: Scope) -> bool:
        """Whether a malformed answer to this request may count as a failed attempt: an
        unsafe HTTP request, with auth on, not (yet) authenticated."""
        return (scope["type"] == ScopeType.HTTP and scope.get("method") in UNSAFE_METHODS
                and self.runtime.config.core.auth and PRINCIPAL_KEY not in scope)

    async def _over_limit(self, scope: Scope) -> bool:
        """Count a malformed request as a failed attempt (the authenticator's optional
        ``malformed_request``); True when its address is over the limit."""
        await self.runtime.ensure_started()
        count = getattr(self.runtime.authenticator, "malformed_request", None)
        if count is None:
            return False
        client = scope.get("client")
        try:
            return bool(await count(headers_of(scope), client[0] if client else None))
        except Exception as exc:  # the refusal stands either way
            log.warning("could not count a malformed request: %s", describe(exc))
            return False

    def _counting(self, scope: Scope, send: Send) -> Send:
        """A ``send`` that counts a 400 or 413 the handler gives an unauthenticated caller
        (invalid JSON, say), and turns it into a 429 once the address is over the limit."""
        swallowing = False

        async def counted(message: Any) -> None:
            nonlocal swallowing
            if swallowing:
                return
            if (message["type"] == "http.response.start" and message["status"] in MALFORMED
                    and PRINCIPAL_KEY not in scope and await self._over_limit(scope)):
                swallowing = True
                await _send_error(send, *TOO_MANY)
                return
            await send(message)

        return counted  # type: ignore[return-value]

    async def _read_body(self, receive: Receive) -> tuple[bytes, bool]:
        """The whole body, and whether it went on past ``max_body`` (then it is cut)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return b"", True
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks), False


class RequireAuth(ASGIMiddleware):
    """Secure by default: with ``[core] auth`` on, every HTTP route needs a valid
    credential before its handler runs, unless the handler opts out with
    ``exclude_from_auth=True`` (the page and its files, ``/health``, the OpenAPI
    schema). A plugin route that forgets to ask for the principal is therefore not
    public. The principal is kept in the scope (:data:`PRINCIPAL_KEY`) for the
    ``principal`` dependency. WebSocket routes authenticate with their tickets, before
    anything is read from the socket."""

    scopes = (ScopeType.HTTP,)
    exclude_opt_key = "exclude_from_auth"
    exclude_path_pattern = (r"^/schema(/|$)",)

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        from core.api.deps import authenticate

        if self.runtime.config.core.auth and PRINCIPAL_KEY not in scope:
            await self.runtime.ensure_started()
            client = scope.get("client")
            try:
                principal = await authenticate(self.runtime, headers_of(scope),
                                               client[0] if client else None)
            except MamiError as exc:
                await _send_error(send, exc.status_code, exc.message, exc.code, exc.param)
                return
            scope[PRINCIPAL_KEY] = principal  # type: ignore[literal-required]
        await next_app(scope, receive, send)


def _is_json_write(scope: Scope) -> bool:
    if scope["type"] != ScopeType.HTTP or scope.get("method") not in UNSAFE_METHODS:
        return False
    media = headers_of(scope).get("content-type", "").partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/")
                                           and media.endswith("+json"))


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the already read body over once, then defers to the
    client's (for a disconnect)."""
    sent = False

    async def replay() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay  # type: ignore[return-value]


async def _send_error(send: Send, status: int, message: str, code: str | None,
                      param: str | None = None) -> None:
    body = json.dumps(error_body(status, message, code=code, param=param)).encode()
    start: HTTPResponseStartEvent = {
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())]}
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})


def headers_of(scope: Scope) -> dict[str, str]:
    """A scope's headers by lower-case name."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def guards(runtime: Runtime, max_body: int) -> list[Any]:
    """The middleware :func:`core.app.create_app` installs (``max_body``: the largest
    request body in bytes)."""
    return [BrowserGuard(runtime, max_body), RequireAuth(runtime)]
