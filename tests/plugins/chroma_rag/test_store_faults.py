"""Faults of the embedded vector store: a deleted or read-only Chroma directory answers
503 naming the path and the fix (it gave 500s, or silently lost every write), /health
says degraded, and the store works again once the directory is repaired."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from core.app import create_app
from tests.plugins.chroma_rag.conftest import HEADER_AUTH, rag_candidates

ALICE = {"Authorization": "Bearer alice"}
PARIS = {"source": "paris.md", "text": "Paris is the capital of France."}


@pytest.fixture
async def client(make_config: Any, tmp_path: Path) -> AsyncIterator[AsyncTestClient[Any]]:
    config = make_config(core={"auth": True},
                         plugins={"chroma-rag": {"path": str(tmp_path / "chroma")}})
    app = create_app(config, candidates=rag_candidates(HEADER_AUTH))
    async with AsyncTestClient(app, base_url="http://127.0.0.1") as test_client:
        yield test_client


async def search(client: AsyncTestClient[Any]) -> Any:
    return await client.post("/api/search", headers=ALICE, json={"query": "capital of France"})


async def health(client: AsyncTestClient[Any]) -> dict[str, Any]:
    found = (await client.get("/health", headers=ALICE)).json()
    return dict(found["plugins"]["chroma-rag"])


async def test_a_deleted_directory_gives_503_then_works_once_restored(
        client: AsyncTestClient[Any], tmp_path: Path) -> None:
    store = tmp_path / "chroma"
    assert (await client.post("/api/documents", headers=ALICE, json=PARIS)).status_code == 201
    assert (await search(client)).json()[0]["source"] == "paris.md"
    assert (await health(client))["status"] == "ok"
    shutil.copytree(store, tmp_path / "backup")
    shutil.rmtree(store)
    for answer in (await search(client),
                   await client.post("/api/documents", headers=ALICE,
                                     json={**PARIS, "source": "b.md"})):
        assert answer.status_code == 503, answer.text
        message = answer.json()["error"]["message"]
        assert str(store) in message and "restore" in message
    entry = await health(client)
    assert entry["status"] == "degraded" and str(store) in entry["error"]
    shutil.copytree(tmp_path / "backup", store)
    assert (await search(client)).json()[0]["source"] == "paris.md"
    assert (await client.post("/api/documents", headers=ALICE,
                              json={**PARIS, "source": "b.md"})).status_code == 201
    assert (await health(client))["status"] == "ok"


@pytest.fixture
def immutable() -> Iterator[Any]:
    """``immutable(path, on)``: chattr +i / -i on a directory and its files (read-only
    even for root, who ignores file modes)."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    touched: list[Path] = []

    def set_flag(path: Path, on: bool) -> None:
        for item in [path, *path.rglob("*")]:
            subprocess.run(["chattr", "+i" if on else "-i", str(item)], check=True)
            touched.append(item)

    yield set_flag
    for item in touched:
        subprocess.run(["chattr", "-i", str(item)], check=False)


async def test_a_read_only_directory_gives_503_then_works_once_writable(
        client: AsyncTestClient[Any], tmp_path: Path, immutable: Any) -> None:
    store = tmp_path / "chroma"
    assert (await client.post("/api/documents", headers=ALICE, json=PARIS)).status_code == 201
    immutable(store, True)
    answer = await client.post("/api/documents", headers=ALICE, json={**PARIS, "source": "b.md"})
    assert answer.status_code == 503, answer.text
    message = answer.json()["error"]["message"]
    assert str(store) in message and "writable" in message
    assert "Traceback" not in answer.text
    assert (await health(client))["status"] == "degraded"
    immutable(store, False)
    answer = await client.post("/api/documents", headers=ALICE, json={**PARIS, "source": "b.md"})
    assert answer.status_code == 201, answer.text
    assert {p["source"] for p in (await search(client)).json()} == {"paris.md", "b.md"}
    assert (await health(client))["status"] == "ok"


async def test_doctor_names_documents_whose_vectors_are_gone(make_config: Any,
                                                             tmp_path: Path) -> None:
    from core.runtime import Runtime
    from plugins.chroma_rag import retriever_of
    from plugins.chroma_rag.store import close_client

    store = tmp_path / "chroma"
    config = make_config(plugins={"chroma-rag": {"path": str(store)}})
    runtime = Runtime(config, rag_candidates())
    await runtime.ensure_started()
    rag = retriever_of(runtime)
    await rag.ingest("alice", "paris.md", PARIS["text"])
    await rag.ingest("bob", "rome.md", "Rome is the capital of Italy.")
    checks = {c.name: c for c in await rag.doctor()}
    assert checks["document vectors"].status == "ok"
    await runtime.stop()
    close_client(path=store)
    shutil.rmtree(store)  # lost, then the server restarted on an empty store
    runtime = Runtime(config, rag_candidates())
    await runtime.ensure_started()
    try:
        check = {c.name: c for c in await retriever_of(runtime).doctor()}["document vectors"]
        assert check.status == "fail"
        assert "2 of 2 documents" in check.detail and "alice/paris.md" in check.detail
        assert "mami ingest" in check.fix
    finally:
        await runtime.stop()


