"""Memory and retrieval share one embedded Chroma store: their first uses, at the same
moment on a fresh server, must both succeed (they raced to open it and one failed)."""

from __future__ import annotations

import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from core.app import create_app
from core.plugins import builtin_candidates
from plugins.chroma_rag.store import open_client
from tests.plugins.memory.conftest import ScriptedLLM, candidates

CAT = "Remember that my cat is called Pamuk."


def memories_of(server: Any, expected: int = 1) -> list[str]:
    """The caller's memories, once ``expected`` are there (extraction runs after the
    response) or after 30 s."""
    deadline = time.monotonic() + 30
    while True:
        found = [m["text"] for m in httpx.get(server.url + "/api/memories").json()["data"]]
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


async def test_memory_and_retrieval_share_one_client(make_config: Any) -> None:
    from core.runtime import Runtime
    from plugins.chroma_rag import retriever_of

    rag = [c for c in builtin_candidates() if c.name == "chroma-rag"]
    runtime = Runtime(make_config(), candidates() + rag)
    await runtime.ensure_started()
    try:
        memory: Any = runtime.memory
        assert memory.vectors.client is retriever_of(runtime).store.client
    finally:
        await runtime.stop()


def test_two_threads_opening_a_fresh_store_at_once_both_work() -> None:
    for _ in range(5):
        path = tempfile.mkdtemp()
        barrier = threading.Barrier(2)

        def write(n: int, path: str = path, barrier: threading.Barrier = barrier) -> int:
            barrier.wait()
            collection = open_client(path=path).get_or_create_collection(
                f"collection-{n}", embedding_function=None)
            collection.upsert(ids=["a"], embeddings=[[0.1] * 8], documents=["x"])
            return int(collection.count())

        with ThreadPoolExecutor(2) as pool:
            assert list(pool.map(write, range(2))) == [1, 1]


def test_the_first_upload_and_the_first_remembered_fact_arrive_together(
    make_config: Any, live_server: Any, tmp_path: Path
) -> None:
    for round_ in range(10):
        llm = ScriptedLLM()
        rag = [c for c in builtin_candidates() if c.name == "chroma-rag"]
        config = make_config(core={"data_dir": str(tmp_path / f"data{round_}"),
                                   "database_url": f"sqlite:///{tmp_path}/db{round_}.sqlite"})
        server = live_server(create_app(config, candidates=candidates(llm) + rag))
        document = {"source": "ships.md", "text": "The ship sails at dawn.", "scope": "default"}
        chat = {"model": "scripted", "messages": [{"role": "user", "content": CAT}],
                "metadata": {"conversation_id": "new"}}
        with ThreadPoolExecutor(2) as pool:
            upload = pool.submit(httpx.post, server.url + "/api/documents", json=document,
                                 timeout=60)
            reply = pool.submit(httpx.post, server.url + "/v1/chat/completions", json=chat,
                                timeout=60)
            assert upload.result().status_code == 201, upload.result().text
            assert reply.result().status_code == 200, reply.result().text
        assert memories_of(server) == ["my cat is called Pamuk"]
        documents = httpx.get(server.url + "/api/documents").json()
        assert [d["source"] for d in documents] == ["ships.md"]
        found = httpx.post(server.url + "/api/search", json={"query": "when does the ship sail"},
                           timeout=60).json()
        assert found and "dawn" in str(found)


class RecordingLLM(ScriptedLLM):
    """The scripted model, keeping the prompt of every reply."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[str] = []

    def stream(self, messages: Any, params: Any) -> Any:
        self.prompts.append("\n".join(m.content for m in messages))
        return super().stream(messages, params)


def test_after_a_restart_the_first_chat_sees_memories_and_documents(
    make_config: Any, live_server: Any, tmp_path: Path
) -> None:
    config = make_config()
    rag = [c for c in builtin_candidates() if c.name == "chroma-rag"]
    first = live_server(create_app(config, candidates=candidates(ScriptedLLM()) + rag))
    document = {"source": "ships.md", "text": "The ship Aurora sails at dawn.",
                "scope": "default"}
    assert httpx.post(first.url + "/api/documents", json=document, timeout=60).status_code == 201
    chat = {"model": "scripted", "messages": [{"role": "user", "content": CAT}],
            "metadata": {"conversation_id": "new"}}
    assert httpx.post(first.url + "/v1/chat/completions", json=chat, timeout=60).is_success
    assert memories_of(first) == ["my cat is called Pamuk"]
    first.stop()
    llm = RecordingLLM()
    again = live_server(create_app(config, candidates=candidates(llm) + rag))
    question = {"model": "scripted", "messages": [
        {"role": "user", "content": "What is my cat called, and when does the Aurora sail?"}],
        "metadata": {"conversation_id": "new"}}
    assert httpx.post(again.url + "/v1/chat/completions", json=question, timeout=60).is_success
    prompt = llm.prompts[0]
    assert "my cat is called Pamuk" in prompt and "sails at dawn" in prompt
