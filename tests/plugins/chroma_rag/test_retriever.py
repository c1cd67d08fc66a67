"""The retriever against real Chroma (embedded and ``chroma run``) and real SQL."""

from __future__ import annotations

from typing import Any

import pytest

from core.errors import AuthError, BadRequest, PayloadTooLarge
from core.models import Document
from core.runtime import Runtime
from plugins.chroma_rag import GLOBAL_OWNER
from plugins.chroma_rag.retriever import ChromaRetriever
from tests.plugins.chroma_rag.conftest import ChromaServer, rag_candidates

PARIS = "Paris is the capital of France. The Eiffel Tower stands by the Seine."
FRUIT = "Bananas are yellow and grow in tropical countries."
MOON = "The moon orbits the earth every twenty-seven days."


def retriever(runtime: Runtime) -> ChromaRetriever:
    found = runtime.require("retriever")
    assert isinstance(found, ChromaRetriever)
    return found


async def test_search_finds_own_documents_best_first(rag_runtime: Runtime) -> None:
    rag = retriever(rag_runtime)
    await rag.ingest("alice", "paris.md", PARIS)
    await rag.ingest("alice", "fruit.md", FRUIT, scope="work")
    await rag.ingest("bob", "moon.md", MOON)
    found = await rag.search("alice", "Which city is the capital of France?", k=2)
    assert [p.source for p in found] == ["paris.md", "fruit.md"]
    assert found[0].score > found[1].score and found[0].text == PARIS
    assert found[0].scope == "default" and found[0].chunk_index == 0
    assert {p.source for p in await rag.search("alice", "moon", k=5)} == {"paris.md", "fruit.md"}
    assert [p.source for p in await rag.search("alice", "capital", scopes=["work"])] == ["fruit.md"]
    assert [p.source for p in await rag.search("bob", "capital of France")] == ["moon.md"]
    assert await rag.search("carol", "anything") == []


async def test_reingest_replaces_chunks(rag_runtime: Runtime) -> None:
    rag = retriever(rag_runtime)
    long_text = " ".join(f"sentence {i} about topic {i % 7}." for i in range(300))
    first = await rag.ingest("alice", "notes.md", long_text)
    assert first.chunks > 3
    again = await rag.ingest("alice", "notes.md", long_text)
    assert again.id == first.id and again.chunks == first.chunks
    assert rag.store.count("alice", "default") == first.chunks
    short = await rag.ingest("alice", "notes.md", "Only one short sentence now.")
    assert short.id == first.id and short.chunks == 1
    assert rag.store.count("alice", "default") == 1
    assert [d.chunks for d in await rag.list_documents("alice")] == [1]
    found = await rag.search("alice", "sentence about topic", k=5)
    assert [p.text for p in found] == ["Only one short sentence now."]


async def test_delete_and_erase_leave_nothing_findable(rag_runtime: Runtime) -> None:
    rag = retriever(rag_runtime)
    paris = await rag.ingest("alice", "paris.md", PARIS)
    await rag.ingest("alice", "fruit.md", FRUIT, scope="notes")
    await rag.ingest("bob", "paris.md", PARIS)
    assert not await rag.delete_document("bob", paris.id)  # alice's id, bob's request
    assert await rag.delete_document("alice", paris.id)
    assert not await rag.delete_document("alice", paris.id)
    assert [p.source for p in await rag.search("alice", "Paris France")] == ["fruit.md"]
    assert await rag.erase_owner("alice") == 1
    assert await rag.list_documents("alice") == []
    assert await rag.search("alice", "Paris", scopes=["default", "work", "notes"]) == []
    assert rag.store.count("alice", "notes") == 0 and rag.store.count("alice", "default") == 0
    assert [p.source for p in await rag.search("bob", "Paris")] == ["paris.md"]


async def test_global_scope_is_shared_and_written_only_by_writers(rag_runtime: Runtime) -> None:
    rag = retriever(rag_runtime)
    with pytest.raises(AuthError) as refused:
        await rag.ingest("alice", "handbook.md", MOON, scope="global")
    assert refused.value.status_code == 403
    shared = await rag.ingest("ops", "handbook.md", MOON, scope="global")
    assert shared.owner == GLOBAL_OWNER
    await rag.ingest("alice", "paris.md", PARIS)
    assert [p.scope for p in await rag.search("alice", "moon", k=2)] == ["global", "default"]
    assert [p.scope for p in await rag.search("bob", "moon")] == ["global"]
    assert await rag.search("bob", "moon", scopes=["default"]) == []
    assert [p.source for p in await rag.search("alice", "moon", scopes=["global"])] == [
        "handbook.md"]
    assert [d.id for d in await rag.list_documents("alice")] != [shared.id]
    assert not await rag.delete_document("alice", shared.id)
    assert await rag.erase_owner("alice") == 1
    assert [p.scope for p in await rag.search("bob", "moon")] == ["global"]
    assert [d.id for d in await rag.list_documents("ops")] == [shared.id]
    assert await rag.delete_document("ops", shared.id)
    assert await rag.search("bob", "moon") == []


