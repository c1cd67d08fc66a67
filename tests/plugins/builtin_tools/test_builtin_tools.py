"""builtin-tools: search_documents, recall_memories and remember through
``runtime.tools.call``, on the real chroma-rag retriever and memory store (embedded
Chroma, SQLite). The owner is the turn's: alice never sees bob's chunks or memories."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from core.plugins import builtin_candidates
from core.protocols import ToolCall
from core.runtime import Runtime
from core.tools import ToolResult

NAMES = ("chroma-rag", "memory", "builtin-tools")


@pytest.fixture
async def runtime(make_config: Any) -> AsyncIterator[Runtime]:
    config = make_config(plugins={"builtin-tools": {"enabled": True, "max_k": 3},
                                  "memory": {"write_behind": False}})
    runtime = Runtime(config, [c for c in builtin_candidates() if c.name in NAMES])
    await runtime.ensure_started()
    yield runtime
    await runtime.stop()


async def run(runtime: Runtime, caller: str, name: str, **arguments: Any) -> ToolResult:
    return await runtime.tools.call(ToolCall("call_1", name, json.dumps(arguments)),
                                    owner=caller)


def value(result: ToolResult) -> Any:
    assert not result.is_error, result.content
    return json.loads(result.content)


async def test_the_builtin_tools_are_registered_with_owner_free_schemas(runtime: Runtime) -> None:
    assert {r.status for n, r in runtime.plugins.records.items() if n in NAMES} == {"ok"}
    specs = {s["function"]["name"]: s["function"] for s in runtime.tools.specs("alice")}
    assert sorted(specs) == ["recall_memories", "remember", "search_documents"]
    assert specs["search_documents"]["parameters"]["required"] == ["query"]
    assert "owner" not in json.dumps(specs)


async def test_search_documents_sees_only_the_callers_documents(runtime: Runtime) -> None:
    rag = runtime.require("retriever")
    await rag.ingest("alice", "alice.txt", "Alice grows tomatoes and basil in her garden.")
    await rag.ingest("bob", "bob.txt", "Bob's secret launch code is zebra-42 for the garden.")
    await rag.ingest("bob", "bob2.txt", "Bob keeps bees in the garden behind the house.")

    mine = value(await run(runtime, "alice", "search_documents", query="garden", k=10))
    assert [p["source"] for p in mine] == ["alice.txt"]
    assert "tomatoes" in mine[0]["text"] and mine[0]["n"] == 1
    probing = value(await run(runtime, "alice", "search_documents", query="zebra-42 launch code"))
    assert all("zebra" not in p["text"] for p in probing)
    bobs = value(await run(runtime, "bob", "search_documents", query="garden", k=10))
    assert sorted(p["source"] for p in bobs) == ["bob.txt", "bob2.txt"]
    assert len(value(await run(runtime, "bob", "search_documents", query="garden", k=1))) == 1

    forged = await run(runtime, "alice", "search_documents", query="zebra", owner="bob")
    assert forged.is_error and "owner comes from the conversation" in forged.content
    bad_scope = await run(runtime, "alice", "search_documents", query="x", scope="nope")
    assert bad_scope.is_error and "nope" in json.loads(bad_scope.content)["error"]


async def test_memories_stay_with_their_owner(runtime: Runtime) -> None:
    stored = value(await run(runtime, "bob", "remember", text="Bob is allergic to peanuts"))
    assert stored["action"] == "added"
    again = value(await run(runtime, "bob", "remember", text="bob is allergic to peanuts."))
    assert again["action"] in ("updated", "skipped") and again["memory_id"] == stored["memory_id"]
    value(await run(runtime, "alice", "remember", text="Alice prefers green tea"))

    alice = value(await run(runtime, "alice", "recall_memories", query="peanuts allergy"))
    assert [m["text"] for m in alice] == ["Alice prefers green tea"]
    bob = value(await run(runtime, "bob", "recall_memories", query="peanuts allergy"))
    assert bob[0]["text"] == "Bob is allergic to peanuts"
    assert [m.text for m in await runtime.require("memory").list_memories("carol")] == []


async def test_a_feature_that_is_off_is_an_error_the_model_reads(make_config: Any) -> None:
    config = make_config(plugins={"builtin-tools": {"enabled": True, "tools": ["search_*"]},
                                  "chroma-rag": {"enabled": False}})
    runtime = Runtime(config, [c for c in builtin_candidates() if c.name in NAMES])
    await runtime.ensure_started()
    try:
        assert [s["function"]["name"] for s in runtime.tools.specs("a")] == ["search_documents"]
        result = await run(runtime, "a", "search_documents", query="x")
        assert result.is_error
        assert json.loads(result.content)["error"] == \
            "no retriever plugin is enabled and running"
        assert (await run(runtime, "a", "remember", text="x")).is_error
    finally:
        await runtime.stop()
