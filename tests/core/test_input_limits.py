"""Nested, huge and NUL inputs get a 4xx naming the field before anything is parsed or
stored, on SQLite and PostgreSQL, with no traceback logged."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from core import migrations
from core.app import create_app
from tests.core.test_security import OWN, unsafe_routes

NESTED = b"[" * 100_000 + b"]" * 100_000
NESTED_OBJECT = b'{"a":' * 100_000 + b"1" + b"}" * 100_000


@pytest.fixture
def app(make_config: Any, database_url: str) -> Litestar:
    if not database_url.startswith("sqlite"):
        migrations.upgrade_all(database_url)
    return create_app(make_config(core={"database_url": database_url}))


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(app, base_url=OWN) as test_client:
        yield test_client


@pytest.fixture(autouse=True)
def no_traceback(caplog: pytest.LogCaptureFixture) -> Any:
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]


def assert_400(response: Any, words: str, param: str | None = None) -> None:
    assert response.status_code == 400, (response.request.url, response.text)
    error = response.json()["error"]
    assert words in error["message"]
    assert error["param"] == param


async def test_deep_nesting_is_400_on_every_unsafe_route(app: Litestar,
                                                         client: AsyncTestClient[Any]) -> None:
    for method, path in unsafe_routes(app):
        for body in (NESTED, NESTED_OBJECT):
            response = await client.request(method, path, content=body,
                                             headers={"content-type": "application/json"})
            assert_400(response, "JSON nested deeper than 64 levels")


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/api/conversations", {"title": "a\x00b"}, "title"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi\x00"}]},
     "messages[0].content"),
    ("/api/documents", {"source": "x\x00.txt", "text": "hello"}, "source"),
    ("/api/tokens", {"name": "n\x00"}, "name"),
])
async def test_nul_characters_are_400_naming_the_field(client: AsyncTestClient[Any], path: str,
                                                       body: dict[str, Any], param: str) -> None:
    assert_400(await client.post(path, json=body), "contains a NUL character", param)


async def test_nul_in_a_path_id_or_upload_name_is_400(client: AsyncTestClient[Any]) -> None:
    assert_400(await client.get("/api/conversations/a%00b/messages"), "the URL contains a NUL")
    assert_400(await client.delete("/api/documents/a%00b"), "the URL contains a NUL")
    upload = await client.post("/api/documents", data={"source": "a\x00b", "text": "hello"},
                               files={"file": ("x.txt", b"hello")})
    assert_400(upload, "source: contains a NUL character", "source")


async def test_huge_numbers_are_400(client: AsyncTestClient[Any]) -> None:
    assert_400(await client.post("/api/tokens", json={"expires_in": "9" * 5000}),
               "at most ten years", "expires_in")
    assert_400(await client.post("/api/tokens", json={"expires_in": "9" * 5000 + "d"}),
               "at most ten years", "expires_in")
    search = await client.post("/api/search", content=b'{"query": "q", "k": ' + b"9" * 5000 + b"}",
                               headers={"content-type": "application/json"})
    assert_400(search, "k: integer has more than 18 digits", "k")


async def test_ordinary_bodies_still_work(client: AsyncTestClient[Any]) -> None:
    created = await client.post("/api/conversations", json={"title": "[[{{ \\u0000 }}]]"})
    assert created.status_code == 201, created.text
    assert created.json()["title"] == "[[{{ \\u0000 }}]]"


def test_a_deeply_nested_socket_message_is_an_error_event(app: Litestar) -> None:
    from litestar.testing import TestClient

    with TestClient(app, base_url=OWN) as sync_client, \
            sync_client.websocket_connect("/ws/chat") as socket:
        socket.send_text("[" * 5000 + "]" * 5000)  # within the message size limit
        event = socket.receive_json()
        socket.send_text('{"type": "ping"}')
        pong = socket.receive_json()
    assert event == {"type": "error", "message": "JSON nested deeper than 64 levels", "code": 400}
    assert pong == {"type": "pong"}


@pytest.mark.parametrize(("text", "problem"), [
    (b"[" * 64 + b"]" * 64, None),
    (b"[" * 65 + b"]" * 65, ("JSON nested deeper than 64 levels", None)),
    (b'{"a":' * 64 + b"1" + b"}" * 64, None),
    (b'{"a":' * 65 + b"1" + b"}" * 65, ("JSON nested deeper than 64 levels", None)),
    (b'{"text": "' + b"[" * 1000 + b'"}', None),  # brackets in a string do not nest
    (b'{"k": 999999999999999999}', None),
    (b'{"k": [1, -9999999999999999999]}', ("k[1]: integer has more than 18 digits", "k[1]")),
    (b'{"a\\u0000": 1}', ("body: a key contains a NUL character", None)),
    (b'{"t": "\\\\u0000 is how to write NUL"}', None),
])
def test_json_problem_limits(text: bytes, problem: Any) -> None:
    from core.security import json_problem

    assert json_problem(text) == problem
