"""Harness for the token-ws-auth tests: an app with the plugin and two small test sockets,
served by uvicorn on loopback, and a capture of every log record of the run."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
from litestar import WebSocket, websocket
from litestar.datastructures import State
from websockets.asyncio.client import connect

from core import hookimpl
from core.app import create_app, runtime_of
from core.config import config_from_dict
from core.db import Database
from core.plugins import Candidate, builtin_candidates
from core.protocols import ChatMessage, Delta, GenerationParams
from plugins.token_ws_auth import tokens
from tests.conftest import LiveServer

SIGNING_KEY = "test-signing-key-0123456789abcdef-0123456789"
GOOD_ORIGIN = "https://good.example"


@websocket("/test/ws/echo")
async def echo_socket(socket: WebSocket, state: State) -> None:  # type: ignore[type-arg]
    """Authenticate, say who the caller is, then echo each message within the limits."""
    auth = state.runtime.authenticator
    principal = await auth.accept_websocket(socket)
    if principal is None:
        return
    await socket.send_json({"owner": principal.owner})
    while True:
        text = await socket.receive_text()
        code = auth.check_message(socket, len(text.encode()))
        if code is not None:
            await socket.close(code=code, reason="limit")
            return
        await socket.send_text(f"echo:{text}")


@websocket("/test/ws/stream")
async def stream_socket(socket: WebSocket, state: State) -> None:  # type: ignore[type-arg]
    """Authenticate, then stream deltas until ``still_valid`` turns false (4401)."""
    auth = state.runtime.authenticator
    principal = await auth.accept_websocket(socket)
    if principal is None:
        return
    while await auth.still_valid(principal):
        for _ in range(5):
            await socket.send_text("delta")
            await asyncio.sleep(0.05)
    await socket.close(code=4401, reason="credential expired or revoked")


@hookimpl
def register_routes(runtime: Any) -> list[Any]:
    return [echo_socket, stream_socket]


def sockets_plugin() -> ModuleType:
    """A plugin module that mounts the test sockets."""
    module = ModuleType("mami_test_sockets")
    module.register_routes = register_routes  # type: ignore[attr-defined]
    return module


class PacedLLM:
    """A stand-in model for the auth tests: a few deltas, or deltas without end when the
    prompt says ``forever`` (so a reply is surely running when a token is revoked)."""

    name = "paced"
    context_window = 4096

    def count_tokens(self, text: str) -> int:
        return len(text.split()) + 1

    async def stream(self, messages: Sequence[ChatMessage],
                     params: GenerationParams) -> AsyncIterator[Delta]:
        endless = "forever" in messages[-1].content
        count = 0
        while endless or count < 5:
            count += 1
            await asyncio.sleep(0.02)
            yield Delta(f"w{count} ")
        yield Delta("", finish_reason="stop")

    async def aclose(self) -> None:
        return None


@hookimpl
def register_llm_providers(register: Any, runtime: Any) -> None:
    register(PacedLLM())


def paced_llm_plugin() -> ModuleType:
    module = ModuleType("mami_paced_llm")
    module.register_llm_providers = register_llm_providers  # type: ignore[attr-defined]
    return module


def auth_candidates(builtins: Sequence[str] = ()) -> list[Candidate]:
    mine = [c for c in builtin_candidates() if c.name in ("token-ws-auth", *builtins)]
    return [*mine, Candidate("test-sockets", "tests", "builtin", True, sockets_plugin),
            Candidate("paced-llm", "tests", "builtin", True, paced_llm_plugin)]


@dataclass
class AuthServer:
    """A running app: its URLs, its runtime and the database URL."""

    app: Any
    url: str
    ws_url: str
    database_url: str
    secrets: set[str] = field(default_factory=set)

    @property
    def runtime(self) -> Any:
        return runtime_of(self.app)

    async def token(self, owner: str, expires_in: float | None = None) -> tuple[str, str]:
        """Create a token directly in the database; returns (token, id)."""
        from datetime import timedelta

        db = Database(self.database_url)
        try:
            lifetime = timedelta(seconds=expires_in) if expires_in else None
            token, info = await tokens.create_token(db, owner, "test", lifetime)
        finally:
            await db.close()
        self.secrets.add(token)
        return token, info.id

    async def ticket(self, token: str) -> str:
        async with httpx.AsyncClient(base_url=self.url) as client:
            response = await client.post("/api/ws-ticket",
                                         headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 201, response.text
        ticket = str(response.json()["ticket"])
        self.secrets.add(ticket)
        return ticket

    def ws(self, path: str, *, ticket: str | None = None, origin: str | None = GOOD_ORIGIN,
           protocols: list[str] | None = None) -> Any:
        """A websockets ``connect`` (use ``async with``)."""
        offered = protocols if protocols is not None else (
            ["mami.v1", f"mami.ticket.{ticket}"] if ticket else None)
        return connect(self.ws_url + path, origin=origin, subprotocols=offered,  # type: ignore[arg-type]
                       proxy=None, open_timeout=10, close_timeout=5)


class Serving(LiveServer):
    """uvicorn in a thread; access log on so its redaction is exercised."""

    def __init__(self, app: Any) -> None:
        super().__init__(app, log_level="info")
        self.start()
        CAPTURE.attach()


class Capture(logging.Handler):
    """Every formatted record of the session, from any logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(f"{record.name} {record.getMessage()} {record.exc_text or ''}")
        except Exception as exc:  # a record that cannot format is itself worth seeing
            self.lines.append(f"unformattable {record.msg!r}: {exc}")

    def attach(self) -> None:
        for name in ("", "uvicorn", "uvicorn.access", "uvicorn.error", "mami"):
            logger = logging.getLogger(name)
            if self not in logger.handlers:
                logger.addHandler(self)
        logging.getLogger().setLevel(logging.DEBUG)
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


CAPTURE = Capture()
ALL_SECRETS: set[str] = set()


def start_server(
    tmp: Path, database_url: str, *, builtins: Sequence[str] = (),
    tables: dict[str, Any] | None = None, auth: bool = True,
    server: dict[str, Any] | None = None, **settings: Any,
) -> tuple[AuthServer, Serving]:
    """Serve token-ws-auth (``settings`` on top of test defaults), the test sockets, the
    paced model and the named ``builtins`` (with their ``tables``); ``server`` is the
    ``[server]`` table."""
    table = {"allowed_origins": [GOOD_ORIGIN], "max_failed_attempts": 1000,
             "ticket_wait": 1.0, "messages_per_minute": 20, "max_message_bytes": 1024,
             "bootstrap_admin": False}
    table.update(settings)
    config = config_from_dict({
        "core": {"auth": auth, "data_dir": str(tmp), "database_url": database_url,
                 "image_worker": False, "llm": "paced"},
        "plugins": {"token-ws-auth": table, **(tables or {})},
        "server": server or {},
    })
    app = create_app(config, candidates=auth_candidates(builtins))
    serving = Serving(app)
    url = f"http://127.0.0.1:{serving.port}"
    server = AuthServer(app, url, f"ws://127.0.0.1:{serving.port}", database_url,
                        secrets=ALL_SECRETS)
    return server, serving
