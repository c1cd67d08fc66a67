"""A turn answered without the documents or the memories because their store failed
says so: ``mami_warnings`` in the OpenAI-compatible response (plain and streamed), a
``warnings`` event on the WebSocket, ``TurnRun.warnings`` in process. The store is a
real Chroma made unusable (its directory deleted, its server killed); the server is the
app under uvicorn on loopback, read with real HTTP and WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from websockets.asyncio.client import connect

from core import hookimpl
from core.app import create_app
from core.chat import ChatRequest, Finished, start_turn, unavailable
from core.protocols import ChatMessage, Delta, GenerationParams, Principal
from tests.chat_support import builtin, plugin_object

FACT = "The emergency generator is tested every second Tuesday at seven."
MEMORY = "Ada keeps bees on the roof."
QUESTION = "When is the emergency generator tested?"


class Witness:
    """A model that says whether its prompt held the document passage and the memory."""

    name = "witness"
    context_window = 4096

    def count_tokens(self, text: str) -> int:
        return len(text) // 3 + 1

    async def stream(self, messages: Sequence[ChatMessage], params: GenerationParams
                     ) -> AsyncIterator[Delta]:
        prompt = "\n".join(m.content for m in messages)
        yield Delta(f"passage={FACT in prompt} memory={MEMORY in prompt}")
        yield Delta("", finish_reason="stop")

    async def aclose(self) -> None:
        return None


class Models:
    @hookimpl
    def register_llm_providers(self, register: Any, runtime: Any) -> None:
        register(Witness())


def candidates(*extra: str) -> list[Any]:
    return [plugin_object("models", Models()), builtin("chroma-rag", "plugins.chroma_rag"),
            *(builtin(name, f"plugins.{name.replace('-', '_')}") for name in extra)]


def settings(make_config: Any, **rag: Any) -> Any:
    return make_config(core={"llm": "witness"}, budget={"reply_tokens": 16, "rag_k": 2},
                       plugins={"chroma-rag": rag})


def upload(server: Any) -> None:
    done = httpx.post(f"{server.url}/api/documents", timeout=120,
                      json={"source": "facilities.md", "text": FACT})
    assert done.status_code == 201, done.text


def ask(server: Any, stream: bool = False) -> tuple[str, dict[str, Any]]:
    """The answer's text and its extension fields (of the first chunk when streamed),
    through the official SDK."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    messages: Any = [{"role": "user", "content": QUESTION}]
    if stream:
        chunks = list(client.chat.completions.create(model="", messages=messages,
                                                     stream=True))
        assert all("mami_warnings" not in (c.model_extra or {}) for c in chunks[1:])
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, dict(chunks[0].model_extra or {})
    completion = client.chat.completions.create(model="", messages=messages)
    return completion.choices[0].message.content or "", dict(completion.model_extra or {})


async def over_websocket(server: Any) -> list[dict[str, Any]]:
    async with connect(f"{server.ws_url}/ws/chat", origin=server.url) as ws:  # type: ignore[arg-type]
        await ws.send(json.dumps({"type": "message", "content": QUESTION}))
        events = [json.loads(await asyncio.wait_for(ws.recv(), 60))]
        while events[-1]["type"] != "end":
            events.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
    return events


async def test_a_deleted_chroma_directory_is_a_warning_not_a_silent_answer(
        make_config: Any, live_server: Any, tmp_path: Path) -> None:
    store = tmp_path / "chroma"
    server = live_server(create_app(settings(make_config, path=str(store)),
                                    candidates=candidates()))
    await asyncio.to_thread(upload, server)
    text, extra = await asyncio.to_thread(ask, server)
    assert text == "passage=True memory=False" and "mami_warnings" not in extra
    assert extra["mami_sources"][0]["source"] == "facilities.md"
    events = await over_websocket(server)
    assert [e["type"] for e in events if e["type"] != "delta"] == ["start", "sources", "end"]

    shutil.copytree(store, tmp_path / "backup")
    shutil.rmtree(store)
    for stream in (False, True):
        text, extra = await asyncio.to_thread(ask, server, stream)
        assert text == "passage=False memory=False"  # answered, without the documents
        assert "mami_sources" not in extra
        [warning] = extra["mami_warnings"]
        assert warning.startswith("documents unavailable: ")
        assert f"the Chroma directory {store} is missing" in warning
    events = await over_websocket(server)
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["start", "warnings"] and kinds[-1] == "end"
    assert events[1]["warnings"] == extra["mami_warnings"]
    assert events[-1]["status"] == "complete" and "error" not in kinds

    shutil.copytree(tmp_path / "backup", store)  # repaired: no warning any more
    text, extra = await asyncio.to_thread(ask, server, True)
    assert text == "passage=True memory=False" and "mami_warnings" not in extra


