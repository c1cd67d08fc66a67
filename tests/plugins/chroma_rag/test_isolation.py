"""Property: whatever owners store, delete and erase, a search returns only chunks of
the caller's documents in the scopes asked for (or the shared ones), and loses none:
it returns exactly min(k, chunks the caller may read) passages. Both client modes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.runtime import Runtime
from plugins.chroma_rag import GLOBAL_OWNER

OWNERS = ["alice", "bob", "Alice", "al ice", "ålice", "bob\x1fwork", "o" * 120]
SCOPES = ["default", "work", "notes"]
WORDS = ["paris", "moon", "banana", "river", "train", "music", "tax", "garden", "code", "rain"]


@pytest.fixture
def rag_settings(rag_settings: dict[str, Any]) -> dict[str, Any]:
    # Small chunks so one document often spans several.
    return {**rag_settings, "chunk_tokens": 6, "chunk_overlap": 2}


@dataclass
class Stored:
    owner: str  # as stored: the sentinel for shared documents
    scope: str
    text: str
    chunks: int


texts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=14).map(" ".join)
ingest = st.tuples(st.just("ingest"), st.sampled_from([*OWNERS, "ops"]),
                   st.sampled_from([*SCOPES, "global"]), st.integers(0, 2), texts)
remove = st.tuples(st.just("delete"), st.sampled_from(OWNERS), st.integers(0, 20))
erase = st.tuples(st.just("erase"), st.sampled_from(OWNERS))
searches = st.lists(
    st.tuples(st.sampled_from(OWNERS), st.none() | st.sets(st.sampled_from([*SCOPES, "global"]),
                                                          min_size=1).map(sorted),
              texts, st.integers(1, 6)),
    min_size=1, max_size=4,
)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(st.one_of(ingest, ingest, remove, erase), min_size=1, max_size=8),
       queries=searches)
async def test_search_never_crosses_owners_or_scopes(
    rag_runtime: Runtime, ops: list[tuple[Any, ...]], queries: list[tuple[Any, ...]]
) -> None:
    rag = rag_runtime.require("retriever")
    namespace = uuid.uuid4().hex[:8]  # examples share the stores: keep owners apart
    await rag.erase_owner(GLOBAL_OWNER)
    docs: dict[str, Stored] = {}

    def owner_of(name: str) -> str:
        return f"{namespace}/{name}"

    for op in ops:
        if op[0] == "ingest":
            _, name, scope, source, text = op
            if scope == "global" and name != "ops":
                continue  # refused for non-writers; tested elsewhere
            owner = "ops" if name == "ops" else owner_of(name)
            info = await rag.ingest(owner, f"doc{source}.md", text, scope)
            docs[info.id] = Stored(info.owner, scope, text, info.chunks)
        elif op[0] == "delete":
            mine = sorted(i for i, d in docs.items() if d.owner == owner_of(op[1]))
            if mine:
                doc_id = mine[op[2] % len(mine)]
                assert await rag.delete_document(owner_of(op[1]), doc_id)
                del docs[doc_id]
        else:
            await rag.erase_owner(owner_of(op[1]))
            docs = {i: d for i, d in docs.items() if d.owner != owner_of(op[1])}

    for name, scopes, query, k in queries:
        owner = owner_of(name)
        readable = {
            i: d for i, d in docs.items()
            if (d.owner == owner and (scopes is None or d.scope in scopes))
            or (d.owner == GLOBAL_OWNER and (scopes is None or "global" in scopes))
        }
        found = await rag.search(owner, query, k=k, scopes=scopes)
        for passage in found:
            assert passage.document_id in readable, (owner, scopes, passage)
            stored = readable[passage.document_id]
            assert passage.scope == stored.scope and passage.text in stored.text
        assert len(found) == min(k, sum(d.chunks for d in readable.values()))
        assert [p.score for p in found] == sorted((p.score for p in found), reverse=True)
