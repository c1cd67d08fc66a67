"""Auth state shared through the database: malformed unauthenticated requests count as
failed attempts, and two real ``mami serve`` processes on one PostgreSQL database see
each other's spent tickets and failures."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from core.db import Database
from plugins.token_ws_auth import tokens
from plugins.token_ws_auth.state import SharedAuthState
from tests.conftest import free_port
from tests.e2e.server import MamiServer
from tests.plugins.token_ws_auth.ws_auth_harness import (
    CAPTURE,
    GOOD_ORIGIN,
    SIGNING_KEY,
    start_server,
)

NESTED = b"[" * 100_000 + b"]" * 100_000
JSON = {"content-type": "application/json"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def status_and_code(response: httpx.Response) -> tuple[int, str | None]:
    return response.status_code, response.json()["error"]["code"]


async def test_malformed_requests_without_a_token_count_as_failed_attempts(
        tmp_path: Path) -> None:
    """Nested JSON, an oversized body and a NUL in the URL, refused before anyone is
    authenticated, are failed attempts when they carry no valid token: past the limit
    they are 429s. A valid token still passes, and its own malformed request is a plain
    400 that counts nothing. Invalid JSON without a token is never parsed (401). No
    traceback is logged."""
    server, serving = start_server(tmp_path, f"sqlite:///{tmp_path}/malformed.db",
                                   max_failed_attempts=3)
    logged = len(CAPTURE.lines)
    try:
        token, _ = await server.token("mallory-neighbour")
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            post = client.post
            nested = await post("/api/conversations", content=NESTED, headers=JSON)
            assert status_and_code(nested) == (400, "invalid_request_body")
            oversized = await post("/api/conversations", content=b" " * (10 * 1024 * 1024 + 1),
                                   headers=JSON)
            assert status_and_code(oversized) == (413, "request_too_large")
            nul = await client.delete("/api/conversations/a%00b")
            assert status_and_code(nul) == (400, "invalid_characters")
            for attempt in (
                post("/api/conversations", content=NESTED, headers=JSON),
                post("/v1/chat/completions", content=NESTED,
                     headers={**JSON, **bearer("wrong")}),
                client.get("/api/tokens", headers=bearer("wrong")),
            ):
                assert status_and_code(await attempt) == (429, "rate_limit_exceeded")
            unparsed = await post("/api/conversations", content=b'{"title": ', headers=JSON)
            assert unparsed.status_code == 401, unparsed.text
            mine = await post("/api/conversations", content=NESTED,
                              headers={**JSON, **bearer(token)})
            assert status_and_code(mine) == (400, "invalid_request_body")
            assert (await client.get("/api/tokens", headers=bearer(token))).status_code == 200
    finally:
        serving.stop()
    tail = "\n".join(CAPTURE.lines[logged:])
    assert "Traceback" not in tail and "unhandled error" not in tail


async def test_a_ticket_is_spent_once_and_failures_add_up_across_instances(
        tmp_path: Path, database_url: str) -> None:
    """The state the processes share, through two separate databases handles: the
    second spend of a ticket loses, and failures from both count toward one limit."""
    from core import migrations

    await asyncio.to_thread(migrations.upgrade_all, database_url)
    one, two = Database(database_url), Database(database_url)
    try:
        first, second = SharedAuthState(one, 3, 60), SharedAuthState(two, 3, 60)
        spent = await asyncio.gather(*(state.spend("ticket-1", 4e9)
                                       for state in (first, second, first, second)))
        assert sorted(spent) == [False, False, False, True]
        assert await second.spend("ticket-2", 4e9) and not await first.spend("ticket-2", 4e9)
        assert not await first.spend("x" * 65, 4e9)  # not an id mami issues
        seen = [await state.fail("10.0.0.7") for state in (first, second, first, second)]
        assert seen == [False, False, False, True]
        assert not await second.fail("10.0.0.8") and not await first.fail(None)
    finally:
        await one.close()
        await two.close()


SERVE_CONFIG = """
[core]
auth = true
database_url = "{database_url}"
data_dir = "{data_dir}"
image_worker = false

