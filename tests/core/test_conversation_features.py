"""Conversation features of the native API and the chat pipeline, against the app under
uvicorn on loopback with real HTTP and WebSocket clients: rename and settings (PATCH),
search, per-conversation model and settings
reaching the model, edit-and-resend / regenerate (``replace_from``) and titles."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from core import hookimpl, migrations
from core.app import create_app
from core.chat import title_from
from core.protocols import ChatMessage, Delta, GenerationParams
from tests.chat_support import AuthPlugin, HeaderAuthenticator, plugin_object


class Recorder:
    """A model that answers with what it was given: the last user message, the system
    prompt's first line and the sampling settings; ``count`` answers differ each time."""

    context_window = 4096

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    def count_tokens(self, text: str) -> int:
        return len(text) // 3 + 1

    async def stream(self, messages: Sequence[ChatMessage], params: GenerationParams
                     ) -> AsyncIterator[Delta]:
        self.calls += 1
        system = messages[0].content.splitlines()[0] if messages[0].role == "system" else ""
        users = [m.content for m in messages if m.role == "user"]
        yield Delta(json.dumps({"model": self.name, "call": self.calls, "users": users,
                                "system": system, "temperature": params.temperature,
                                "max_tokens": params.max_tokens}))
        yield Delta("", finish_reason="stop")

    async def aclose(self) -> None:
        return None


class Models:
    def __init__(self) -> None:
        self.first = Recorder("first")
        self.second = Recorder("second")

    @hookimpl
    def register_llm_providers(self, register: Any, runtime: Any) -> None:
        register(self.first)
        register(self.second)


ALICE = {"Authorization": "Bearer alice"}
BOB = {"Authorization": "Bearer bob"}


@pytest.fixture
def server(make_config: Any, live_server: Any, database_url: str) -> Any:
    """On SQLite and on PostgreSQL (search uses ILIKE with an escape character)."""
    migrations.upgrade(database_url)
    app = create_app(
        make_config(core={"auth": True, "llm": "first", "system_prompt": "Be brief.",
                          "database_url": database_url},
                    budget={"reply_tokens": 100}),
        candidates=[plugin_object("models", Models()),
                    plugin_object("header-auth", AuthPlugin(HeaderAuthenticator()))])
    return live_server(app)


async def turn(server: Any, owner: str = "alice", **message: Any) -> tuple[dict[str, Any], Any]:
    """One WebSocket turn: the ``start`` event (or the ``error``) and the reply, parsed."""
    async with connect(f"{server.ws_url}/ws/chat?owner={owner}") as ws:
        await ws.send(json.dumps({"type": "message", **message}))
        return await _until_end(ws)


async def _until_end(ws: ClientConnection) -> tuple[dict[str, Any], Any]:
    first: dict[str, Any] | None = None
    text = ""
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(decode=True), 30))
        if event["type"] == "error" and first is None:
            return event, None
        first = first or event
        if event["type"] == "delta":
            text += event["text"]
        if event["type"] == "end":
            return first, json.loads(text) if text else None


def api(server: Any, method: str, path: str, headers: dict[str, str] | None = None,
        **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{server.url}/api/conversations{path}",
                         headers=headers or ALICE, timeout=30, **kwargs)


def messages(server: Any, cid: str) -> list[dict[str, Any]]:
    response = api(server, "GET", f"/{cid}/messages")
    assert response.status_code == 200, response.text
    return list(response.json())


async def test_settings_are_stored_validated_and_reach_the_model(server: Any) -> None:
    created = api(server, "POST", "", json={"model": "second", "temperature": 0.2})
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    assert created.json()["model"] == "second" and created.json()["max_tokens"] is None
    _start, reply = await turn(server, content="hello", conversation_id=cid)
    assert reply["model"] == "second" and reply["temperature"] == 0.2
    assert reply["max_tokens"] == 100 and reply["system"] == "Be brief."

    changed = api(server, "PATCH", f"/{cid}", json={
        "system_prompt": "You are a pirate.", "max_tokens": 42, "model": None})
    assert changed.status_code == 200, changed.text
    assert changed.json()["temperature"] == 0.2  # untouched
    again = api(server, "GET", f"/{cid}").json()
    assert (again["model"], again["system_prompt"], again["max_tokens"]) == (
        None, "You are a pirate.", 42)
    _, reply = await turn(server, content="and now?", conversation_id=cid)
    assert reply["model"] == "first" and reply["system"] == "You are a pirate."
    assert reply["max_tokens"] == 42 and reply["temperature"] == 0.2


