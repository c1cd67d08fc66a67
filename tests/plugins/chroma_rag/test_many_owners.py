"""Many owners: the tiered layout (small scopes in one shared collection, ranked exactly;
big ones in their own) keeps results exact and owners apart, and a server under a low
descriptor limit serves a thousand owners twice over (one collection per owner used to
run out of descriptors, and an index Chroma had closed answered 500 "Nothing found on
disk")."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from plugins.chroma_rag.store import (
    IsolationError,
    VectorStore,
    collection_name,
    open_client,
    shared_key,
)
from tests.conftest import free_port

HERE = Path(__file__).parent
DIM = 16


def unit(rng: np.random.Generator, n: int) -> Any:
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def put(store: VectorStore, owner: str, scope: str, doc: str, vectors: Any) -> list[str]:
    ids = [f"{doc}:{i}" for i in range(len(vectors))]
    store.upsert(owner, scope, ids, vectors, [f"{doc} chunk {i}" for i in range(len(ids))],
                 [{"doc": doc, "chunk": i, "source": doc} for i in range(len(ids))])
    return ids


def exact(ids: list[str], vectors: Any, query: Any, k: int) -> list[str]:
    return [ids[i] for i in np.argsort(-(vectors @ query), kind="stable")[:k]]


@pytest.fixture
def store(tmp_path: Path) -> VectorStore:
    path = tmp_path / "chroma"
    return VectorStore(lambda: open_client(path=path), "t", shared_max=20, path=path)


def test_small_owners_share_one_collection_and_are_ranked_exactly(store: VectorStore) -> None:
    rng = np.random.default_rng(1)
    mine, theirs = unit(rng, 12), unit(rng, 12)
    my_ids = put(store, "alice", "default", "a", mine)
    put(store, "bob", "default", "b", theirs)
    put(store, "alice", "work", "w", theirs)
    names = {c.name for c in store.client.list_collections()}
    assert names == {"t-shared"}
    for query in unit(rng, 10):
        hits = store.query("alice", {"default": 12}, query, 5)
        assert [h.id for h in hits] == exact(my_ids, mine, query, 5)  # recall 1.0
        assert {h.metadata["owner"] for h in hits} == {"alice"}
        assert hits[0].score == pytest.approx(float(max(mine @ query)), abs=1e-5)
    assert store.query("carol", {"default": 12}, mine[0], 5) == []


def test_a_scope_that_outgrows_the_shared_collection_moves_to_its_own(
        store: VectorStore) -> None:
    rng = np.random.default_rng(2)
    first, second = unit(rng, 15), unit(rng, 15)
    ids = put(store, "alice", "default", "a", first)
    put(store, "bob", "default", "b", unit(rng, 3))
    assert store.client.get_collection("t-shared").count() == 18
    ids += put(store, "alice", "default", "c", second)  # 30 > shared_max: promoted
    own = store.client.get_collection(collection_name("t", "alice", "default"))
    assert own.count() == 30
    assert store.client.get_collection("t-shared").count() == 3  # only bob's are left
    vectors = np.vstack([first, second])
    for query in unit(rng, 10):
        hits = store.query("alice", {"default": 30}, query, 5)
        assert [h.id for h in hits] == exact(ids, vectors, query, 5)
    assert {h.metadata["owner"] for h in store.query("bob", {"default": 3}, first[0], 5)} \
        == {"bob"}
    assert store.count("alice", "default") == 30
    store.delete_document("alice", "default", "c", keep=5)
    assert store.count("alice", "default") == 20
    assert store.drop("alice", "default") and store.count("alice", "default") == 0
    assert store.count("bob", "default") == 3


def legacy(store: VectorStore, owner: str, vectors: Any) -> Any:
    """A collection as the old layout made it: one per owner and scope, Chroma's default
    index persistence (every 1,000 records)."""
    collection = store.client.create_collection(
        collection_name("t", owner, "default"), configuration={"hnsw": {"space": "cosine"}},
        embedding_function=None)
    n = len(vectors)
    collection.add(ids=[f"old:{i}" for i in range(n)], embeddings=vectors, documents=["x"] * n,
                   metadatas=[{"owner": owner, "scope": "default", "doc": "old", "chunk": i,
                               "source": "old"} for i in range(n)])
    return collection


def test_a_small_collection_of_the_old_layout_moves_into_the_shared_one(
        store: VectorStore) -> None:
    rng = np.random.default_rng(3)
    vectors = unit(rng, 4)
    legacy(store, "alice", vectors)
    assert store.query("alice", {"default": 4}, vectors[2], 1)[0].id == "old:2"
    assert {c.name for c in store.client.list_collections()} == {"t-shared"}
    assert store.query("alice", {"default": 4}, vectors[2], 4)[0].id == "old:2"
    put(store, "alice", "default", "new", unit(rng, 1))
    assert store.count("alice", "default") == 5
    assert store.client.get_collection("t-shared").count() == 5


def test_a_big_collection_of_the_old_layout_stays_and_persists_its_index(
        store: VectorStore) -> None:
    rng = np.random.default_rng(5)
    vectors = unit(rng, 30)
    collection = legacy(store, "alice", vectors)
    assert store.query("alice", {"default": 30}, vectors[7], 1)[0].id == "old:7"
    again = store.client.get_collection(collection.name)
    assert again.configuration["hnsw"]["sync_threshold"] == 1 and again.count() == 30


def test_a_shared_record_tagged_for_one_owner_but_naming_another_is_refused(
        store: VectorStore) -> None:
    rng = np.random.default_rng(4)
    put(store, "alice", "default", "a", unit(rng, 2))
    store.client.get_collection("t-shared").upsert(
        ids=["forged"], embeddings=unit(rng, 1), documents=["x"],
        metadatas=[{"owner": "bob", "scope": "default", "key": shared_key("alice", "default"),
                    "doc": "f", "chunk": 0, "source": "f"}])
    with pytest.raises(IsolationError):
        store.query("alice", {"default": 3}, unit(rng, 1)[0], 5)


def nofile_server(data: Path, nofile: int, chroma_url: str = ""
                  ) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[2])}
    process = subprocess.Popen(
        [sys.executable, str(HERE / "fd_limited_server.py"), str(port), str(data), str(nofile),
         *([chroma_url] if chroma_url else [])],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(process.stderr.read().decode() if process.stderr else "")
        try:
            httpx.get(url + "/health", timeout=2)
            return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("server did not start")


def limited(nofile: int) -> Any:
    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    return set_limit


@pytest.mark.slow
@pytest.mark.parametrize("chroma", ["embedded", "server"])
def test_a_thousand_owners_searched_twice_under_256_descriptors(tmp_path: Path,
                                                                chroma: str) -> None:
    chroma_server = None
    if chroma == "server":  # `chroma run` under the same limit (it failed uploads at 1024)
        port = free_port()
        chroma_server = subprocess.Popen(
            [shutil.which("chroma") or "chroma", "run", "--path", str(tmp_path / "chroma"),
             "--host", "127.0.0.1", "--port", str(port)], preexec_fn=limited(256),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(f"http://127.0.0.1:{port}/api/v2/heartbeat", chroma_server)
    process, url = nofile_server(tmp_path / "data", 256,
                                 f"http://127.0.0.1:{port}" if chroma_server else "")
    owners = [f"owner{i:04d}" for i in range(1000)]
    try:
        with httpx.Client(base_url=url, timeout=120) as http:
            def upload(owner: str) -> int:
                return http.post("/api/documents", headers={"Authorization": f"Bearer {owner}"},
                                 json={"source": f"{owner}.md", "text":
                                       f"{owner} keeps the spare key under the blue pot."}
                                 ).status_code

            def search(owner: str) -> tuple[int, list[str]]:
                found = http.post("/api/search", headers={"Authorization": f"Bearer {owner}"},
                                  json={"query": "where is the spare key?", "k": 3})
                return found.status_code, [p["source"] for p in found.json()] \
                    if found.status_code == 200 else [found.text]

            with ThreadPoolExecutor(4) as pool:
                assert set(pool.map(upload, owners)) == {201}
                for _round in range(2):
                    results = list(pool.map(search, owners))
                    failed = [(o, r) for o, r in zip(owners, results, strict=True)
                              if r != (200, [f"{o}.md"])]
                    assert failed == []
            for holder in (process, chroma_server):
                if holder is not None:
                    assert len(os.listdir(f"/proc/{holder.pid}/fd")) < 200
    finally:
        for running in (process, chroma_server):
            if running is not None:
                running.terminate()
                running.wait(timeout=30)


def wait_for(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, "did not start"
        time.sleep(0.2)
