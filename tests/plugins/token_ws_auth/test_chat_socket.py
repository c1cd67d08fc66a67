"""token-ws-auth on the real chat socket ``/ws/chat`` (with a paced stand-in model)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select
from websockets.exceptions import ConnectionClosed

from core.db import Database
from core.models import Message
from tests.plugins.token_ws_auth.ws_auth_harness import GOOD_ORIGIN, AuthServer, start_server


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def events_until(ws: Any, kind: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while not seen or seen[-1]["type"] != kind:
            seen.append(json.loads(await ws.recv()))
    return seen


async def test_chat_with_a_ticket(auth_server: AuthServer) -> None:
    token, _ = await auth_server.token("uma")
    async with auth_server.ws("/ws/chat", ticket=await auth_server.ticket(token)) as ws:
        assert ws.subprotocol == "mami.v1"
        await ws.send(json.dumps({"type": "message", "content": "hello"}))
        events = await events_until(ws, "end")
    assert events[0]["type"] == "start" and events[-1]["status"] == "complete"
    assert "".join(e["text"] for e in events if e["type"] == "delta") == "w1 w2 w3 w4 w5 "


async def test_chat_socket_refuses_without_ticket(auth_server: AuthServer) -> None:
    async with auth_server.ws("/ws/chat") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4408


async def test_revoked_while_streaming_closes_4401_and_stores_interrupted(
    auth_server: AuthServer, http: httpx.AsyncClient
) -> None:
    token, token_id = await auth_server.token("victor-stream")
    async with auth_server.ws("/ws/chat", ticket=await auth_server.ticket(token)) as ws:
        await ws.send(json.dumps({"type": "message", "content": "talk forever"}))
        first = await events_until(ws, "delta")
        message_id = first[0]["message_id"]
        revoked = await http.delete(f"/api/tokens/{token_id}", headers=bearer(token))
        assert revoked.status_code == 204
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    db = Database(auth_server.database_url)
    try:
        async with db.session() as session:
            stored = (await session.exec(select(Message).where(Message.id == message_id))).one()
    finally:
        await db.close()
    assert stored.status == "interrupted"


async def test_chat_oversized_message_is_1008(auth_server: AuthServer) -> None:
    token, _ = await auth_server.token("wendy")
    async with auth_server.ws("/ws/chat", ticket=await auth_server.ticket(token)) as ws:
        await ws.send(json.dumps({"type": "message", "content": "x" * 2000}))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_chat_flood_is_1008(auth_server: AuthServer) -> None:
    token, _ = await auth_server.token("xena")
    async with auth_server.ws("/ws/chat", ticket=await auth_server.ticket(token)) as ws:
        for _ in range(25):
            await ws.send(json.dumps({"type": "ping"}))
        pongs = 0
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                while True:
                    assert json.loads(await ws.recv()) == {"type": "pong"}
                    pongs += 1
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert pongs <= 20  # the close may overtake queued replies, never more than the limit


async def test_another_owners_conversation_is_not_reachable_by_socket(
    auth_server: AuthServer,
) -> None:
    alice, _ = await auth_server.token("alice-ws")
    bob, _ = await auth_server.token("bob-ws")
    async with auth_server.ws("/ws/chat", ticket=await auth_server.ticket(alice)) as ws:
        await ws.send(json.dumps({"type": "message", "content": "alice's secret plan"}))
        conversation_id = (await events_until(ws, "end"))[0]["conversation_id"]
    async with auth_server.ws("/ws/chat", ticket=await auth_server.ticket(bob)) as ws:
        await ws.send(json.dumps({"type": "message", "content": "hi",
                                  "conversation_id": conversation_id}))
        error = (await events_until(ws, "error"))[-1]
    assert error["code"] == 404 and "secret" not in json.dumps(error)


async def test_with_auth_off_a_foreign_origin_is_still_4403(tmp_path: Path) -> None:
    """Auth off serves everyone as the local owner, but a web page from another origin
    must not drive the socket (cross-site WebSocket hijacking)."""
    server, serving = start_server(tmp_path, f"sqlite:///{tmp_path / 'open.db'}", auth=False)
    try:
        for origin in ("https://evil.example", "https://good.example.evil.com"):
            async with server.ws("/ws/chat", origin=origin) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
        for allowed in (GOOD_ORIGIN, None):  # a listed page, a non-browser client
            async with server.ws("/ws/chat", origin=allowed) as ws:
                await ws.send(json.dumps({"type": "ping"}))
                assert json.loads(await ws.recv()) == {"type": "pong"}
    finally:
        serving.stop()


@pytest.mark.parametrize("ending", ["revoked", "expired"])
async def test_a_token_ending_while_streaming_over_http_ends_the_stream(
    auth_server: AuthServer, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch,
    ending: str,
) -> None:
    """A revocation from elsewhere (here: straight in the database, as `mami token
    revoke` does) or the token's expiry ends a running SSE reply, which is stored as
    interrupted. The expiry comes from the server's clock moving past it, at the moment
    the test chooses."""
    from datetime import timedelta

    from plugins.token_ws_auth import tokens

    token, token_id = await auth_server.token(f"rita-{ending}", expires_in=3600)
    body = {"messages": [{"role": "user", "content": "talk forever"}], "stream": True}
    events: list[str] = []
    headers = {**bearer(token), "x-mami-conversation": "new"}
    async with http.stream("POST", "/v1/chat/completions", headers=headers,
                           json=body, timeout=30) as reply:
        assert reply.status_code == 200
        conversation_id = reply.headers["x-mami-conversation"]
        lines = reply.aiter_lines()
        async with asyncio.timeout(30):
            while not any('"w2 "' in e for e in events):
                events.append(await anext(lines))
            if ending == "revoked":
                db = Database(auth_server.database_url)
                try:
                    assert await tokens.revoke_token(db, token_id) is not None
                finally:
                    await db.close()
            else:
                later = tokens.now() + timedelta(hours=2)
                monkeypatch.setattr(tokens, "now", lambda: later)
            async for line in lines:  # an endless reply: this ends only if mami ends it
                events.append(line)
    assert [e for e in events if e][-1] == "data: [DONE]"
    error = json.loads(next(e for e in events if "credential_revoked" in e)[len("data: "):])
    assert error["error"]["message"] == "the token was revoked or expired"
    db = Database(auth_server.database_url)
    try:
        async with db.session() as session:
            stored = (await session.exec(select(Message).where(
                Message.conversation_id == conversation_id, Message.role == "assistant"))).one()
    finally:
        await db.close()
    assert stored.status == "interrupted"
    assert stored.content.startswith("w1 w2 ")
