"""Citations: the passages a reply was given are its sources, in the WebSocket
``sources`` event, the OpenAI-compatible ``mami_sources`` field (read with the official
``openai`` SDK), and stored with the answer for the conversation API. A real server on
loopback, the local model, Chroma and a PDF made in the test."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest
from websockets.asyncio.client import connect

from core.app import create_app
from tests.chat_support import LOCAL, builtin
from tests.document_files import make_pdf

FILLER = ("This page lists the rooms, chairs and printers of the facilities team and "
          "the people who look after them. ") * 5
PAGES = [FILLER, "The emergency generator is tested every second Tuesday at seven.",
         FILLER]
QUESTION = "When is the emergency generator tested?"
KEYS = {"n", "document_id", "source", "chunk_index", "page", "score", "text"}


@pytest.fixture
def server(make_config: Any, live_server: Any) -> Any:
    config = make_config(budget={"reply_tokens": 8, "rag_k": 2},
                         plugins={"chroma-rag": {"chunk_tokens": 64, "chunk_overlap": 8}})
    return live_server(create_app(config, candidates=[
        LOCAL, builtin("chroma-rag", "plugins.chroma_rag")]))


@pytest.fixture
def client(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def upload(server: Any) -> None:
    done = httpx.post(f"{server.url}/api/documents", timeout=120,
                      files=[("file", ("facilities.pdf", make_pdf(PAGES), "application/pdf"))])
    assert done.status_code == 201, done.text


def ask(client: openai.OpenAI, **extra: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model="", messages=[{"role": "user", "content": QUESTION}], max_tokens=8, **extra)


def messages(server: Any, conversation: str) -> list[dict[str, Any]]:
    return httpx.get(f"{server.url}/api/conversations/{conversation}/messages").json()  # type: ignore[no-any-return]


def check_sources(sources: list[dict[str, Any]]) -> None:
    assert [s["n"] for s in sources] == list(range(1, len(sources) + 1))
    assert all(set(s) == KEYS for s in sources)
    first = sources[0]
    assert first["source"] == "facilities.pdf" and first["page"] == 2
    assert "emergency generator" in first["text"] and 0 < first["score"] <= 1


def test_openai_api_and_stored_messages_carry_the_sources(server: Any,
                                                          client: openai.OpenAI) -> None:
    raw = ask(client, extra_body={"metadata": {"conversation_id": "new"}})
    plain = raw.parse()
    assert plain.choices[0].message.content is not None
    assert "mami_sources" not in (plain.model_extra or {})  # no documents: no field
    conversation = raw.headers["x-mami-conversation"]
    assert [m["sources"] for m in messages(server, conversation)] == [[], []]

    upload(server)
    raw = ask(client, extra_body={"metadata": {"conversation_id": conversation,
                                               "client_message_id": "q-1"}})
    completion = raw.parse()
    assert completion.choices[0].finish_reason in ("stop", "length")
    sources = completion.model_extra["mami_sources"]
    check_sources(sources)
    stored = messages(server, conversation)
    assert [m["role"] for m in stored] == ["user", "assistant"] * 2
    assert stored[2]["sources"] == [] and stored[3]["sources"] == sources

    again = ask(client, extra_body={"metadata": {"conversation_id": conversation,
                                                 "client_message_id": "q-1"}}).parse()
    assert again.model_extra["mami_sources"] == sources  # a replayed answer keeps them

    chunks = list(client.chat.completions.create(
        model="", messages=[{"role": "user", "content": QUESTION}], max_tokens=8, stream=True))
    assert chunks[0].model_extra["mami_sources"] == sources
    assert all("mami_sources" not in (c.model_extra or {}) for c in chunks[1:])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def test_websocket_sends_sources_before_the_first_delta(server: Any) -> None:
    await asyncio.to_thread(upload, server)
    async with connect(f"{server.ws_url}/ws/chat", origin=server.url) as ws:  # type: ignore[arg-type]
        await ws.send(json.dumps({"type": "message", "content": QUESTION}))
        events = []
        while not events or events[-1]["type"] != "end":
            events.append(json.loads(await asyncio.wait_for(ws.recv(), 120)))
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["start", "sources"] and kinds.count("sources") == 1
    assert kinds[2] in ("delta", "end")
    check_sources(events[1]["sources"])
    conversation = events[0]["conversation_id"]
    stored = await asyncio.to_thread(messages, server, conversation)
    assert stored[1]["sources"] == events[1]["sources"]
