# ruff: noqa: RUF001
"""Defect #5: memories come only from completed replies, exactly once per assistant
message, driven through the real chat pipeline (SQLite and PostgreSQL, real Chroma)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from core import migrations
from core.app import create_app
from core.chat import ChatRequest, Finished, TurnRun, start_turn
from core.events import MessageCompleted
from core.protocols import GenerationParams, Principal
from core.runtime import Runtime
from tests.plugins.chroma_rag.conftest import ChromaServer
from tests.plugins.memory.conftest import ScriptedLLM, candidates, counts, store_of

ALICE = Principal("alice")
FAST = GenerationParams(max_tokens=64, temperature=0.0)
CAT = "Remember that my cat is called Pamuk."


async def drain(turn: TurnRun) -> Finished:
    finished = None
    async for item in turn.run():
        if isinstance(item, Finished):
            finished = item
    assert finished is not None
    return finished


async def ask(runtime: Runtime, text: str, client_id: str | None = None,
              conversation: str | None = None) -> Finished:
    turn = await start_turn(runtime, ALICE, ChatRequest(
        text, conversation_id=conversation, client_message_id=client_id, params=FAST))
    return await drain(turn)


async def test_a_streamed_reply_leaves_one_memory(
    make_runtime: Any, database_url: str, llm: ScriptedLLM
) -> None:
    runtime = await make_runtime(database_url=database_url, llm=llm)
    finished = await ask(runtime, CAT, "c1")
    assert finished.status == "complete" and finished.text == llm.reply
    [memory] = await store_of(runtime).list_memories("alice")
    assert memory.text == "my cat is called Pamuk" and memory.seen_count == 1
    [decision] = await store_of(runtime).history("alice", memory.id)
    assert (decision.action, decision.source_message_id) == ("added", finished.message_id)
    assert await counts(runtime) == (1, 1, 1)
    # A message with nothing to remember writes nothing, not even a receipt.
    await ask(runtime, "What is the weather like?", "c2")
    assert await counts(runtime) == (1, 1, 1)


async def test_remembered_facts_reach_the_next_turns_context(
    make_runtime: Any, database_url: str, llm: ScriptedLLM
) -> None:
    runtime = await make_runtime(database_url=database_url, llm=llm)
    await ask(runtime, CAT, "c1")
    turn = await start_turn(runtime, ALICE, ChatRequest(
        "What is my cat's name?", client_message_id="c2", params=FAST))
    assert turn.context is not None
    assert "- my cat is called Pamuk" in turn.context.messages[0].content
    await drain(turn)
    other = await start_turn(runtime, Principal("bob"), ChatRequest(
        "What is my cat's name?", client_message_id="b1", params=FAST))
    assert other.context is not None and "Pamuk" not in other.context.messages[0].content
    await drain(other)


async def test_a_retried_request_leaves_one_memory(
    make_runtime: Any, database_url: str, llm: ScriptedLLM
) -> None:
    runtime = await make_runtime(database_url=database_url, llm=llm)
    llm.cut_after = 3  # the first attempt breaks mid-stream: nothing is remembered
    first = await ask(runtime, "Hatırla ki kızım yedi yaşında.", "retry-1")
    assert first.status == "interrupted"
    assert await counts(runtime) == (0, 0, 0)
    llm.cut_after = None
    second = await ask(runtime, "Hatırla ki kızım yedi yaşında.", "retry-1")
    assert second.status == "complete" and second.message_id == first.message_id
    replay = await ask(runtime, "Hatırla ki kızım yedi yaşında.", "retry-1")
    assert replay.message_id == second.message_id and replay.text == second.text
    [memory] = await store_of(runtime).list_memories("alice")
    assert memory.text == "kızım yedi yaşında" and memory.seen_count == 1
    assert await counts(runtime) == (1, 1, 1)


async def test_concurrent_triggers_for_one_message_leave_one_memory(
    make_runtime: Any, database_url: str, llm: ScriptedLLM
) -> None:
    runtime = await make_runtime(database_url=database_url, llm=llm)
    finished = await ask(runtime, CAT, "c1")
    event = MessageCompleted("alice", "conv", finished.message_id or "", "u", CAT, finished.text)
    # The event again, four times at once: a reconnect, a redelivery, racing handlers.
    results = await asyncio.gather(*(runtime.fire("message_completed", event=event)
                                     for _ in range(4)))
    assert results == [[], [], [], []]
    [memory] = await store_of(runtime).list_memories("alice")
    assert memory.seen_count == 1
    assert await counts(runtime) == (1, 1, 1)


async def test_two_workers_racing_on_one_message_write_once(
    make_config: Any, postgres_url: str, tmp_path: Path
) -> None:
    """Two runtimes (as two processes would be) on one PostgreSQL and one Chroma server."""
    await asyncio.to_thread(migrations.upgrade_all, postgres_url)
    server = await asyncio.to_thread(ChromaServer, tmp_path / "chroma")
    workers: list[Runtime] = []
    try:
        for _ in range(2):
            config = make_config(core={"database_url": postgres_url},
                                 plugins={"memory": {"chroma_url": server.url}})
            worker = Runtime(config, candidates())
            await worker.ensure_started()
            workers.append(worker)
        facts = ["I was born in Porto", "My sister plays chess", "I drive a blue van"]
        events = [MessageCompleted("alice", "conv", f"msg-{i}", "u", f"Remember that {fact}.",
                                   "OK") for i, fact in enumerate(facts)]
        for event in events:
            await asyncio.gather(*(w.fire("message_completed", event=event) for w in workers))
        assert await counts(workers[0]) == (3, 3, 3)
        memories = await store_of(workers[1]).list_memories("alice")
        assert sorted(m.seen_count for m in memories) == [1, 1, 1]
        for worker in workers:
            await store_of(worker).index.flush()
        assert store_of(workers[0]).index.vectors.count("alice", "memories") == 3
    finally:
        for worker in workers:
            await worker.stop()
        server.stop()


async def test_interrupted_failed_and_cancelled_replies_leave_nothing(
    make_runtime: Any, database_url: str, llm: ScriptedLLM
) -> None:
    runtime = await make_runtime(database_url=database_url, llm=llm)
    llm.cut_after = 2
    assert (await ask(runtime, CAT, "a")).status == "interrupted"
    llm.cut_after = 0
    assert (await ask(runtime, CAT, "b")).status in ("interrupted", "error")
    llm.cut_after = None
    # The client goes away mid-stream: the reply is stored as interrupted.
    llm.gate = asyncio.Event()
    turn = await start_turn(runtime, ALICE, ChatRequest(CAT, client_message_id="c", params=FAST))
    items = turn.run()
    llm.gate.set()
    assert isinstance(await anext(items), str)
    llm.gate.clear()
    pending = asyncio.ensure_future(anext(items))
    await asyncio.sleep(0.05)
    pending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pending
    await items.aclose()  # type: ignore[attr-defined]
    assert turn.finished is not None and turn.finished.status == "interrupted"
    assert await counts(runtime) == (0, 0, 0)


async def test_llm_extraction_sees_the_whole_reply(
    make_runtime: Any, database_url: str, llm: ScriptedLLM
) -> None:
    runtime = await make_runtime(database_url=database_url, llm=llm,
                                 memory={"llm_extraction": True})
    llm.reply = "Lovely! Pamuk is a classic Turkish name for a white cat."
    llm.extraction = ('Here you go:\n```json\n{"facts": ["My cat is called Pamuk", '
                      '"I have a white cat", "  "]}\n```')
    await ask(runtime, "My white cat is called Pamuk. Remember that I live in Izmir!", "x")
    texts = sorted(m.text for m in await store_of(runtime).list_memories("alice"))
    assert texts == ["I have a white cat", "I live in Izmir", "My cat is called Pamuk"]
    assert llm.extraction_calls == 1
    [prompt] = llm.extraction_prompts
    assert prompt.endswith(f"Assistant: {llm.reply}")  # the stored reply, not a chunk


@pytest.mark.parametrize("output", ["Sure, you like tea.", '{"facts": "tea"}', '{"facts": [',
                                    '[1, 2]', ""])
async def test_malformed_llm_output_is_logged_and_skipped(
    make_runtime: Any, llm: ScriptedLLM, output: str, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = await make_runtime(llm=llm, memory={"llm_extraction": True})
    llm.extraction = output
    with caplog.at_level(logging.WARNING, logger="mami.memory"):
        finished = await ask(runtime, "I like tea. Remember that my name is Ada.", "m")
    assert finished.status == "complete"
    assert [m.text for m in await store_of(runtime).list_memories("alice")] == ["my name is Ada"]
    assert any("not a JSON list of facts" in r.getMessage() for r in caplog.records)


async def test_streamed_and_retried_over_http(
    make_config: Any, live_server: Any, llm: ScriptedLLM
) -> None:
    """Through ``/v1/chat/completions`` with ``stream: true`` under uvicorn; the retry
    uses the same client message id. The body is read to its end, after which the
    after-completion event has run."""
    server = live_server(create_app(make_config(), candidates=candidates(llm)))
    body = {"model": "scripted", "stream": True, "messages": [{"role": "user", "content": CAT}],
            "metadata": {"conversation_id": "new", "client_message_id": "sse-1"}}
    streams = []
    for _ in range(2):
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body,
                          timeout=30) as response:
            assert response.status_code == 200
            streams.append(response.read().decode())
    pieces = [
        json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in streams[0].splitlines()
        if line.startswith("data: {")
    ]
    assert "".join(pieces) == llm.reply and len(pieces) > 3
    listed = httpx.get(server.url + "/api/memories").json()
    assert [(m["text"], m["seen_count"]) for m in listed["data"]] == [
        ("my cat is called Pamuk", 1)]
    history = httpx.get(f"{server.url}/api/memories/{listed['data'][0]['id']}/history").json()
    assert [d["action"] for d in history["data"]] == ["added"]
