# ruff: noqa: RUF001  (Turkish letters and typographic quotes are intended)
"""The memory store against real SQL (SQLite and PostgreSQL) and real embedded Chroma."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, func, select

from core.errors import AuthError, BadRequest
from core.runtime import Runtime
from plugins.memory.models import MemoryDecisionRecord, MemoryRecord
from plugins.memory.normalize import memory_id, normalize
from tests.plugins.chroma_rag.conftest import ChromaServer
from tests.plugins.memory.conftest import store_of


async def rows(runtime: Runtime, model: Any, owner: str) -> list[Any]:
    async with runtime.db.session() as session:
        found = await session.exec(select(model).where(col(model.owner_id) == owner))
        return list(found.all())


async def test_added_skipped_updated_are_decided_and_recorded(
    make_runtime: Any, database_url: str
) -> None:
    runtime = await make_runtime(database_url=database_url)
    store = store_of(runtime)
    added = await store.remember("alice", "  My wife's name is Sarah.  ", "m1")
    assert added.action == "added" and added.similarity is None
    assert added.memory_id == memory_id("alice", normalize("My wife's name is Sarah."))

    # Same words, other case and punctuation: an exact repeat.
    skipped = await store.remember("alice", "MY WIFE'S NAME IS SARAH!!", "m2")
    assert (skipped.action, skipped.memory_id, skipped.similarity) == ("skipped", added.memory_id,
                                                                      1.0)
    # A paraphrase: the existing memory takes the newer wording.
    updated = await store.remember("alice", "My wife is called Sarah", "m3")
    assert updated.action == "updated" and updated.memory_id == added.memory_id
    assert updated.similarity is not None
    assert updated.similarity >= store.settings.duplicate_threshold

    # A related but different fact is a memory of its own.
    other = await store.remember("alice", "My sister lives in Lisbon", "m4")
    assert other.action == "added" and other.memory_id != added.memory_id
    assert other.matched_memory_id == added.memory_id  # the closest, below the threshold
    assert other.similarity is not None and other.similarity < updated.similarity

    memories = {m.id: m for m in await store.list_memories("alice")}
    assert set(memories) == {added.memory_id, other.memory_id}
    assert memories[added.memory_id].text == "My wife is called Sarah"
    assert memories[added.memory_id].seen_count == 3
    assert [(d.action, d.text, d.source_message_id)
            for d in await store.history("alice", added.memory_id)] == [
        ("added", "My wife's name is Sarah.", "m1"),
        ("skipped", "MY WIFE'S NAME IS SARAH!!", "m2"),
        ("updated", "My wife is called Sarah", "m3"),
    ]
    # The old wording is now a paraphrase of the new one, not a new memory.
    again = await store.remember("alice", "My wife's name is Sarah.", "m5")
    assert again.memory_id == added.memory_id and again.action in ("updated", "skipped")
    assert len(await rows(runtime, MemoryRecord, "alice")) == 2


async def test_turkish_case_folding_makes_exact_repeats(make_runtime: Any) -> None:
    store = store_of(await make_runtime())
    first = await store.remember("ayse", "İstanbul'da yaşıyorum")
    for variant in ("ISTANBUL'DA YAŞIYORUM", "istanbul’da  yaşıyorum.", "İSTANBUL'DA YAŞIYORUM"):
        decision = await store.remember("ayse", variant)
        assert (decision.action, decision.memory_id) == ("skipped", first.memory_id), variant
    assert [m.seen_count for m in await store.list_memories("ayse")] == [4]


async def test_owners_never_meet(make_runtime: Any, database_url: str) -> None:
    runtime = await make_runtime(database_url=database_url)
    store = store_of(runtime)
    alice = await store.remember("alice", "My dog is called Rex")
    bob = await store.remember("bob", "My dog is called Rex")
    assert bob.action == "added" and bob.memory_id != alice.memory_id
    await store.remember("bob", "I work as a pilot")
    assert [m.text for m in await store.recall("alice", "what is my job?", k=5)] == [
        "My dog is called Rex"]
    assert {m.owner for m in await store.recall("bob", "dog", k=5)} == {"bob"}
    assert await store.recall("carol", "dog") == []
    # Another owner's id is unknown to you: no delete, no history.
    assert await store.delete_memory("bob", alice.memory_id) is False
    assert await store.history("bob", alice.memory_id) == []
    assert await store.erase_owner("bob") == 2
    assert [m.id for m in await store.list_memories("alice")] == [alice.memory_id]
    assert [m.text for m in await store.recall("alice", "dog")] == ["My dog is called Rex"]
    assert await store.recall("bob", "dog") == []
    assert await rows(runtime, MemoryDecisionRecord, "bob") == []


async def test_recall_ranks_by_relevance(make_runtime: Any) -> None:
    store = store_of(await make_runtime())
    for fact in ("I am allergic to peanuts", "My daughter is called Mia",
                 "I work as a nurse in Leeds", "My favourite band is Radiohead"):
        assert (await store.remember("alice", fact)).action == "added"
    assert await store.recall("alice", " ... ") == []  # no words: nothing to match
    assert len(await store.recall("alice", "anything", k=500)) == 4  # k capped at max_k
    found = await store.recall("alice", "Which food allergies do I have?", k=2)
    assert [m.text for m in found] == ["I am allergic to peanuts", found[1].text]
    assert found[0].score is not None and found[1].score is not None
    assert found[0].score > found[1].score
    assert len(await store.recall("alice", "music", k=50)) == 4


async def test_concurrent_writes_of_one_fact_leave_one_memory(
    make_runtime: Any, database_url: str
) -> None:
    runtime = await make_runtime(database_url=database_url)
    store = store_of(runtime)
    decisions = await asyncio.gather(
        *(store.remember("alice", "I live in Porto", f"m{i}") for i in range(6)))
    assert [d.action for d in decisions].count("added") == 1
    assert {d.memory_id for d in decisions} == {decisions[0].memory_id}
    [memory] = await rows(runtime, MemoryRecord, "alice")
    assert memory.seen_count == 6
    assert len(await rows(runtime, MemoryDecisionRecord, "alice")) == 6
    await store.index.flush()
    assert store.index.vectors.count("alice", "memories") == 1


async def test_delete_forgets_row_vector_and_history(make_runtime: Any, database_url: str) -> None:
    runtime = await make_runtime(database_url=database_url)
    store = store_of(runtime)
    keep = await store.remember("alice", "I play the cello")
    gone = await store.remember("alice", "My car is a green Volvo")
    assert await store.delete_memory("alice", gone.memory_id) is True
    assert await store.delete_memory("alice", gone.memory_id) is False
    assert [m.id for m in await store.list_memories("alice")] == [keep.memory_id]
    assert await store.history("alice", gone.memory_id) == []
    assert [m.text for m in await store.recall("alice", "car", k=5)] == ["I play the cello"]
    await store.index.flush()
    assert store.index.vectors.count("alice", "memories") == 1
    # Remembered again after being forgotten: a fresh memory with the same id.
    back = await store.remember("alice", "My car is a green Volvo")
    assert (back.action, back.memory_id) == ("added", gone.memory_id)


async def test_bad_input_is_refused_and_writes_nothing(make_runtime: Any, database_url: str
                                                       ) -> None:
    runtime = await make_runtime(database_url=database_url, memory={"max_chars": 1000})
    store = store_of(runtime)
    for text in ("", "   ", "?!...", "x" * 1001, "\ufb03" * 600):  # NFKC: "ﬃ" is "ffi"
        with pytest.raises(BadRequest, match=r"at most|empty"):
            await store.remember("alice", text)
    with pytest.raises(BadRequest, match="once normalised"):
        await store.remember("alice", "ß" * 600)  # case folding: "ß" is "ss"
    with pytest.raises(AuthError):
        await store.remember("", "I like tea")
    with pytest.raises(BadRequest, match="k must be"):
        await store.recall("alice", "tea", k=0)
    async with runtime.db.session() as session:
        assert (await session.exec(select(func.count()).select_from(MemoryRecord))).one() == 0
        assert (await session.exec(
            select(func.count()).select_from(MemoryDecisionRecord))).one() == 0


@pytest.mark.parametrize("write_behind", [True, False])
async def test_vectors_lost_in_a_crash_are_rebuilt(
    make_runtime: Any, make_config: Any, write_behind: bool
) -> None:
    first = await make_runtime(memory={"write_behind": write_behind})
    store = store_of(first)
    kept = await store.remember("alice", "I keep bees in my garden")
    queued = await store.remember("alice", "My brother is a firefighter")
    # Until written, queued vectors still count for dedup and recall.
    assert (await store.remember("alice", "My brother works as a firefighter")).action == "updated"
    assert [m.id for m in await store.recall("alice", "brother's job", k=1)] == [queued.memory_id]
    if write_behind:
        await store.index.flush()
    assert not store.index.pending
    # A crash: the second vector never reaches Chroma.
    await asyncio.to_thread(store.index.vectors.delete_document, "alice", "memories",
                            queued.memory_id)
    await first.stop()

    second = await make_runtime(memory={"write_behind": write_behind})
    again = store_of(second)
    found = await again.recall("alice", "What does my brother do?", k=1)
    assert [m.id for m in found] == [queued.memory_id]
    assert found[0].text == "My brother works as a firefighter"
    await again.index.flush()
    assert again.index.vectors.count("alice", "memories") == 2
    assert kept.memory_id in {m.id for m in await again.recall("alice", "bees", k=2)}


async def test_chroma_down_at_shutdown_loses_nothing(
    make_runtime: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Vectors still queued when the Chroma server has gone: the app stops anyway, and
    the next start re-embeds them from SQL."""
    path = tmp_path / "chroma"
    server = await asyncio.to_thread(ChromaServer, path)
    first = await make_runtime(memory={"chroma_url": server.url})
    store = store_of(first)
    await store.remember("alice", "I keep bees in my garden")
    await store.index.flush()
    queued = await store.remember("alice", "My brother is a firefighter")
    assert store.index.pending
    server.stop()
    with caplog.at_level(logging.WARNING, logger="mami.memory"):
        await asyncio.wait_for(first.stop(), 60)
    assert any("not written" in r.getMessage() for r in caplog.records)

    server = await asyncio.to_thread(ChromaServer, path)
    second = await make_runtime(memory={"chroma_url": server.url})
    try:
        found = await store_of(second).recall("alice", "What is my brother's job?", k=1)
        assert [m.id for m in found] == [queued.memory_id]
    finally:
        await second.stop()
        server.stop()


async def test_looking_up_a_messages_decisions_uses_an_index(make_runtime: Any,
                                                             tmp_path: Path) -> None:
    """Each delivery of a finished turn asks for the decisions recorded for its message;
    that must not read all of the owner's decisions, which grow with every turn."""
    from sqlalchemy import event

    runtime = await make_runtime(database_url=f"sqlite:///{tmp_path / 'plan.db'}")
    store = store_of(runtime)
    await store.remember("alice", "My wife's name is Sarah.", "m1")
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "memory_decisions" in statement:
            seen.append((statement, parameters))

    engine = runtime.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", capture)
    try:
        assert await store.decided("alice", "m1") == {"My wife's name is Sarah."}
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    [(statement, parameters)] = seen
    async with runtime.db.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        cursor = await raw.driver_connection.execute(  # type: ignore[union-attr]
            f"EXPLAIN QUERY PLAN {statement}", parameters)
        plan = " / ".join(str(row[-1]) for row in await cursor.fetchall())
    assert "ix_memory_decisions_source" in plan, plan