[plugins.token-ws-auth]
allowed_origins = ["{origin}"]
max_failed_attempts = 4
bootstrap_admin = false

[plugins.chroma-rag]
enabled = false

[plugins.local-llm]
enabled = false

[plugins.memory]
enabled = false

[plugins.forge-image]
enabled = false
"""


async def socket_answer(url: str, ticket: str) -> Any:
    """Open ``/ws/chat`` with ``ticket``: the pong, or the close code."""
    offered = ["mami.v1", f"mami.ticket.{ticket}"]
    async with connect(url + "/ws/chat", origin=GOOD_ORIGIN, subprotocols=offered,  # type: ignore[list-item]
                       proxy=None, open_timeout=10) as ws:
        try:
            await ws.send(json.dumps({"type": "ping"}))
            return json.loads(await asyncio.wait_for(ws.recv(), 10))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            return closed.rcvd.code


async def test_two_serve_processes_share_spent_tickets_and_the_failure_limit(
        tmp_path: Path, postgres_url: str) -> None:
    servers = []
    for name in ("a", "b"):
        workdir = tmp_path / name
        workdir.mkdir()
        config = SERVE_CONFIG.format(database_url=postgres_url, data_dir=workdir / "data",
                                     origin=GOOD_ORIGIN)
        servers.append(MamiServer(workdir, config, free_port(),
                                  env={"MAMI_SIGNING_KEY": SIGNING_KEY}))
    a, b = servers
    upgrade = subprocess.run(
        [sys.executable, "-m", "core.cli", "--config", str(a.config_path), "db", "upgrade"],
        cwd=a.workdir, env=a.env, capture_output=True, text=True, timeout=120)
    assert upgrade.returncode == 0, upgrade.stderr
    assert "token_ws_auth" in upgrade.stdout
    db = Database(postgres_url)
    try:
        token, _ = await tokens.create_token(db, "pat", "shared")
    finally:
        await db.close()
    try:
        await asyncio.gather(*(asyncio.to_thread(server.start) for server in servers))
        async with httpx.AsyncClient(timeout=30) as client:

            async def ticket(server: MamiServer) -> str:
                issued = await client.post(f"{server.url}/api/ws-ticket", headers=bearer(token))
                assert issued.status_code == 201, issued.text
                return str(issued.json()["ticket"])

            ws = {server: server.url.replace("http://", "ws://") for server in servers}
            from_a = await ticket(a)
            assert await socket_answer(ws[a], from_a) == {"type": "pong"}
            assert await socket_answer(ws[b], from_a) == 4401  # replayed on the other: failure 1
            from_b = await ticket(b)
            assert await socket_answer(ws[a], from_b) == {"type": "pong"}  # issued by b, used on a
            assert await socket_answer(ws[b], from_b) == 4401  # failure 2

            wrong = bearer("mami_0123456789abcdef_" + "x" * 43)
            assert (await client.get(f"{a.url}/api/tokens", headers=wrong)).status_code == 401  # 3
            nested = await client.post(f"{b.url}/api/conversations", content=NESTED,
                                       headers=JSON)
            assert nested.status_code == 400  # failure 4: the limit, reached on both
            for server in servers:
                guess = await client.get(f"{server.url}/api/tokens", headers=wrong)
                assert guess.status_code == 429, (server.url, guess.text)
                broken = await client.post(f"{server.url}/api/conversations", content=NESTED,
                                           headers=JSON)
                assert broken.status_code == 429, (server.url, broken.text)
                mine = await client.get(f"{server.url}/api/me", headers=bearer(token))
                assert mine.status_code == 200 and mine.json()["owner"] == "pat"
            assert await socket_answer(ws[b], await ticket(a)) == {"type": "pong"}
    finally:
        for server in servers:
            server.stop()
    for server in servers:
        assert "Traceback" not in server.output, server.output

