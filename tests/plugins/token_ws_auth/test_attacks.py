"""The attack suite: real httpx and websockets clients against uvicorn on loopback."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from core.db import Database
from plugins.token_ws_auth import tickets, tokens
from plugins.token_ws_auth.models import ApiToken
from tests.plugins.token_ws_auth.ws_auth_harness import (
    ALL_SECRETS,
    CAPTURE,
    GOOD_ORIGIN,
    SIGNING_KEY,
    AuthServer,
    start_server,
)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade_ticket(header: dict[str, object], payload: dict[str, object], key: bytes,
                    digest: str = "sha256") -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64(signature)}"


def assert_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and set(error) >= {"type", "param", "code"}
    assert error["code"] is None or isinstance(error["code"], str)  # OpenAI's: never the status


async def refused_with(server: AuthServer, path: str = "/test/ws/echo", **kwargs: object) -> int:
    """Connect, expect a close without any data frame; returns the close code."""
    async with server.ws(path, **kwargs) as ws:  # type: ignore[arg-type]
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


# -- HTTP ---------------------------------------------------------------------------------


async def test_no_credential_is_401(http: httpx.AsyncClient) -> None:
    response = await http.get("/api/tokens")
    assert_error(response, 401)
    assert "Authorization" in response.json()["error"]["message"]


@pytest.mark.parametrize("header", ["Basic dXNlcjpwdw==", "Bearer", "Bearer mami_", "Bearer a b",
                                    "Token abc", "bearer"])
async def test_malformed_header_is_401(http: httpx.AsyncClient, header: str) -> None:
    assert_error(await http.get("/api/tokens", headers={"Authorization": header}), 401)


async def test_wrong_token_is_401(auth_server: AuthServer, http: httpx.AsyncClient) -> None:
    token, _token_id = await auth_server.token("alice")
    wrong_secret = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for candidate in (wrong_secret, "mami_0000000000000000_" + "x" * 43, "garbage", token + "x"):
        assert_error(await http.get("/api/tokens", headers=bearer(candidate)), 401)
    assert (await http.get("/api/tokens", headers=bearer(token))).status_code == 200


async def test_expired_token_is_401(auth_server: AuthServer, http: httpx.AsyncClient) -> None:
    token, token_id = await auth_server.token("alice", expires_in=3600)
    assert (await http.get("/api/tokens", headers=bearer(token))).status_code == 200
    db = Database(auth_server.database_url)
    async with db.session() as session:
        row = await session.get(ApiToken, token_id)
        assert row is not None
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        await session.commit()
    await db.close()
    assert_error(await http.get("/api/tokens", headers=bearer(token)), 401)


async def test_revoked_token_is_401(auth_server: AuthServer, http: httpx.AsyncClient) -> None:
    token, token_id = await auth_server.token("alice")
    response = await http.delete(f"/api/tokens/{token_id}", headers=bearer(token))
    assert response.status_code == 204
    assert_error(await http.get("/api/tokens", headers=bearer(token)), 401)
    assert_error(await http.post("/api/ws-ticket", headers=bearer(token)), 401)


async def test_http_origin_must_be_on_the_list(auth_server: AuthServer,
                                               http: httpx.AsyncClient) -> None:
    token, _ = await auth_server.token("alice")
    for origin in ("https://evil.example", "https://good.example.evil.com",
                   "https://good.example:444", "http://good.example"):
        headers = {**bearer(token), "Origin": origin}
        assert_error(await http.get("/api/tokens", headers=headers), 403)
    ok = await http.get("/api/tokens", headers={**bearer(token), "Origin": GOOD_ORIGIN})
    assert ok.status_code == 200


async def test_tokens_endpoints_are_owner_scoped(auth_server: AuthServer,
                                                 http: httpx.AsyncClient) -> None:
    alice, alice_id = await auth_server.token("alice-scope")
    bob, bob_id = await auth_server.token("bob-scope")
    created = await http.post("/api/tokens", headers=bearer(alice),
                              json={"name": "laptop", "expires_in": "30d"})
    assert created.status_code == 201
    new = created.json()
    ALL_SECRETS.add(new["token"])
    assert new["owner"] == "alice-scope" and new["expires_at"]
    listed = (await http.get("/api/tokens", headers=bearer(alice))).json()["data"]
    assert {t["id"] for t in listed} == {alice_id, new["id"]}
    assert all(set(t) >= {"id", "owner", "name", "expires_at"} for t in listed)
    assert all("token" not in t and "token_hash" not in t for t in listed)
    assert_error(await http.delete(f"/api/tokens/{bob_id}", headers=bearer(alice)), 404)
    assert (await http.get("/api/tokens", headers=bearer(bob))).status_code == 200
    bob_listed = (await http.get("/api/tokens", headers=bearer(bob))).json()["data"]
    assert [t["id"] for t in bob_listed] == [bob_id]
    new_works = await http.get("/api/tokens", headers=bearer(new["token"]))
    assert new_works.status_code == 200


async def test_bad_token_requests_write_nothing(auth_server: AuthServer,
                                                http: httpx.AsyncClient) -> None:
    token, _ = await auth_server.token("carol")
    for body in ({"expires_in": "soon"}, {"expires_in": "-5d"}, {"expires_in": "0"},
                 {"name": "x" * 201}):
        assert_error(await http.post("/api/tokens", headers=bearer(token), json=body), 400)
    invalid = {**bearer(token), "content-type": "application/json"}
    assert_error(await http.post("/api/tokens", headers=invalid, content=b"{nope"), 400)
    assert_error(await http.post("/api/tokens", headers=bearer(token), content=b"{nope"), 415)
    listed = (await http.get("/api/tokens", headers=bearer(token))).json()["data"]
    assert len(listed) == 1


async def test_an_expiring_token_cannot_mint_a_longer_one(auth_server: AuthServer,
                                                          http: httpx.AsyncClient) -> None:
    token, _ = await auth_server.token("dave", expires_in=3600)
    for body in ({}, {"expires_in": "2h"}):
        assert_error(await http.post("/api/tokens", headers=bearer(token), json=body), 403)
    short = await http.post("/api/tokens", headers=bearer(token), json={"expires_in": "10m"})
    assert short.status_code == 201
    ALL_SECRETS.add(short.json()["token"])


# -- WebSocket ----------------------------------------------------------------------------


async def test_ticket_in_subprotocol_is_accepted(auth_server: AuthServer) -> None:
    token, _ = await auth_server.token("erin")
    ticket = await auth_server.ticket(token)
    async with auth_server.ws("/test/ws/echo", ticket=ticket) as ws:
        assert ws.subprotocol == "mami.v1"
        assert json.loads(await ws.recv()) == {"owner": "erin"}
        await ws.send("hi")
        assert await ws.recv() == "echo:hi"


async def test_ticket_as_first_message_is_accepted(auth_server: AuthServer) -> None:
    token, _ = await auth_server.token("erin")
    for first in (await auth_server.ticket(token),
                  json.dumps({"type": "auth", "ticket": await auth_server.ticket(token)})):
        async with auth_server.ws("/test/ws/echo") as ws:
            await ws.send(first)
            assert json.loads(await ws.recv()) == {"owner": "erin"}


async def test_ticket_response_describes_itself(auth_server: AuthServer,
                                                http: httpx.AsyncClient) -> None:
    token, token_id = await auth_server.token("erin")
    body = (await http.post("/api/ws-ticket", headers=bearer(token))).json()
    ALL_SECRETS.add(body["ticket"])
    assert body["protocols"] == ["mami.v1", "mami.ticket." + body["ticket"]]
    assert 0 < body["expires_at"] - time.time() <= 60
    claims = tickets.verify(SIGNING_KEY.encode(), "HS256", body["ticket"])
    assert (claims.owner, claims.token_id) == ("erin", token_id)


async def test_forged_ticket_is_4401(auth_server: AuthServer) -> None:
    token, token_id = await auth_server.token("frank")
    payload = {"sub": "frank", "tid": token_id, "jti": "forged-1", "exp": time.time() + 30}
    forged = handmade_ticket({"alg": "HS256", "typ": "mami-ws"}, payload, b"k" * 40)
    assert await refused_with(auth_server, ticket=forged) == 4401
    real = await auth_server.ticket(token)
    header, body, sig = real.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["sub"] = "someone-else"
    tampered = f"{header}.{b64(json.dumps(claims).encode())}.{sig}"
    assert await refused_with(auth_server, ticket=tampered) == 4401
    for junk in ("x", "a.b.c", "....", "eyJ.eyJ.", "é.é.é"):
        async with auth_server.ws("/test/ws/echo") as ws:
            await ws.send(junk)
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


async def test_reused_ticket_is_4401(auth_server: AuthServer) -> None:
    token, _ = await auth_server.token("grace")
    ticket = await auth_server.ticket(token)
    async with auth_server.ws("/test/ws/echo", ticket=ticket) as ws:
        assert json.loads(await ws.recv()) == {"owner": "grace"}
    assert await refused_with(auth_server, ticket=ticket) == 4401


async def test_alg_none_and_other_algs_are_4401(auth_server: AuthServer) -> None:
    _token, token_id = await auth_server.token("heidi")
    payload = {"sub": "heidi", "tid": token_id, "jti": "none-1", "exp": time.time() + 30}
    body = f"{b64(json.dumps({'alg': 'none'}).encode())}.{b64(json.dumps(payload).encode())}"
    for ticket in (body + ".", body + "." + b64(b"sig")):
        assert await refused_with(auth_server, ticket=ticket) == 4401
    payload["jti"] = "hs512-1"
    other_alg = handmade_ticket({"alg": "HS512"}, payload, SIGNING_KEY.encode(), "sha512")
    assert await refused_with(auth_server, ticket=other_alg) == 4401
    payload["jti"] = "control-1"
    control = handmade_ticket({"alg": "HS256"}, payload, SIGNING_KEY.encode())
    async with auth_server.ws("/test/ws/echo", ticket=control) as ws:
        assert json.loads(await ws.recv()) == {"owner": "heidi"}


async def test_expired_ticket_is_4401(auth_server: AuthServer) -> None:
    _token, token_id = await auth_server.token("ivan")
    payload = {"sub": "ivan", "tid": token_id, "jti": "old-1", "exp": time.time() - 1}
    expired = handmade_ticket({"alg": "HS256"}, payload, SIGNING_KEY.encode())
    assert await refused_with(auth_server, ticket=expired) == 4401


async def test_ticket_of_a_revoked_token_is_4401(auth_server: AuthServer,
                                                 http: httpx.AsyncClient) -> None:
    token, token_id = await auth_server.token("judy")
    ticket = await auth_server.ticket(token)
    assert (await http.delete(f"/api/tokens/{token_id}", headers=bearer(token))).status_code == 204
    assert await refused_with(auth_server, ticket=ticket) == 4401


async def test_token_revoked_elsewhere_closes_a_fresh_socket(auth_server: AuthServer) -> None:
    """Revoked out of process (as `mami token revoke` does) after its ticket was issued:
    the socket is refused or closed with 4401 within seconds, never left running."""
    token, token_id = await auth_server.token("kate")
    ticket = await auth_server.ticket(token)
    db = Database(auth_server.database_url)
    try:
        assert await tokens.revoke_token(db, token_id) is not None
    finally:
        await db.close()
    async with auth_server.ws("/test/ws/stream", ticket=ticket) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


@pytest.mark.parametrize("origin", ["https://evil.example", "https://good.example.evil.com",
                                    "https://good.example:8443", "http://good.example",
                                    "https://GOOD.example", "null"])
async def test_wrong_origin_is_4403(auth_server: AuthServer, origin: str) -> None:
    token, _ = await auth_server.token("mallory")
    ticket = await auth_server.ticket(token)
    assert await refused_with(auth_server, ticket=ticket, origin=origin) == 4403
    async with auth_server.ws("/test/ws/echo", ticket=ticket) as ws:  # ticket still unspent
        assert json.loads(await ws.recv()) == {"owner": "mallory"}


async def test_missing_origin_is_4403_unless_allowed(auth_server: AuthServer) -> None:
    token, _ = await auth_server.token("niaj")
    assert await refused_with(auth_server, ticket=await auth_server.ticket(token),
                              origin=None) == 4403


async def test_no_ticket_in_time_is_4408(auth_server: AuthServer) -> None:
    assert await refused_with(auth_server) == 4408


async def test_oversized_message_is_1008(auth_server: AuthServer) -> None:
    token, _ = await auth_server.token("olivia")
    async with auth_server.ws("/test/ws/echo", ticket=await auth_server.ticket(token)) as ws:
        await ws.recv()
        await ws.send("x" * 1024)
        assert await ws.recv() == "echo:" + "x" * 1024
        await ws.send("x" * 1025)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_flood_is_1008(auth_server: AuthServer) -> None:
    token, _ = await auth_server.token("peggy")
    async with auth_server.ws("/test/ws/echo", ticket=await auth_server.ticket(token)) as ws:
        await ws.recv()
        echoed = 0
        with pytest.raises(ConnectionClosed) as closed:
            for i in range(100):
                await ws.send(f"m{i}")
            while True:
                await ws.recv()
                echoed += 1
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert echoed == 20  # messages_per_minute in this server


@pytest.mark.parametrize("ending", ["revoked", "expired"])
async def test_token_ending_while_streaming_closes_4401(
    auth_server: AuthServer, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch,
    ending: str,
) -> None:
    """Revoked, or expired by the server's clock moving past it (when the test says, so
    a loaded machine cannot let it expire before the socket opens)."""
    token, token_id = await auth_server.token(f"rupert-{ending}", expires_in=3600)
    async with auth_server.ws("/test/ws/stream", ticket=await auth_server.ticket(token)) as ws:
        assert await ws.recv() == "delta"
        if ending == "revoked":
            revoked = await http.delete(f"/api/tokens/{token_id}", headers=bearer(token))
            assert revoked.status_code == 204
        else:
            later = tokens.now() + timedelta(hours=2)
            monkeypatch.setattr(tokens, "now", lambda: later)
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


async def test_failed_attempts_slow_guessing_but_valid_credentials_pass(
        tmp_path: object) -> None:
    """Past the limit an address's wrong guesses are 429s (sockets 1008), while a valid
    token or ticket from the same address (a shared NAT or proxy) is still served."""
    from pathlib import Path

    server, serving = start_server(Path(str(tmp_path)), f"sqlite:///{tmp_path}/lock.db",
                                   max_failed_attempts=3)
    try:
        token, _ = await server.token("trent")
        tickets_ = [await server.ticket(token) for _ in range(2)]
        async with httpx.AsyncClient(base_url=server.url) as client:
            for _ in range(3):
                assert_error(await client.get("/api/tokens", headers=bearer("wrong")), 401)
            assert_error(await client.get("/api/tokens", headers=bearer("wrong")), 429)
            assert_error(await client.get("/api/tokens", headers={"authorization": "x"}), 429)
            assert (await client.get("/api/tokens", headers=bearer(token))).status_code == 200
            assert_error(await client.get("/api/tokens", headers=bearer("wrong")), 429)
        assert await refused_with(server, ticket="forged") == 1008
        async with server.ws("/test/ws/echo", ticket=tickets_[0]) as ws:
            await ws.send("hello")
            assert await asyncio.wait_for(ws.recv(), 10)
        assert await refused_with(server, ticket=tickets_[0]) == 1008  # spent
    finally:
        serving.stop()


async def test_a_refused_socket_never_reaches_the_handler(auth_server: AuthServer) -> None:
    """A plain connection without the subprotocol dance still gets a readable code, and
    an HTTP client cannot skip the upgrade."""
    with pytest.raises(InvalidStatus):
        async with auth_server.ws("/api/tokens"):
            pass
    assert await refused_with(auth_server, protocols=["mami.v1", "mami.ticket.nope"]) == 4401


# -- keep last: it reads the log of everything above --------------------------------------


async def test_log_of_the_run_holds_no_secret(auth_server: AuthServer,
                                              http: httpx.AsyncClient) -> None:
    token, _ = await auth_server.token("victor")
    await http.get(f"/api/tokens?token={token}&ticket=abc", headers=bearer(token))
    await asyncio.sleep(0.2)
    text = CAPTURE.text
    assert "/api/tokens?[redacted]" in text  # the access log was captured and redacted
    assert len(ALL_SECRETS) > 20
    leaked = [secret for secret in ALL_SECRETS if secret in text]
    assert leaked == []
    assert SIGNING_KEY not in text