async def test_a_killed_chroma_server_is_a_warning_without_the_urls_secrets(
        make_config: Any, live_server: Any, tmp_path: Path) -> None:
    from tests.plugins.chroma_rag.conftest import ChromaServer

    chroma = ChromaServer(tmp_path / "chroma-server")
    try:
        url = f"http://mami:s3cret@127.0.0.1:{chroma.port}/?key=hunter2"
        server = live_server(create_app(
            settings(make_config, chroma_url=url, collection_prefix="degraded"),
            candidates=candidates()))
        await asyncio.to_thread(upload, server)
        assert (await asyncio.to_thread(ask, server))[0] == "passage=True memory=False"
    finally:
        chroma.stop()
    for stream in (False, True):
        text, extra = await asyncio.to_thread(ask, server, stream)
        assert text == "passage=False memory=False"
        [warning] = extra["mami_warnings"]
        assert warning.startswith("documents unavailable: the Chroma server at "
                                  f"http://127.0.0.1:{chroma.port}/ does not answer")
        assert "s3cret" not in warning and "hunter2" not in warning
    events = await over_websocket(server)
    assert [e for e in events if e["type"] == "warnings"] == [
        {"type": "warnings", "warnings": extra["mami_warnings"]}]


async def test_a_chroma_server_that_stops_answering_is_a_warning_not_a_hung_turn(
        make_config: Any, live_server: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """A server that accepts connections but never answers (stopped): chromadb's client
    waited for it forever, and the turn with it; now each request has a deadline."""
    import plugins.chroma_rag.store
    from tests.plugins.chroma_rag.conftest import ChromaServer

    monkeypatch.setattr(plugins.chroma_rag.store, "HTTP_TIMEOUT", 1.0)
    chroma = ChromaServer(tmp_path / "chroma-server")
    try:
        server = live_server(create_app(
            settings(make_config, chroma_url=chroma.url, collection_prefix="stopped"),
            candidates=candidates()))
        await asyncio.to_thread(upload, server)
        os.kill(chroma.process.pid, signal.SIGSTOP)
        try:
            text, extra = await asyncio.to_thread(ask, server)
            events = await over_websocket(server)
        finally:
            os.kill(chroma.process.pid, signal.SIGCONT)
        assert text == "passage=False memory=False"
        [warning] = extra["mami_warnings"]
        assert warning.startswith(f"documents unavailable: the Chroma server at {chroma.url} "
                                  "does not answer"), warning
        assert events[1] == {"type": "warnings", "warnings": [warning]}
        assert events[-1]["status"] == "complete"
        text, extra = await asyncio.to_thread(ask, server)  # answering again: no warning
        assert text == "passage=True memory=False" and "mami_warnings" not in extra
    finally:
        chroma.stop()


async def test_memories_and_documents_each_have_their_warning(
        make_runtime: Any, tmp_path: Path) -> None:
    """In process (``mami chat`` reads ``TurnRun.warnings``): the memory plugin shares
    the Chroma directory; when it is gone, both are named, documents first."""
    from plugins.chroma_rag import retriever_of

    store = tmp_path / "chroma"
    runtime = await make_runtime(*candidates("memory"), core={"llm": "witness"},
                                 budget={"reply_tokens": 16, "rag_k": 2, "memory_k": 2},
                                 plugins={"chroma-rag": {"path": str(store)}})
    owner = Principal(owner="ada")
    await retriever_of(runtime).ingest("ada", "facilities.md", FACT)
    assert runtime.memory is not None
    await runtime.memory.remember("ada", MEMORY)

    async def answer() -> tuple[list[str], str]:
        turn = await start_turn(runtime, owner, ChatRequest(QUESTION))
        items = [item async for item in turn.run()]
        assert isinstance(items[-1], Finished) and items[-1].status == "complete"
        return turn.warnings, items[-1].text

    assert await answer() == ([], "passage=True memory=True")
    shutil.rmtree(store)
    warnings, text = await answer()
    assert text == "passage=False memory=False"
    assert [w.split(":")[0] for w in warnings] == ["documents unavailable",
                                                   "memories unavailable"]
    assert all(str(store) in w for w in warnings)


@pytest.mark.parametrize("fault", [
    ConnectionError("POST http://admin:pa55@chroma.internal:8000/api?token=t0ken refused"),
    RuntimeError("line one\n  line two " + "x" * 600),
])
def test_a_warning_is_one_line_without_url_secrets(fault: Exception) -> None:
    warning = unavailable("documents", fault)
    assert warning.startswith(f"documents unavailable: {type(fault).__name__}: ")
    assert "\n" not in warning and len(warning) <= len("documents unavailable: ") + 500
    assert "pa55" not in warning and "t0ken" not in warning