@pytest.mark.parametrize(("body", "message"), [
    ({"model": "nope"}, "model: 'nope' is not available (available: first, second)"),
    ({"temperature": 3}, "temperature: must be from 0 to 2"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"max_tokens": 0}, "max_tokens: must be from 1 to 32768"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"title": None}, "title"),
    ({"title": "x" * 201}, "title: at most 200 characters"),
    ({"system_prompt": "x" * 8001}, "system_prompt: at most 8000 characters"),
    ({"colour": "red"}, "unknown field: colour"),
    ([1, 2], "object"),
])
def test_bad_settings_are_a_400_naming_the_field(server: Any, body: Any, message: str) -> None:
    cid = api(server, "POST", "", json={"title": "keep"}).json()["id"]
    for method, path in (("PATCH", f"/{cid}"), ("POST", "")):
        response = api(server, method, path, json=body)
        assert response.status_code == 400, (method, response.text)
        assert message in response.json()["error"]["message"], response.text
    assert api(server, "GET", f"/{cid}").json()["title"] == "keep"
    assert len(api(server, "GET", "").json()) == 1  # no bad POST created anything


def test_rename_and_another_owners_id_is_a_404(server: Any) -> None:
    cid = api(server, "POST", "", json={"title": "first title"}).json()["id"]
    renamed = api(server, "PATCH", f"/{cid}", json={"title": "  Trip   to Lisbon "})
    assert renamed.status_code == 200 and renamed.json()["title"] == "Trip to Lisbon"
    assert api(server, "GET", "").json()[0]["title"] == "Trip to Lisbon"
    for method, path, body in (("PATCH", f"/{cid}", {"title": "mine now"}),
                               ("GET", f"/{cid}", None), ("DELETE", f"/{cid}", None)):
        response = api(server, method, path, headers=BOB, json=body)
        assert response.status_code == 404, (method, response.text)
        assert "not found" in response.json()["error"]["message"]
    assert api(server, "PATCH", "/no-such-id", json={"title": "x"}).status_code == 404
    assert api(server, "GET", f"/{cid}").json()["title"] == "Trip to Lisbon"


