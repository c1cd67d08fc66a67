"""The server's own origin, however the browser reached it, and ``[server]
allowed_origins`` are allowed by the authenticator as by core's BrowserGuard: a page
opened at ``http://localhost:PORT`` (mami printed ``127.0.0.1``) may chat, with auth
on and off. Real httpx and websockets clients against uvicorn on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.plugins.token_ws_auth.ws_auth_harness import AuthServer, start_server

APP_ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    tmp = tmp_path_factory.mktemp("own-origin")
    server, serving = start_server(tmp, f"sqlite:///{tmp / 'mami.db'}",
                                   server={"allowed_origins": [APP_ORIGIN]})
    yield server
    serving.stop()


def port_of(server: AuthServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


async def test_a_page_at_localhost_may_use_the_api(served: AuthServer) -> None:
    token, _ = await served.token("alice")
    own = f"http://localhost:{port_of(served)}"
    async with httpx.AsyncClient(base_url=own, timeout=10) as client:
        headers = {"Authorization": f"Bearer {token}", "Origin": own}
        listed = await client.get("/api/tokens", headers=headers)
        ticket = await client.post("/api/ws-ticket", headers=headers)
        other_port = await client.get("/api/tokens", headers={
            **headers, "Origin": f"http://localhost:{port_of(served) + 1}"})
    assert listed.status_code == 200, listed.text
    assert ticket.status_code == 201, ticket.text
    assert other_port.status_code == 403, other_port.text
    assert "is not allowed: add it to [server] allowed_origins" in \
        other_port.json()["error"]["message"]


async def test_a_page_at_localhost_may_open_the_socket(served: AuthServer) -> None:
    token, _ = await served.token("bob")
    ticket = await served.ticket(token)
    own = f"localhost:{port_of(served)}"
    async with connect(f"ws://{own}/test/ws/echo", origin=f"http://{own}",  # type: ignore[arg-type]
                       subprotocols=["mami.v1", f"mami.ticket.{ticket}"],  # type: ignore[list-item]
                       proxy=None, open_timeout=10) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"owner": "bob"}


async def test_another_port_of_localhost_is_still_refused_4403(served: AuthServer) -> None:
    token, _ = await served.token("carol")
    ticket = await served.ticket(token)
    own = f"localhost:{port_of(served)}"
    async with connect(f"ws://{own}/test/ws/echo",
                       origin=f"http://localhost:{port_of(served) + 1}",  # type: ignore[arg-type]
                       subprotocols=["mami.v1", f"mami.ticket.{ticket}"],  # type: ignore[list-item]
                       proxy=None, open_timeout=10) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


async def test_server_allowed_origins_are_allowed_with_auth_on(served: AuthServer) -> None:
    """README: ``[server] allowed_origins`` may POST and open sockets; with auth on the
    authenticator used to refuse them unless also in its own list."""
    token, _ = await served.token("dave")
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
        written = await client.post("/api/ws-ticket", headers={
            "Authorization": f"Bearer {token}", "Origin": APP_ORIGIN})
    assert written.status_code == 201, written.text
    ticket = written.json()["ticket"]
    served.secrets.add(ticket)
    async with served.ws("/test/ws/echo", ticket=ticket, origin=APP_ORIGIN) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"owner": "dave"}


def test_a_page_at_localhost_may_open_the_socket_with_auth_off(tmp_path: Path) -> None:
    server, serving = start_server(tmp_path, f"sqlite:///{tmp_path / 'mami.db'}", auth=False)
    try:
        own = f"localhost:{port_of(server)}"

        async def hello() -> str:
            async with connect(f"ws://{own}/ws/chat", origin=f"http://{own}",  # type: ignore[arg-type]
                               proxy=None, open_timeout=10) as ws:
                await ws.send(json.dumps({"type": "ping"}))
                return str(json.loads(await asyncio.wait_for(ws.recv(), 10))["type"])

        assert asyncio.run(hello()) == "pong"
    finally:
        serving.stop()


async def test_with_any_host_served_a_rebound_name_is_not_the_own_origin(
        tmp_path: Path) -> None:
    """``allowed_hosts = ["*"]`` lets any Host through core's guard, so a page on a
    name rebound to this server (Origin equal to its Host) must not count as ours."""
    server, serving = start_server(tmp_path, f"sqlite:///{tmp_path / 'mami.db'}",
                                   server={"allowed_hosts": ["*"]})
    try:
        token, _ = await server.token("erin")
        rebound = f"http://evil.example:{port_of(server)}"
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            refused = await client.get("/api/tokens", headers={
                "Authorization": f"Bearer {token}", "Host": rebound[7:], "Origin": rebound})
        assert refused.status_code == 403, refused.text
    finally:
        serving.stop()
