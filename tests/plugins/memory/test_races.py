"""Exactly-once memory under races and faults: two runtimes on one PostgreSQL remembering
paraphrases of one fact at the same moment make one memory, and a memory write that
fails after its message was claimed is done by the next delivery of the event."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from core.events import MessageCompleted
from tests.conftest import free_port
from tests.plugins.chroma_rag.conftest import ChromaServer
from tests.plugins.memory.conftest import ScriptedLLM, counts, store_of
from tests.plugins.memory.test_exactly_once import ask

PARAPHRASES = [
    ("My dog's name is Max", "My dog is named Max"),
    ("My son plays the piano", "My son plays piano"),
    ("I prefer tea over coffee", "I prefer tea to coffee"),
    ("My favourite colour is green", "My favorite color is green"),
    ("My daughter is seven years old", "My daughter is 7 years old"),
    ("My wife's name is Sarah", "My wife is called Sarah"),
    ("I am learning Spanish", "I'm currently learning Spanish"),
    ("My manager is called Priya", "My manager's name is Priya"),
    ("I have two cats", "I own two cats"),
    ("I use Linux at work", "At work I use Linux"),
]


async def test_paraphrases_remembered_one_after_the_other_are_one_memory(
    make_runtime: Any, postgres_url: str
) -> None:
    """The pairs below are paraphrases for the store (so the race test means something)."""
    runtime = await make_runtime(database_url=postgres_url)
    store = store_of(runtime)
    for n, (first, second) in enumerate(PARAPHRASES):
        await store.remember(f"calm-{n}", first)
        decision = await store.remember(f"calm-{n}", second)
        assert decision.action == "updated", (first, second, decision)


async def test_two_runtimes_remembering_racing_paraphrases_make_one_memory(
    make_runtime: Any, postgres_url: str
) -> None:
    one = await make_runtime(database_url=postgres_url)
    two = await make_runtime(database_url=postgres_url)
    for n, (first, second) in enumerate(PARAPHRASES):
        owner = f"racer-{n}"
        decisions = await asyncio.gather(store_of(one).remember(owner, first),
                                         store_of(two).remember(owner, second))
        assert sorted(d.action for d in decisions) == ["added", "updated"], (first, second)
        [memory] = await store_of(two).list_memories(owner)
        assert memory.seen_count == 2
    assert (await counts(one))[0] == len(PARAPHRASES)


async def test_a_memory_write_that_fails_after_the_claim_is_done_on_the_next_delivery(
    make_runtime: Any, database_url: str, llm: ScriptedLLM, tmp_path: Path
) -> None:
    port = free_port()  # the Chroma server is down at first
    runtime = await make_runtime(database_url=database_url, llm=llm, memory={
        "chroma_url": f"http://127.0.0.1:{port}", "write_behind": False})
    event = MessageCompleted("alice", "conv", "m1", "u1",
                             "Remember that my cat is called Pamuk. Remember that I live in Izmir.",
                             "Noted.")
    errors = await runtime.message_completed(event)
    assert [plugin for plugin, _error in errors] == ["memory"]
    assert await counts(runtime) == (0, 0, 0)  # the claim was released
    server = ChromaServer(tmp_path / "chroma", port)
    try:
        assert await runtime.message_completed(event) == []
        assert await counts(runtime) == (2, 2, 1)
        texts = sorted(m.text for m in await store_of(runtime).list_memories("alice"))
        assert texts == ["I live in Izmir", "my cat is called Pamuk"]
        # A later delivery finds the message handled.
        assert await runtime.message_completed(event) == []
        assert await counts(runtime) == (2, 2, 1)
    finally:
        server.stop()


async def test_a_claim_left_by_a_killed_process_is_handled_at_the_next_start(
    make_runtime: Any, database_url: str, llm: ScriptedLLM
) -> None:
    before = await make_runtime(database_url=database_url, llm=llm, memory={"enabled": False})
    finished = await ask(before, "Remember that my cat is called Pamuk.", "c1")
    # The process claimed the message, then died before remembering anything.
    assert await before.claim_once("memory", finished.message_id or "")
    after = await make_runtime(database_url=database_url, llm=llm)
    [memory] = await store_of(after).list_memories("alice")
    assert memory.text == "my cat is called Pamuk"
    [decision] = await store_of(after).history("alice", memory.id)
    assert decision.source_message_id == finished.message_id
    assert await counts(after) == (1, 1, 1)
    again = await make_runtime(database_url=database_url, llm=llm)  # nothing left to do
    assert await counts(again) == (1, 1, 1)