def test_a_change_moves_updated_at_and_the_conversation_to_the_top_of_the_list(
        server: Any) -> None:
    """The list is newest ``updated_at`` first (the page shows it in that order); a
    rename or a settings change is an update (it left ``updated_at`` as it was)."""
    older = api(server, "POST", "", json={"title": "older"}).json()
    newer = api(server, "POST", "", json={"title": "newer"}).json()
    assert [c["id"] for c in api(server, "GET", "").json()] == [newer["id"], older["id"]]
    renamed = api(server, "PATCH", f"/{older['id']}", json={"title": "renamed"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["updated_at"] > newer["updated_at"] > older["updated_at"]
    listed = api(server, "GET", "").json()
    assert [(c["id"], c["title"]) for c in listed] == [(older["id"], "renamed"),
                                                        (newer["id"], "newer")]
    assert listed[0]["updated_at"] == renamed.json()["updated_at"]
    assert listed[0]["created_at"] == older["created_at"]
    changed = api(server, "PATCH", f"/{newer['id']}", json={"temperature": 0.5}).json()
    assert changed["updated_at"] > renamed.json()["updated_at"]
    assert [c["id"] for c in api(server, "GET", "").json()] == [newer["id"], older["id"]]
    same = api(server, "PATCH", f"/{newer['id']}", content=b"")  # nothing given: no change
    assert same.status_code == 200 and same.json()["updated_at"] == changed["updated_at"]


async def test_search_finds_titles_and_message_text_of_the_owner_only(server: Any) -> None:
    _, _ = await turn(server, content="Where is the 100% cotton_shirt?")
    start, _ = await turn(server, content="Plan a trip to Lisbon")
    lisbon = start["conversation_id"]
    await turn(server, owner="bob", content="Lisbon for bob")
    named = api(server, "POST", "", json={"title": "Groceries"}).json()["id"]

    def found(q: str, headers: dict[str, str] | None = None) -> list[str]:
        response = api(server, "GET", "", headers=headers, params={"q": q})
        assert response.status_code == 200, response.text
        return [c["id"] for c in response.json()]

    assert found("lisbon") == [lisbon]
    assert found("GROCER") == [named]
    assert found("never said") == []
    assert found('"users"') != []  # assistant replies are searched too
    assert len(found("100%")) == 1 and found("100%_") == []  # wildcards are literal
    assert len(found("cotton_shirt")) == 1 and found("cotton%shirt") == []
    assert found("lisbon", BOB) != [lisbon] and len(found("lisbon", BOB)) == 1
    for bad in ("", "   ", "x" * 201):
        response = api(server, "GET", "", params={"q": bad})
        assert response.status_code == 400, bad


async def test_regenerate_and_edit_truncate_after_the_replaced_message(server: Any) -> None:
    start, _first = await turn(server, content="one", client_message_id="c1")
    cid = start["conversation_id"]
    start2, _ = await turn(server, content="two", conversation_id=cid, client_message_id="c2")
    second_user = start2["user_message_id"]
    assert [m["id"] for m in messages(server, cid)][2] == second_user

    # Regenerate: the same text again in place of the last turn.
    _, again = await turn(server, content="two", conversation_id=cid, replace_from=second_user,
                          client_message_id="c3")
    assert again["users"] == ["one", "two"]  # the replaced turn is not in the context
    rows = messages(server, cid)
    assert [(r["role"], r["content"]) for r in rows][:3] == [
        ("user", "one"), ("assistant", rows[1]["content"]), ("user", "two")]
    assert len(rows) == 4 and json.loads(rows[3]["content"])["call"] == again["call"]
    assert [r["seq"] for r in rows] == [1, 2, 3, 4]

    # Edit the first message: everything after it goes.
    first_user = rows[0]["id"]
    start, edited = await turn(server, content="uno", conversation_id=cid,
                               replace_from=first_user, client_message_id="c4")
    assert edited["users"] == ["uno"]
    rows = messages(server, cid)
    assert [(r["role"], r["seq"]) for r in rows] == [("user", 1), ("assistant", 2)]
    assert rows[0]["content"] == "uno" and rows[0]["id"] == start["user_message_id"]
    # A retry of the edit (same client id) replays it; it does not edit again.
    _, replay = await turn(server, content="uno", conversation_id=cid, replace_from=first_user,
                           client_message_id="c4")
    assert replay == edited and len(messages(server, cid)) == 2


async def test_replace_from_refuses_what_it_cannot_replace(server: Any) -> None:
    start, _ = await turn(server, content="mine")
    cid = start["conversation_id"]
    reply_id = start["message_id"]
    other, _ = await turn(server, owner="bob", content="bob's")
    cases = [
        ({"conversation_id": cid, "replace_from": reply_id}, 404, "user message"),
        ({"conversation_id": cid, "replace_from": "missing"}, 404, "not found"),
        ({"conversation_id": cid, "replace_from": other["user_message_id"]}, 404, "not found"),
        ({"replace_from": start["user_message_id"]}, 400, "conversation_id"),
        ({"conversation_id": cid, "replace_from": 7}, 400, "replace_from"),
    ]
    for fields, code, words in cases:
        error, reply = await turn(server, content="edited", **fields)
        assert reply is None and error["type"] == "error", fields
        assert error["code"] == code and words in error["message"], (fields, error)
    assert next(m["content"] for m in messages(server, cid)) == "mine"
    assert len(messages(server, cid)) == 2


def test_titles_are_cut_at_a_word_boundary() -> None:
    text = "Please help me plan a long weekend trip to Lisbon with my family and two dogs in May"
    title = title_from(text)
    assert title.endswith("…") and len(title) <= 80
    assert text.startswith(title[:-1]) and text[len(title) - 1] == " "
    assert title_from("  short\n\n question  ") == "short question"
    assert title_from("x" * 200) == "x" * 79 + "…"  # one long word: cut where it must be
