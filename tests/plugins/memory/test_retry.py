"""A fact asked for while the vector store is unusable is not lost: the message is marked
for retry, and it is remembered once the store is back (by the background retry of a
running server, or at the next start), exactly once. The store is a real embedded Chroma
held by another process (a real one, holding its lock) and then let go."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, func, select

from core.events import MessageCompleted
from core.models import EventReceipt
from core.runtime import Runtime
from plugins.memory import extract
from tests.conftest import free_port
from tests.plugins.chroma_rag.conftest import ChromaServer
from tests.plugins.memory.conftest import ScriptedLLM, candidates, counts, store_of
from tests.plugins.memory.test_exactly_once import ask

VEGETARIAN = "Remember that I am vegetarian."


class Holder:
    """Another process holding the embedded Chroma at ``path`` (as ``mami ingest``
    would) until :meth:`release`."""

    def __init__(self, path: Path) -> None:
        code = ("import sys; from plugins.chroma_rag.store import hold_store; "
                "hold_store(sys.argv[1], 'mami ingest'); print('held', flush=True); "
                "sys.stdin.readline()")
        self.process = subprocess.Popen([sys.executable, "-c", code, str(path)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "held"

    def release(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=30)


async def pending(runtime: Runtime) -> int:
    async with runtime.db.session() as session:
        return int((await session.exec(select(func.count()).select_from(EventReceipt).where(
            col(EventReceipt.consumer) == extract.PENDING))).one())


async def until(check: Any, seconds: float = 60.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not reached in time")


async def test_a_fact_asked_for_while_chroma_is_held_is_remembered_once_it_is_free(
    make_runtime: Any, database_url: str, llm: ScriptedLLM, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(extract, "RETRY_EVERY", 0.05)
    holder = Holder(tmp_path / "chroma")
    try:
        runtime = await make_runtime(database_url=database_url, llm=llm,
                                     memory={"path": str(tmp_path / "chroma")})
        finished = await ask(runtime, VEGETARIAN, "v1")
        assert finished.status == "complete"
        assert await counts(runtime) == (0, 0, 0)
        assert await pending(runtime) == 1
        await asyncio.sleep(0.3)  # several retry passes fail while the store is held
        assert await counts(runtime) == (0, 0, 0)
        holder.release()

        async def remembered() -> bool:
            return (await counts(runtime))[0] > 0 and await pending(runtime) == 0

        await until(remembered)
        [memory] = await store_of(runtime).list_memories("alice")
        assert (memory.text, memory.seen_count) == ("I am vegetarian", 1)
        assert await counts(runtime) == (1, 1, 1)
        retrier = runtime.state[extract.STATE]
        await until(lambda: asyncio.sleep(0, retrier.task.done()))  # nothing left: it ends
        # A later delivery of the same event (a client retry) finds it handled.
        assert await runtime.fire("message_completed", event=MessageCompleted(
            "alice", "conv", finished.message_id or "", "u", VEGETARIAN, finished.text)) == []
        assert await counts(runtime) == (1, 1, 1)
    finally:
        holder.release()


async def test_a_marked_fact_is_remembered_at_the_next_start(
    make_runtime: Any, make_config: Any, database_url: str, llm: ScriptedLLM, tmp_path: Path
) -> None:
    """The process stops while the store is still held: the next start remembers it,
    once, also when started again. On AWS Lambda (serverless: nothing runs in the
    background) the start-up itself does it; a server does it in the background."""
    memory = {"path": str(tmp_path / "chroma")}
    holder = Holder(tmp_path / "chroma")
    try:
        first = await make_runtime(database_url=database_url, llm=llm, memory=memory)
        assert (await ask(first, VEGETARIAN, "v1")).status == "complete"
        assert await counts(first) == (0, 0, 0)
        await first.stop()
    finally:
        holder.release()
    lambda_like = Runtime(make_config(core={"database_url": database_url, "auth": False},
                                      plugins={"memory": memory}),
                          candidates(llm), serverless=True)
    try:
        await lambda_like.ensure_started()
        [remembered] = await store_of(lambda_like).list_memories("alice")
        assert (remembered.text, remembered.seen_count) == ("I am vegetarian", 1)
        assert await counts(lambda_like) == (1, 1, 1) and await pending(lambda_like) == 0
        assert extract.STATE not in lambda_like.state  # no background task on Lambda
    finally:
        await lambda_like.stop()
    server = await make_runtime(database_url=database_url, llm=llm, memory=memory)
    task = server.state[extract.STATE].task
    await until(lambda: asyncio.sleep(0, task.done()))  # the start-up pass ends
    assert await counts(server) == (1, 1, 1)


async def test_a_server_remembers_marked_facts_in_the_background_after_its_start(
    make_runtime: Any, database_url: str, llm: ScriptedLLM, tmp_path: Path
) -> None:
    memory = {"path": str(tmp_path / "chroma")}
    holder = Holder(tmp_path / "chroma")
    try:
        first = await make_runtime(database_url=database_url, llm=llm, memory=memory)
        assert (await ask(first, VEGETARIAN, "v1")).status == "complete"
        await first.stop()
    finally:
        holder.release()
    second = await make_runtime(database_url=database_url, llm=llm, memory=memory)

    async def remembered() -> bool:
        return await counts(second) == (1, 1, 1) and await pending(second) == 0

    await until(remembered)
    [memory_row] = await store_of(second).list_memories("alice")
    assert memory_row.seen_count == 1


async def test_two_processes_retrying_while_the_chroma_server_was_down_write_once(
    postgres_url: str, make_runtime: Any, llm: ScriptedLLM, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Chroma server is down when the fact is asked for; a second process starting
    then finds the marked message and fails too, so both retry in the background. When
    the server is up, the fact is one memory, seen once."""
    monkeypatch.setattr(extract, "RETRY_EVERY", 0.05)
    port = free_port()
    memory = {"chroma_url": f"http://127.0.0.1:{port}"}
    one = await make_runtime(database_url=postgres_url, llm=llm, memory=memory)
    assert (await ask(one, VEGETARIAN, "v1")).status == "complete"
    two = await make_runtime(database_url=postgres_url, llm=llm, memory=memory)
    assert await pending(two) == 1 and (await counts(two))[0] == 0
    for runtime in (one, two):
        assert not runtime.state[extract.STATE].task.done()
    server = await asyncio.to_thread(ChromaServer, tmp_path / "chroma", port)
    try:
        async def remembered() -> bool:
            return (await counts(one))[0] > 0 and await pending(one) == 0

        await until(remembered)
        for runtime in (one, two):
            task = runtime.state[extract.STATE].task
            await until(lambda task=task: asyncio.sleep(0, task.done()))
        [memory_row] = await store_of(two).list_memories("alice")
        assert (memory_row.text, memory_row.seen_count) == ("I am vegetarian", 1)
        assert await counts(one) == (1, 1, 1)
    finally:
        server.stop()
