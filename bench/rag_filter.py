"""Owner-scoped retrieval at 1k, 10k and 100k chunks: the old way, a plain ``where``
and mami's query path, plus end-to-end search and ingest throughput.

Data: 384-d vectors, 1,000 owners sharing 60% of the chunks and one owner holding 40%.
The vectors are random but clustered (2,000 random topic centres, each vector
``normalise(centre + N(0, 1/384))``, cosine ~0.7 to its centre), because real
embeddings cluster; uniformly random 384-d vectors have no near neighbours at all and
defeat any HNSW index (measured: recall@5 0.23 at Chroma's default ef_search), which
would measure the index rather than the owner filter. Recall@5 is against exact brute
force over the owner's own vectors.

(a) old way: unfiltered query for 2k results, owner filtered in Python afterwards.
(b) plain where: one shared collection, ``where={"owner": owner}``.
(c) mami: :meth:`ChromaRetriever.search_vector` (documents table + the owner's own
    collection); "end to end" adds embedding the query text (:meth:`search`).

Run: ``python bench/rag_filter.py`` (about 6 minutes on 2 idle cores, longer under
load). Prints a table and saves it to ``bench/results/rag_filter.txt``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.config import config_from_dict  # noqa: E402
from core.plugins import builtin_candidates  # noqa: E402
from core.runtime import Runtime  # noqa: E402
from plugins.chroma_rag.chunking import chunk_text  # noqa: E402
from plugins.chroma_rag.models import Document  # noqa: E402
from plugins.chroma_rag.retriever import ChromaRetriever  # noqa: E402

DIM, K, OWNERS, BIG_SHARE, CHUNKS_PER_DOC = 384, 5, 1000, 0.4, 10
QUESTIONS = [
    "What is the capital of France?", "How do I reset my password?",
    "Summarise the meeting notes from Tuesday", "Which invoices are still unpaid?",
    "When does the office open on Saturdays?", "Explain the refund policy",
    "Who owns the billing service?", "What did the doctor say about the allergy?",
]


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    picks = centres[rng.integers(0, len(centres), n)]
    vectors = picks + rng.standard_normal((n, DIM)).astype(np.float32) / np.sqrt(DIM)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(0.95 * (len(ordered) - 1))] * 1000


class Dataset:
    """One size: owners' chunk ids and vectors, in a shared collection and in mami."""

    def __init__(self, size: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.size = size
        self.vectors = clustered(rng, rng.standard_normal((2000, DIM)).astype(np.float32)
                                 / np.sqrt(DIM), size)
        big = int(size * BIG_SHARE)
        owners = ["big"] * big + [f"user{i % OWNERS:04d}" for i in range(size - big)]
        self.owners = np.array(owners)
        self.queries = clustered(rng, self.vectors[rng.integers(0, size, 200)], 200)
        counts = {o: int((self.owners == o).sum()) for o in ("user0007", "big")}
        self.row_of: dict[tuple[str, int], int] = {}
        self.picked = {"small": ("user0007", counts["user0007"]), "big": ("big", counts["big"])}

    def truth(self, owner: str, query: np.ndarray) -> set[int]:
        mine = np.flatnonzero(self.owners == owner)
        return set(mine[np.argsort(-(self.vectors[mine] @ query))[:K]].tolist())


def build_shared(client: Any, data: Dataset) -> Any:
    collection = client.create_collection(
        f"shared-{data.size}", configuration={"hnsw": {"space": "cosine"}},
        embedding_function=None)
    batch = client.get_max_batch_size()
    for i in range(0, data.size, batch):
        j = min(i + batch, data.size)
        collection.add(ids=[str(n) for n in range(i, j)], embeddings=data.vectors[i:j],
                       metadatas=[{"owner": str(o), "scope": "default"} for o in data.owners[i:j]])
    return collection


async def build_mami(rag: ChromaRetriever, data: Dataset) -> None:
    """Load the vectors the way ingest stores them (ids ``doc:i``, one collection per
    owner and scope) plus the documents rows, without embedding text."""
    rows = []
    for owner in np.unique(data.owners):
        index = np.flatnonzero(data.owners == owner)
        ids, metas = [], []
        for start in range(0, len(index), CHUNKS_PER_DOC):
            doc = f"{data.size}-{owner}-{start // CHUNKS_PER_DOC}"
            part = index[start : start + CHUNKS_PER_DOC]
            rows.append(Document(id=doc, owner_id=f"{data.size}:{owner}", scope="default",
                                 source=f"{doc}.md", sha256="-", chunks=len(part)))
            ids += [f"{doc}:{i}" for i in range(len(part))]
            metas += [{"owner": f"{data.size}:{owner}", "scope": "default", "doc": doc,
                       "source": f"{doc}.md", "chunk": i} for i in range(len(part))]
            data.row_of.update({(doc, i): int(n) for i, n in enumerate(part)})
        await asyncio.to_thread(rag.store.upsert, f"{data.size}:{owner}", "default", ids,
                                data.vectors[index], ["-"] * len(ids), metas)
    async with rag.db.session() as session:
        session.add_all(rows)
        await session.commit()


Method = Callable[[int], Awaitable[list[int] | None]]


async def measure(methods: dict[str, Method], data: Dataset, owner: str,
                  queries: int) -> dict[str, tuple[float, float, float | None]]:
    """Run every method on each query in turn (so load from other processes hits all
    of them alike); p50 and p95 in ms and mean recall@5 (None: not measured)."""
    for i in range(5):
        for run in methods.values():
            await run(i)
    times: dict[str, list[float]] = {name: [] for name in methods}
    recalls: dict[str, list[float]] = {name: [] for name in methods}
    for i in range(5, 5 + queries):
        truth = data.truth(owner, data.queries[i])
        for name, run in methods.items():
            started = time.perf_counter()
            found = await run(i)
            times[name].append(time.perf_counter() - started)
            if found is not None:
                recalls[name].append(len(set(found) & truth) / len(truth))
    return {name: (*percentiles(times[name]),
                   float(np.mean(recalls[name])) if recalls[name] else None)
            for name in methods}


async def bench_size(rag: ChromaRetriever, client: Any, data: Dataset, queries: int,
                     out: Callable[[str], None]) -> None:
    started = time.perf_counter()
    shared = await asyncio.to_thread(build_shared, client, data)
    await build_mami(rag, data)
    out(f"built {data.size:,} chunks (shared collection + mami layout) in "
        f"{time.perf_counter() - started:.0f} s")

    for label, (owner, count) in data.picked.items():
        async def old_way(i: int, owner: str = owner) -> list[int]:
            found = await asyncio.to_thread(shared.query, query_embeddings=[data.queries[i]],
                                            n_results=2 * K, include=["metadatas"])
            return [int(i) for i, m in zip(found["ids"][0], found["metadatas"][0], strict=True)
                    if m["owner"] == owner][:K]

        async def plain_where(i: int, owner: str = owner) -> list[int]:
            found = await asyncio.to_thread(shared.query, query_embeddings=[data.queries[i]],
                                            n_results=K, where={"owner": owner},
                                            include=["metadatas"])
            return [int(i) for i in found["ids"][0]]

        async def mami(i: int, owner: str = owner) -> list[int]:
            found = await rag.search_vector(f"{data.size}:{owner}", data.queries[i], K,
                                            ["default"])
            return [data.row_of[(p.document_id, p.chunk_index)] for p in found]

        async def end_to_end(i: int, owner: str = owner) -> None:
            await rag.search(f"{data.size}:{owner}", QUESTIONS[i % len(QUESTIONS)], K,
                             ["default"])

        results = await measure({"(a) old way": old_way, "(b) plain where": plain_where,
                                 "(c) mami": mami, "(c) end to end": end_to_end},
                                data, owner, queries)
        where_p95 = results["(b) plain where"][1]
        for method, (p50, p95, recall) in results.items():
            shown = f"{recall:8.2f}" if recall is not None else "       -"
            note = {"(c) mami": f"  p95 {where_p95 / p95:.1f}x lower than (b)",
                    "(c) end to end": "  (query embedding + search)"}.get(method, "")
            out(f"{data.size:>7,} {label:>5} ({count:>6,}) {method:<16} {p50:8.2f} {p95:8.2f} "
                f"{shown}{note}")


async def bench_ingest(rag: ChromaRetriever, out: Callable[[str], None]) -> None:
    """Chunks through ``ingest`` (tokenise, embed, write Chroma and SQL), at two chunk
    sizes, and the embedding alone against Chroma's own embedding function."""
    rng = np.random.default_rng(7)
    words = ["the", "a", "of", "to", "notes", "meeting", "invoice", "travel", "garden", "music",
             "river", "code", "paris", "moon", "budget", "plan", "review", "doctor", "train"]
    documents = [" ".join(rng.choice(words, 1200)) for _ in range(10)]
    await rag.ingest("warm-up", "w.md", documents[0])
    from chromadb.utils.embedding_functions import DefaultEmbeddingFunction

    chroma_default = DefaultEmbeddingFunction()
    for tokens in (16, 48):
        rag.settings.chunk_tokens, rag.settings.chunk_overlap = tokens, 4
        texts = [c.text for c in chunk_text(documents[1], rag.embedder.token_spans, tokens, 4)]
        started = time.perf_counter()
        rag.embedder.embed(texts)
        ours = len(texts) / (time.perf_counter() - started)
        chroma_default(texts[:2])  # type: ignore[operator]
        started = time.perf_counter()
        chroma_default(texts[:32])  # type: ignore[operator]
        baseline = 32 / (time.perf_counter() - started)
        started, chunks = time.perf_counter(), 0
        for n, text in enumerate(documents):
            chunks += (await rag.ingest(f"ingest-{tokens}", f"doc{n}.md", text)).chunks
        seconds = time.perf_counter() - started
        out(f"ingest, chunks of {tokens} tokens: {chunks} chunks in {seconds:.1f} s = "
            f"{chunks / seconds:.0f} chunks/s (target >= 300); embedding alone {ours:.0f}/s, "
            f"Chroma's DefaultEmbeddingFunction {baseline:.1f}/s ({ours / baseline:.0f}x)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "rag_filter.txt"))
    args = parser.parse_args()
    lines: list[str] = []

    def out(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    with tempfile.TemporaryDirectory() as tmp:
        config = config_from_dict({
            "core": {"data_dir": tmp, "auth": False, "database_url": f"sqlite:///{tmp}/b.db"},
            "plugins": {"chroma-rag": {"max_k": 50}},
        })
        runtime = Runtime(config, [c for c in builtin_candidates() if c.name == "chroma-rag"])
        await runtime.ensure_started()
        rag = runtime.require("retriever")
        out(f"rag_filter: k={K}, {args.queries} queries per row, embedded Chroma "
            f"(chromadb {__import__('chromadb').__version__}), SQLite documents table, "
            f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        await bench_ingest(rag, out)
        out(f"{'chunks':>7} {'owner':>5} {'(chunks)':>8} {'method':<16} {'p50 ms':>8} "
            f"{'p95 ms':>8} {'recall@5':>8}")
        for size in [int(s) for s in args.sizes.split(",")]:
            await bench_size(rag, rag.store.client, Dataset(size, seed=size), args.queries, out)
        await runtime.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