def chroma_run(path: Path, port: int) -> subprocess.Popen[bytes]:
    import time

    import httpx

    process = subprocess.Popen(
        [shutil.which("chroma") or "chroma", "run", "--path", str(path), "--host", "127.0.0.1",
         "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1).is_success:
                return process
        except httpx.HTTPError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, "chroma did not start"
        time.sleep(0.2)


def test_a_chroma_server_that_stops_gives_503_then_works_once_back(tmp_path: Path) -> None:
    from plugins.chroma_rag.store import StoreUnavailable, VectorStore, open_client
    from tests.conftest import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = chroma_run(tmp_path / "server", port)
    store = VectorStore(lambda: open_client(url), "faults", url=url)
    vector = [1.0] + [0.0] * 7
    try:
        store.upsert("alice", "default", ["d:0"], [vector], ["x"],
                     [{"doc": "d", "chunk": 0, "source": "d.md"}])
        assert [h.id for h in store.query("alice", {"default": 1}, vector, 1)] == ["d:0"]
        server.terminate()
        server.wait(timeout=30)
        with pytest.raises(StoreUnavailable) as raised:
            store.query("alice", {"default": 1}, vector, 1)
        assert url in raised.value.message and "chroma run" in raised.value.message
        assert raised.value.status_code == 503
        assert store.health()["status"] == "degraded"
        server = chroma_run(tmp_path / "server", port)
        assert store.health() == {"status": "ok"}
        assert [h.id for h in store.query("alice", {"default": 1}, vector, 1)] == ["d:0"]
    finally:
        server.terminate()
        server.wait(timeout=30)


HOLDER = """
import sys, time
from plugins.chroma_rag.store import hold_store
hold_store(sys.argv[1], "mami serve at http://127.0.0.1:9")
print("held", flush=True)
sys.stdin.read()
"""


async def test_a_store_another_process_holds_is_degraded_then_taken_over(
        make_config: Any, tmp_path: Path) -> None:
    """A second `mami serve` (or a `mami doctor`) on the data directory of a running one:
    /health said ok while every call was a 503, and doctor failed the store with the
    fix "start the Chroma server". Now /health names the holder until it stops, then
    this process takes the store over; doctor warns instead of failing."""
    import os
    import sys

    from core.app import runtime_of
    from plugins.chroma_rag import retriever_of

    store = tmp_path / "chroma"
    store.mkdir()
    root = Path(__file__).resolve().parents[3]
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(store)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(root)})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        config = make_config(core={"auth": True},
                             plugins={"chroma-rag": {"path": str(store)}})
        app = create_app(config, candidates=rag_candidates(HEADER_AUTH))
        runtime_of(app).state["public_url"] = "http://127.0.0.1:8000"  # as `mami serve` sets
        async with AsyncTestClient(app, base_url="http://127.0.0.1") as client:
            entry = await health(client)
            assert entry["status"] == "degraded", entry
            assert "in use by mami serve at http://127.0.0.1:9" in str(entry), entry
            refused = await client.post("/api/documents", headers=ALICE, json=PARIS)
            assert refused.status_code == 503 and "nothing was written" in refused.text
            checks = {c.name: c for c in await retriever_of(runtime_of(app)).doctor()}
            assert checks["retrieval store"].status == "warn", checks["retrieval store"]
            assert "in use by mami serve at http://127.0.0.1:9" in checks["retrieval store"].detail
            holder.communicate(b"", timeout=30)  # the other process stops
            assert (await health(client))["status"] == "ok"
            assert (await client.post("/api/documents", headers=ALICE,
                                      json=PARIS)).status_code == 201
            assert (await search(client)).json()[0]["source"] == "paris.md"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=30)


def test_a_held_store_gives_advice_that_fits_the_operation(
        make_config: Any, live_server: Any, tmp_path: Path) -> None:
    """The refusal of a store another process holds always said "Send the documents
    through that server", also to a search and to `mami db repair`. Each operation now
    says what was not done and what to do instead."""
    import os
    import sys

    import httpx

    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("MAMI_CONFIG", None)
    data, database = tmp_path / "data", f"sqlite:///{tmp_path / 'data' / 'mami.db'}"
    toml = tmp_path / "plugins.toml"
    toml.write_text(f'[core]\ndata_dir = "{data}"\ndatabase_url = "{database}"\nauth = false\n'
                    "[plugins.local-llm]\nenabled = false\n"
                    "[plugins.forge-image]\nenabled = false\n")
    (tmp_path / "paris.md").write_text("Paris is the capital of France.")

    def mami(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "core.cli", "--config", str(toml), *args],
                              cwd=tmp_path, env=env, text=True, capture_output=True,
                              timeout=300)

    ingested = mami("ingest", str(tmp_path / "paris.md"), "--owner", "local")
    assert ingested.returncode == 0, ingested.stderr
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data / "chroma")], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        repair = mami("db", "repair")
        assert repair.returncode == 1
        assert "nothing was repaired. Stop it, then run `mami db repair` again" in repair.stderr
        assert "Send the documents" not in repair.stderr

        config = make_config(core={"database_url": database},
                             plugins={"chroma-rag": {"path": str(data / "chroma")}})
        server = live_server(create_app(config, candidates=rag_candidates()))
        (document,) = httpx.get(f"{server.url}/api/documents").json()
        answers = {
            "nothing was searched. Search through that server instead (POST "
            "http://127.0.0.1:9/api/search": httpx.post(f"{server.url}/api/search",
                                                       json={"query": "capital"}),
            "nothing was deleted. Delete through that server instead":
                httpx.delete(f"{server.url}/api/documents/{document['id']}"),
            "nothing was written. Send the documents through that server instead (POST "
            "http://127.0.0.1:9/api/documents": httpx.post(f"{server.url}/api/documents",
                                                          json=PARIS),
        }
        for advice, answer in answers.items():
            assert answer.status_code == 503, answer.text
            message = answer.json()["error"]["message"]
            assert "in use by mami serve at http://127.0.0.1:9" in message
            assert advice in message, message
        assert [d["id"] for d in httpx.get(f"{server.url}/api/documents").json()] == [
            document["id"]]
    finally:
        holder.communicate(b"", timeout=30)
