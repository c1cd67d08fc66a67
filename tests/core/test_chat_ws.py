"""WebSocket chat with a real ``websockets`` client against uvicorn on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from core.api import ws as ws_module
from core.api.ws import push_event
from core.app import create_app
from core.protocols import Principal
from tests.chat_support import (
    LOCAL,
    AuthPlugin,
    HeaderAuthenticator,
    command_plugin,
    plugin_object,
)


@pytest.fixture
def server(make_config: Any, live_server: Any) -> Any:
    """Replies of up to 400 tokens: long enough to cancel one mid-way."""
    return live_server(create_app(make_config(budget={"reply_tokens": 400}), candidates=[LOCAL]))


@pytest.fixture
def brief_server(make_config: Any, live_server: Any) -> Any:
    return live_server(create_app(make_config(budget={"reply_tokens": 24}), candidates=[LOCAL]))


async def send(ws: ClientConnection, **message: Any) -> None:
    await ws.send(json.dumps(message))


async def receive(ws: ClientConnection) -> dict[str, Any]:
    """The next event; a server that stays silent fails the test instead of hanging it."""
    return json.loads(await asyncio.wait_for(ws.recv(decode=True), 60))  # type: ignore[no-any-return]


async def until_end(ws: ClientConnection) -> tuple[list[dict[str, Any]], str]:
    """Events up to and including ``end``, and the text of the deltas."""
    events = []
    while True:
        event = await receive(ws)
        events.append(event)
        if event["type"] == "end":
            return events, "".join(e["text"] for e in events if e["type"] == "delta")


def stored(server: Any, conversation: str, **kwargs: Any) -> list[dict[str, Any]]:
    return httpx.get(f"{server.url}/api/conversations/{conversation}/messages",
                     **kwargs).json()  # type: ignore[no-any-return]


async def test_many_turns_on_one_socket(brief_server: Any) -> None:
    server = brief_server
    async with connect(server.ws_url + "/ws/chat") as ws:
        await send(ws, type="message", content="My name is Ada.")
        events, first = await until_end(ws)
        start, end = events[0], events[-1]
        assert start["type"] == "start" and end["status"] == "complete"
        assert end["message_id"] == start["message_id"] and end["usage"]["completion_tokens"] > 0
        conversation = start["conversation_id"]
        await send(ws, type="message", content="What is my name?", conversation_id=conversation,
                   client_message_id="second")
        events, second = await until_end(ws)
        assert events[0]["conversation_id"] == conversation and events[-1]["status"] == "complete"
    rows = stored(server, conversation)
    assert [(r["role"], r["content"]) for r in rows] == [
        ("user", "My name is Ada."), ("assistant", first),
        ("user", "What is my name?"), ("assistant", second)]


async def test_cancel_stops_the_reply_and_stores_it_interrupted(server: Any) -> None:
    async with connect(server.ws_url + "/ws/chat") as ws:
        await send(ws, type="message", content="Tell a very long story about the sea.")
        start = await receive(ws)
        assert start["type"] == "start"
        assert (await receive(ws))["type"] == "delta"
        await send(ws, type="cancel")
        events, text = await until_end(ws)
        assert events[-1]["status"] == "interrupted"
        # The socket goes on: a ping still answers, and a new turn runs.
        await send(ws, type="ping")
        assert await receive(ws) == {"type": "pong"}
    rows = stored(server, start["conversation_id"])
    assert rows[1]["status"] == "interrupted"
    assert rows[1]["content"].endswith(text) and rows[1]["content"]


async def test_bad_input_gets_error_events_and_the_socket_stays_open(server: Any) -> None:
    async with connect(server.ws_url + "/ws/chat") as ws:
        await ws.send("{nope")
        assert (await receive(ws))["code"] == 400
        await send(ws, type="dance")
        error = await receive(ws)
        assert error["type"] == "error" and "dance" in error["message"]
        await send(ws, type="message", content="")
        assert (await receive(ws))["code"] == 400
        await send(ws, type="message", content="x", conversation_id=5)
        assert (await receive(ws))["code"] == 400
        await send(ws, type="message", content="hi", conversation_id="missing")
        assert (await receive(ws))["code"] == 404
        await send(ws, type="message", content="lorem " * 9000)
        assert (await receive(ws))["code"] == 413
        await send(ws, type="message", content="Tell a long story.")
        assert (await receive(ws))["type"] == "start"
        await send(ws, type="message", content="and another")
        while (event := await receive(ws))["type"] == "delta":
            pass
        assert event["type"] == "error" and event["code"] == 409
        await send(ws, type="cancel")
        await until_end(ws)
        await send(ws, type="ping")
        assert await receive(ws) == {"type": "pong"}
    assert len(httpx.get(server.url + "/api/conversations").json()) == 1


async def test_commands_can_push_events_to_the_owners_sockets(
    make_config: Any, live_server: Any
) -> None:
    async def picture(runtime: Any, principal: Principal, argument: str,
                      conversation_id: str | None) -> str:
        sent = push_event(runtime, principal.owner, {"type": "image", "prompt": argument})
        return f"queued for {sent} socket(s)"

    brief_server = live_server(create_app(make_config(budget={"reply_tokens": 24}),
                                          candidates=[LOCAL, command_plugin("picture", picture)]))
    url = brief_server.ws_url + "/ws/chat"
    async with connect(url) as other, connect(url) as ws:
        await send(other, type="ping")
        assert await receive(other) == {"type": "pong"}
        await send(ws, type="message", content="/picture a cat")
        events, text = await until_end(ws)
        assert text == "queued for 2 socket(s)"
        assert {"type": "image", "prompt": "a cat"} in events
        assert await receive(other) == {"type": "image", "prompt": "a cat"}


async def test_without_an_authenticator_the_socket_closes_with_1013(
    make_config: Any, live_server: Any
) -> None:
    server = live_server(create_app(make_config(core={"auth": True}), candidates=[LOCAL]))
    async with connect(server.ws_url + "/ws/chat") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1013,
                                                                   "authentication unavailable")


async def test_a_revoked_credential_closes_the_socket_mid_reply(
    make_config: Any, live_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ws_module, "VALIDITY_POLL", 0.1)
    authenticator = HeaderAuthenticator()
    app = create_app(make_config(core={"auth": True}),
                     candidates=[LOCAL, plugin_object("header-auth", AuthPlugin(authenticator))])
    server = live_server(app)
    async with connect(server.ws_url + "/ws/chat?owner=mallory") as ws:
        await send(ws, type="ping")
        assert await receive(ws) == {"type": "pong"}
    authenticator.revoked.add("mallory")
    async with connect(server.ws_url + "/ws/chat?owner=mallory") as ws:
        with pytest.raises(ConnectionClosed) as refused:
            await ws.recv()
    assert refused.value.rcvd is not None and refused.value.rcvd.code == 4401
    authenticator.revoked.clear()
    async with connect(server.ws_url + "/ws/chat?owner=carol") as ws:
        await send(ws, type="message", content="Tell a very long story about the sea.")
        start = await receive(ws)
        assert (await receive(ws))["type"] == "delta"
        authenticator.revoked.add("carol")
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    authenticator.revoked.clear()
    rows = stored(server, start["conversation_id"], headers={"Authorization": "Bearer carol"})
    assert rows[1]["status"] == "interrupted"


async def test_a_socket_closed_mid_reply_leaves_an_interrupted_message(server: Any) -> None:
    async with connect(server.ws_url + "/ws/chat") as ws:
        await send(ws, type="message", content="Tell a very long story about the sea.")
        start = await receive(ws)
        assert (await receive(ws))["type"] == "delta"
    deadline = time.monotonic() + 20
    while (rows := stored(server, start["conversation_id"]))[1]["status"] == "streaming":
        assert time.monotonic() < deadline, "the reply was never stored"
        await asyncio.sleep(0.05)
    assert rows[1]["status"] == "interrupted" and rows[1]["content"]