async def test_bad_input_is_refused_before_anything_is_written(rag_runtime: Runtime) -> None:
    rag = retriever(rag_runtime)
    with pytest.raises(BadRequest, match="unknown scope 'secret'"):
        await rag.ingest("alice", "a.md", PARIS, scope="secret")
    with pytest.raises(BadRequest, match="empty"):
        await rag.ingest("alice", "a.md", "  \n\t ")
    with pytest.raises(BadRequest, match="source"):
        await rag.ingest("alice", "", PARIS)
    rag.settings.max_bytes = 10
    with pytest.raises(PayloadTooLarge, match=r"a\.md"):
        await rag.ingest("alice", "a.md", PARIS)
    assert await rag.list_documents("alice") == []
    assert rag.store.count("alice", "default") == 0
    with pytest.raises(BadRequest, match="query is empty"):
        await rag.search("alice", "   ")
    with pytest.raises(BadRequest, match="unknown scope"):
        await rag.search("alice", "x", scopes=["nope"])
    with pytest.raises(BadRequest, match="k must be"):
        await rag.search("alice", "x", k=0)


@pytest.mark.parametrize("client_mode", ["embedded"])  # the SQL side ignores the client mode
async def test_documents_table_on_sqlite_and_postgres(
    make_config: Any, database_url: str, rag_settings: dict[str, Any], client_mode: str
) -> None:
    config = make_config(core={"database_url": database_url},
                         plugins={"chroma-rag": rag_settings})
    if not config.database_url.startswith("sqlite"):
        from core import migrations

        migrations.upgrade_all(config.database_url)
    runtime = Runtime(config, rag_candidates())
    await runtime.ensure_started()
    try:
        rag = retriever(runtime)
        a = await rag.ingest("alice", "a.md", PARIS)
        await rag.ingest("alice", "a.md", FRUIT)
        await rag.ingest("alice", "a.md", FRUIT, scope="work")
        async with runtime.db.session() as session:
            row = await session.get(Document, a.id)
        assert row is not None and row.owner_id == "alice" and row.bytes == len(FRUIT)
        assert sorted(d.scope for d in await rag.list_documents("alice")) == ["default", "work"]
        assert len(await rag.search("alice", "banana")) == 2
        assert await rag.erase_owner("alice") == 2
        assert await rag.search("alice", "banana") == []
    finally:
        await runtime.stop()


async def test_a_failed_write_leaves_no_document(make_config: Any, tmp_path: Any) -> None:
    """The Chroma server goes away mid-life: ingest fails and records nothing."""
    server = ChromaServer(tmp_path / "doomed")
    config = make_config(plugins={"chroma-rag": {"chroma_url": server.url}})
    runtime = Runtime(config, rag_candidates())
    await runtime.ensure_started()
    try:
        rag = retriever(runtime)
        await rag.ingest("alice", "kept.md", PARIS)
        server.stop()
        with pytest.raises(Exception) as failed:
            await rag.ingest("alice", "lost.md", FRUIT)
        assert not isinstance(failed.value, BadRequest)
        assert [d.source for d in await rag.list_documents("alice")] == ["kept.md"]
    finally:
        server.stop()
        await runtime.stop()


async def test_another_process_recreating_a_collection_is_seen(
    make_config: Any, rag_settings: dict[str, Any]
) -> None:
    """Two runtimes on one database and Chroma: one holds a cached collection handle
    while the other erases the owner and ingests again."""
    config = make_config(plugins={"chroma-rag": rag_settings})
    first, second = Runtime(config, rag_candidates()), Runtime(config, rag_candidates())
    await first.ensure_started()
    await second.ensure_started()
    try:
        await retriever(first).ingest("alice", "paris.md", PARIS)
        assert [p.source for p in await retriever(first).search("alice", "Paris")] == [
            "paris.md"]
        await retriever(second).erase_owner("alice")
        await retriever(second).ingest("alice", "moon.md", MOON)
        found = await retriever(first).search("alice", "Paris")
        assert [p.source for p in found] == ["moon.md"]
        await retriever(first).ingest("alice", "fruit.md", FRUIT)
        assert {d.source for d in await retriever(second).list_documents("alice")} == {
            "moon.md", "fruit.md"}
    finally:
        await first.stop()
        await second.stop()


def test_settings_are_checked_at_startup(make_config: Any) -> None:
    from core.errors import ConfigError

    for table, key in [({"scopes": ["Bad Scope"]}, "scopes"), ({"scopes": ["global"]}, "scopes"),
                       ({"chunk_overlap": 300}, "chunk_overlap"), ({"max_k": 0}, "max_k")]:
        with pytest.raises(ConfigError, match=key):
            Runtime(make_config(plugins={"chroma-rag": table}), rag_candidates())
