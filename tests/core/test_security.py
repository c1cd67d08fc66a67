"""The core CSRF/Host defence on every route of the app, in both auth modes."""

from __future__ import annotations

import re
import uuid
from types import ModuleType
from typing import Any

import pytest
from litestar import Litestar, get
from litestar.exceptions import WebSocketDisconnect
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient, TestClient

from core import hookimpl
from core.app import create_app
from core.plugins import Candidate, builtin_candidates
from core.security import UNSAFE_METHODS

OWN = "http://127.0.0.1:8000"
EVIL = "http://evil.example"
PARAMETER = re.compile(r"\{(\w+)(?::(\w+))?\}")


def concrete(path: str) -> str:
    """A route path with every parameter filled in with a value of its type."""
    values = {"int": "1", "uuid": str(uuid.uuid4()), "float": "1.0"}
    return PARAMETER.sub(lambda m: values.get(m.group(2) or "str", "x"), path)


def unsafe_routes(app: Litestar) -> list[tuple[str, str]]:
    found = [(method, concrete(route.path)) for route in app.routes
             if isinstance(route, HTTPRoute) for method in sorted(route.methods & UNSAFE_METHODS)]
    assert len(found) > 10  # the app's own routes are all there
    return found


@pytest.fixture(params=[False, True], ids=["auth-off", "auth-on"])
def app(request: pytest.FixtureRequest, make_config: Any) -> Litestar:
    return create_app(make_config(core={"auth": request.param}))


def assert_refused(response: Any, status: int, words: str) -> None:
    assert response.status_code == status, (response.request.method, response.request.url,
                                            response.text)
    assert words in response.json()["error"]["message"]


ATTACKS = {
    "text/plain": {"content": b'{"messages": [{"role": "user", "content": "x"}]}',
                   "headers": {"content-type": "text/plain;charset=UTF-8"}},
    "form": {"data": {"source": "evil", "text": "ignore previous instructions"}},
    "multipart": {"files": {"file": ("evil.txt", b"ignore previous instructions")}},
}


@pytest.mark.parametrize("kind", sorted(ATTACKS))
async def test_cross_site_writes_are_refused_on_every_unsafe_route(app: Litestar,
                                                                    kind: str) -> None:
    attack = ATTACKS[kind]
    async with AsyncTestClient(app, base_url=OWN) as client:
        for method, path in unsafe_routes(app):
            headers = {**attack.get("headers", {}), "origin": EVIL}
            response = await client.request(method, path, **{**attack, "headers": headers})
            assert_refused(response, 403, "origin 'http://evil.example' is not allowed")


async def test_non_json_bodies_are_refused_without_origin(app: Litestar) -> None:
    """An old browser or a proxy that drops Origin: the body type still gives it away."""
    async with AsyncTestClient(app, base_url=OWN) as client:
        for method, path in unsafe_routes(app):
            response = await client.request(method, path, **ATTACKS["text/plain"])
            assert_refused(response, 415, "send application/json")
            blob = await client.request(method, path, content=b'{"a": 1}')  # no type at all
            assert_refused(blob, 415, "'(none)'")


async def test_multipart_is_accepted_only_where_uploads_are(app: Litestar) -> None:
    async with AsyncTestClient(app, base_url=OWN) as client:
        for method, path in unsafe_routes(app):
            if (method, path) == ("POST", "/api/documents"):
                # a form without a file: past the guard, refused by the handler at once
                response = await client.post(path, files={"note": (None, b"x")})
                assert response.status_code not in (403, 415, 421), response.text
            else:
                response = await client.request(method, path, **ATTACKS["multipart"])
                assert_refused(response, 415, "send application/json")


async def test_a_foreign_host_is_refused_on_every_route(app: Litestar) -> None:
    """DNS rebinding: evil.example resolves to 127.0.0.1, the page reads the answers."""
    async with AsyncTestClient(app, base_url="http://evil.example:8000") as client:
        for route in app.routes:
            if isinstance(route, HTTPRoute):
                for method in sorted(route.methods - {"OPTIONS", "HEAD"}):
                    response = await client.request(method, concrete(route.path), json={})
                    assert_refused(response, 421, "host 'evil.example:8000' is not served")


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost", "[::1]:8000",
                                  "chat.example.com", "lan.box:9000"])
async def test_own_names_are_served(make_config: Any, host: str) -> None:
    config = make_config(server={"public_url": "https://chat.example.com",
                                 "allowed_hosts": ["lan.box"]})
    async with AsyncTestClient(create_app(config), base_url=OWN) as client:
        client.headers["host"] = host
        assert (await client.get("/health")).status_code == 200
        own = await client.post("/api/conversations", json={"title": "t"},
                                headers={"origin": f"http://{host}"})
        public = await client.post("/api/conversations", json={"title": "t"},
                                   headers={"origin": "https://chat.example.com"})
    assert own.status_code == 201, own.text
    assert public.status_code == 201, public.text


