"""Many owners with one document each: memory, open files and cold-owner search of the
tiered layout (small scopes in one shared collection, ranked exactly) beside the old
layout (one collection per owner and scope), embedded and with a Chroma server.

Each configuration runs in fresh processes: one loads the data, a second one (a server
after a restart: nothing cached) searches every owner once, in order, and reports the
resident memory (RSS) and open descriptors of the process that holds Chroma (the bench
process when embedded, ``chroma run`` otherwise) after 1,000, 2,000, 5,000 ... owners.
"Cold" is that first search of each owner. Search goes through
:meth:`ChromaRetriever.search_vector` (documents table + vector store); "end to end"
adds the p95 of embedding a short query with the real MiniLM model.

Vectors are precomputed (random, clustered as in bench/rag_filter.py) because embedding
10,000 documents would dominate the run and is not what is measured. Every owner has one
document of 1 to 3 chunks; one big owner has 2,000 chunks (its own collection) for the
HNSW recall. Loading writes the records in batches of the shape the store writes (the
first 200 owners go through ``VectorStore.upsert``, to time a real ingest write). The
old layout runs at ``--baseline-owners`` (default 1,000: at 10,000 it needs about 27 GB;
the issue measured 2.9 GB and 4,040 descriptors at 1,000 owners).

Run: ``python bench/many_owners.py`` (about 20 minutes on 2 loaded cores). Prints a table
and saves it to ``bench/results/many_owners.txt``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DIM, K, BIG_CHUNKS, PREFIX, REAL_WRITES = 384, 5, 2000, "bench", 200
CHECKPOINTS = (1000, 2000, 5000, 10000, 20000, 50000, 100000)


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    picks = centres[rng.integers(0, len(centres), n)]
    vectors = picks + rng.standard_normal((n, DIM)).astype(np.float32) / np.sqrt(DIM)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


class Data:
    """Owners ``o00000``..., each with one document of 1-3 chunks, plus ``big``."""

    def __init__(self, owners: int) -> None:
        rng = np.random.default_rng(7)
        centres = rng.standard_normal((2000, DIM)).astype(np.float32) / np.sqrt(DIM)
        self.owners = [f"o{i:05d}" for i in range(owners)]
        self.chunks = [1 + i % 3 for i in range(owners)]
        self.vectors = clustered(rng, centres, sum(self.chunks))
        self.starts = np.concatenate([[0], np.cumsum(self.chunks)[:-1]]).astype(int)
        self.big = clustered(rng, centres, BIG_CHUNKS)
        self.queries = clustered(rng, self.vectors[rng.integers(0, len(self.vectors), owners)],
                                 owners)
        self.big_queries = clustered(rng, self.big[rng.integers(0, BIG_CHUNKS, 50)], 50)

    def of(self, i: int) -> np.ndarray:
        return self.vectors[self.starts[i] : self.starts[i] + self.chunks[i]]


def usage(pid: int) -> tuple[float, int]:
    """(RSS in MB, open descriptors) of process ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(status.split("VmRSS:")[1].split()[0]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def records(owner: str, doc: str, n: int) -> tuple[list[str], list[dict[str, Any]]]:
    from plugins.chroma_rag.store import shared_key

    ids = [f"{doc}:{c}" for c in range(n)]
    metas = [{"owner": owner, "scope": "default", "doc": doc, "source": f"{doc}.md",
              "chunk": c, "key": shared_key(owner, "default")} for c in range(n)]
    return ids, metas


async def runtime_for(data_dir: Path, url: str) -> Any:
    from core.config import config_from_dict
    from core.plugins import builtin_candidates
    from core.runtime import Runtime

    rag: dict[str, Any] = {"collection_prefix": PREFIX}
    if url:
        rag["chroma_url"] = url
    config = config_from_dict({
        "core": {"data_dir": str(data_dir), "auth": False, "image_worker": False,
                 "database_url": f"sqlite:///{data_dir}/bench.db"},
        "plugins": {"chroma-rag": rag},
    })
    runtime = Runtime(config, [c for c in builtin_candidates() if c.name == "chroma-rag"])
    await runtime.ensure_started()
    return runtime


async def load(layout: str, owners: int, data_dir: Path, url: str) -> dict[str, Any]:
    from plugins.chroma_rag.models import Document
    from plugins.chroma_rag.store import collection_name

    data = Data(owners)
    runtime = await runtime_for(data_dir, url)
    rag = runtime.require("retriever")
    store, client = rag.store, rag.store.client
    writes: list[float] = []
    rows = [Document(id=f"d-{o}", owner_id=o, scope="default", source=f"d-{o}.md",
                     sha256="-", chunks=n) for o, n in zip(data.owners, data.chunks, strict=True)]
    rows.append(Document(id="d-big", owner_id="big", scope="default", source="d-big.md",
                         sha256="-", chunks=BIG_CHUNKS))
    async with rag.db.session() as session:
        session.add_all(rows)
        await session.commit()
    batch: tuple[list[str], list[Any], list[dict[str, Any]]] = ([], [], [])

    def flush() -> None:
        if batch[0]:
            store._shared().upsert(ids=batch[0], embeddings=np.stack(batch[1]),
                                   documents=["-"] * len(batch[0]), metadatas=batch[2])
            for part in batch:
                part.clear()

    for i, owner in enumerate(data.owners):
        ids, metas = records(owner, f"d-{owner}", data.chunks[i])
        vectors = data.of(i)
        if layout == "old":
            collection = client.get_or_create_collection(
                collection_name(PREFIX, owner, "default"),
                configuration={"hnsw": {"space": "cosine", "ef_search": 200}},
                embedding_function=None)
            started = time.perf_counter()
            collection.upsert(ids=ids, embeddings=vectors, documents=["-"] * len(ids),
                              metadatas=metas)
            writes.append(time.perf_counter() - started)
        elif i < REAL_WRITES:
            started = time.perf_counter()
            store.upsert(owner, "default", ids, vectors, ["-"] * len(ids), metas)
            writes.append(time.perf_counter() - started)
        else:
            batch[0].extend(ids)
            batch[1].extend(vectors)
            batch[2].extend(metas)
            if len(batch[0]) >= 2000:
                flush()
    flush()
    ids, metas = records("big", "d-big", BIG_CHUNKS)
    if layout == "old":
        client.get_or_create_collection(
            collection_name(PREFIX, "big", "default"),
            configuration={"hnsw": {"space": "cosine", "ef_search": 200}},
            embedding_function=None).upsert(ids=ids, embeddings=data.big,
                                            documents=["-"] * len(ids), metadatas=metas)
    else:
        store.upsert("big", "default", ids, data.big, ["-"] * len(ids), metas)
    await runtime.stop()
    return {"write_p50_ms": statistics.median(writes) * 1000}


async def search(layout: str, owners: int, data_dir: Path, url: str, server_pid: int
                 ) -> dict[str, Any]:
    data = Data(owners)
    runtime = await runtime_for(data_dir, url)
    rag = runtime.require("retriever")
    holder = server_pid or os.getpid()
    if layout == "old":  # the previous store: the owner's collection, HNSW query
        from plugins.chroma_rag.store import Hit, collection_name

        def old_query(owner: str, scopes: Any, vector: Any, k: int) -> list[Hit]:
            hits = []
            for scope, stored in scopes.items():
                found = rag.store.client.get_collection(
                    collection_name(PREFIX, owner, scope), embedding_function=None).query(
                    query_embeddings=[vector], n_results=min(k, stored),
                    include=["documents", "metadatas", "distances"])
                hits += [Hit(i, t, m, 1.0 - d) for i, t, m, d in zip(
                    found["ids"][0], found["documents"][0], found["metadatas"][0],
                    found["distances"][0], strict=True)]
            return sorted(hits, key=lambda h: h.score, reverse=True)[:k]

        rag.store.query = old_query
    base = usage(holder)
    cold: list[float] = []
    points: list[tuple[int, float, int]] = []
    hits_ok = 0
    for i, owner in enumerate(data.owners):
        started = time.perf_counter()
        found = await rag.search_vector(owner, data.queries[i], K, ["default"])
        cold.append(time.perf_counter() - started)
        truth = np.argsort(-(data.of(i) @ data.queries[i]))[:K]
        hits_ok += [p.chunk_index for p in found] == [int(t) for t in truth]
        if i + 1 in CHECKPOINTS or i + 1 == owners:
            points.append((i + 1, *usage(holder)))
    recall = []
    for query in data.big_queries:
        found = await rag.search_vector("big", query, K, ["default"])
        truth = {int(t) for t in np.argsort(-(data.big @ query))[:K]}
        recall.append(len(truth & {p.chunk_index for p in found}) / K)
    await runtime.stop()
    ordered = sorted(cold)
    return {"base": base, "points": points, "cold_p50_ms": statistics.median(ordered) * 1000,
            "cold_p95_ms": ordered[int(0.95 * (len(ordered) - 1))] * 1000,
            "small_exact": hits_ok / owners, "big_recall": statistics.mean(recall)}


def embed_p95_ms() -> float | None:
    """p95 of embedding one short query with the real MiniLM model (None without it)."""
    from plugins.chroma_rag.embeddings import get_embedder

    try:
        embedder = get_embedder("minilm", "")
        embedder.embed(["warm up"])
    except Exception:
        return None
    samples = []
    for i in range(100):
        started = time.perf_counter()
        embedder.embed([f"where did I put the invoice number {i}?"])
        samples.append(time.perf_counter() - started)
    return sorted(samples)[94] * 1000


class ChromaServer:
    def __init__(self, path: Path, port: int) -> None:
        import httpx

        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [shutil.which("chroma") or "chroma", "run", "--path", str(path), "--host",
             "127.0.0.1", "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/api/v2/heartbeat", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("chroma run did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def run_step(step: str, layout: str, owners: int, data_dir: Path, url: str, pid: int
             ) -> dict[str, Any]:
    argv = ["--step", step, "--layout", layout, "--owners", str(owners), "--dir",
            str(data_dir), "--url", url, "--pid", str(pid)]
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return dict(json.loads(done.stdout.splitlines()[-1]))


def configuration(layout: str, mode: str, owners: int, tmp: Path, port: int
                  ) -> dict[str, Any]:
    data_dir = tmp / f"{layout}-{mode}-{owners}"
    data_dir.mkdir()
    server = ChromaServer(data_dir / "server", port) if mode == "server" else None
    try:
        loaded = run_step("load", layout, owners, data_dir, server.url if server else "", 0)
        if server:  # restart: nothing cached
            server.stop()
            server = ChromaServer(data_dir / "server", port)
        found = run_step("search", layout, owners, data_dir, server.url if server else "",
                         server.process.pid if server else 0)
    finally:
        if server:
            server.stop()
    return {**loaded, **found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--owners", type=int, default=10000)
    parser.add_argument("--baseline-owners", type=int, default=1000)
    parser.add_argument("--modes", default="embedded,server")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "many_owners.txt"))
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--layout", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--pid", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step == "load":
        print(json.dumps(asyncio.run(load(args.layout, args.owners, Path(args.dir), args.url))))
        return
    if args.step == "search":
        print(json.dumps(asyncio.run(search(args.layout, args.owners, Path(args.dir), args.url,
                                            args.pid))))
        return
    from tests.conftest import free_port

    lines: list[str] = []

    def out(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    embed = embed_p95_ms()
    out(f"many_owners: chromadb {__import__('chromadb').__version__}, k={K}, one document "
        f"(1-3 chunks) per owner + one owner of {BIG_CHUNKS} chunks; load average at start "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; query embedding p95 "
        + (f"{embed:.1f} ms (MiniLM)" if embed is not None else "n/a (no model files)"))
    out(f"{'layout':<7} {'chroma':<9} {'owners':>7} {'RSS MB / descriptors after N owners':<52}"
        f" {'cold p50':>8} {'cold p95':>8} {'e2e p95':>8} {'small':>6} {'big':>6} {'write':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            for layout, owners in (("old", args.baseline_owners), ("tiered", args.owners)):
                r = configuration(layout, mode, owners, Path(tmp), free_port())
                curve = " ".join(f"{n // 1000 if n >= 1000 else n}{'k' if n >= 1000 else ''}:"
                                 f"{rss:.0f}/{fds}" for n, rss, fds in r["points"])
                e2e = r["cold_p95_ms"] + (embed or 0.0)
                out(f"{layout:<7} {mode:<9} {owners:>7} {curve:<52} {r['cold_p50_ms']:>8.1f} "
                    f"{r['cold_p95_ms']:>8.1f} {e2e:>8.1f} {r['small_exact']:>6.3f} "
                    f"{r['big_recall']:>6.3f} {r['write_p50_ms']:>7.1f}")
    out("RSS/descriptors: of the process holding Chroma (this one embedded, `chroma run` "
        "otherwise), after searching N owners; cold: first search of each owner (ms, "
        "documents table + vectors); e2e adds the query embedding; small: share of owners "
        "whose top-k equals exact ranking; big: recall@5 of the 2,000-chunk owner; write: "
        "p50 ms of one owner's upsert through the store (old: into its own collection).")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