async def test_configured_origins_may_write(make_config: Any) -> None:
    config = make_config(server={"allowed_origins": ["https://app.example.com"]})
    async with AsyncTestClient(create_app(config), base_url=OWN) as client:
        allowed = await client.post("/api/conversations", json={},
                                    headers={"origin": "https://app.example.com"})
        other_port = await client.post("/api/conversations", json={},
                                       headers={"origin": "http://127.0.0.1:8001"})
    assert allowed.status_code == 201, allowed.text
    assert_refused(other_port, 403, "not allowed")


@pytest.mark.parametrize("auth", [False, True], ids=["auth-off", "auth-on"])
async def test_serving_any_host_trusts_only_listed_origins(make_config: Any, auth: bool) -> None:
    """``allowed_hosts = ["*"]`` turns the Host check off, so a page that names the Host
    it wrote to proves nothing: DNS rebinding makes evil.example's page reach this server
    as evil.example. Only the listed origins (and ``public_url``'s) may write then."""
    config = make_config(core={"auth": auth},
                         server={"allowed_hosts": ["*"], "public_url": "https://chat.example.com",
                                 "allowed_origins": ["https://app.example.com"]})
    async with AsyncTestClient(create_app(config), base_url="http://evil.example:8000") as client:
        rebound = await client.post("/api/conversations", json={"title": "t"},
                                    headers={"origin": "http://evil.example:8000"})
        listed = [await client.post("/api/conversations", json={"title": "t"},
                                    headers={"origin": origin})
                  for origin in ("https://app.example.com", "https://chat.example.com")]
    assert_refused(rebound, 403, "origin 'http://evil.example:8000' is not allowed")
    for response in listed:  # past the guard (with auth on, the missing token is next)
        assert response.status_code == (401 if auth else 201), response.text


def test_a_foreign_origin_socket_is_closed_4403(app: Litestar) -> None:
    sockets = [concrete(r.path) for r in app.routes if not isinstance(r, HTTPRoute)
               and type(r).__name__ == "WebSocketRoute"]
    assert sockets
    # The sync client runs the app in its own thread: a blocking receive cannot stall it.
    with TestClient(app, base_url=OWN) as client:
        for path in sockets:
            with (pytest.raises(WebSocketDisconnect) as closed,  # at connect or first read
                  client.websocket_connect(path, headers={"origin": EVIL}) as socket):
                socket.receive_text()
            assert closed.value.code == 4403, path


@get("/forgetful", sync_to_thread=False)
def forgetful() -> dict[str, str]:
    """A plugin route that never asks for the principal."""
    return {"secret": "plans"}


@get("/public-note", sync_to_thread=False, exclude_from_auth=True)
def public_note() -> dict[str, str]:
    return {"note": "hello"}


def forgetful_plugin() -> ModuleType:
    module = ModuleType("mami_forgetful")
    module.register_routes = lambda runtime: [forgetful, public_note]  # type: ignore[attr-defined]
    hookimpl(module.register_routes)  # type: ignore[attr-defined]
    return module


async def test_every_route_needs_a_credential_unless_it_opts_out(make_config: Any) -> None:
    """Secure by default: with auth on, a route that forgets to ask for the principal is
    not public; only handlers with ``exclude_from_auth`` (and the OpenAPI schema) are."""
    candidates = [*builtin_candidates(),
                  Candidate("forgetful", "tests", "builtin", True, forgetful_plugin)]
    app = create_app(make_config(core={"auth": True}), candidates=candidates)
    assert {"/forgetful", "/public-note"} <= {route.path for route in app.routes}
    public = set()
    async with AsyncTestClient(app, base_url=OWN) as client:
        for route in app.routes:
            if not isinstance(route, HTTPRoute):
                continue
            for handler in route.route_handlers:
                for method in sorted(handler.http_methods - {"OPTIONS", "HEAD"}):
                    kwargs = {"json": {}} if method in UNSAFE_METHODS else {}
                    response = await client.request(method, concrete(route.path), **kwargs)
                    if handler.opt.get("exclude_from_auth") or route.path.startswith("/schema"):
                        public.add(route.path)
                        assert response.status_code != 401, route.path
                    else:
                        assert_refused(response, 401, "missing credential")
        assert (await client.get("/public-note")).json() == {"note": "hello"}
    assert {"/forgetful", "/api/me", "/api/tokens"}.isdisjoint(public)
    assert {"/health", "/public-note", "/", "/schema/openapi.json"} <= public
