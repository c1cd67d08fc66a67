"""Where a chat turn's framework time goes, with a scripted in-process model (no
inference, so the model's time hides nothing): per turn, the database's thread hops
(aiosqlite's one per DBAPI call, and :meth:`core.db.Database.run`'s one per
transaction), the transactions, and the process's CPU time (``time.process_time``:
every thread of this process; the HTTP client runs in another process).

Kinds of turn, interleaved: ``new`` (a stored turn in a new conversation, as
bench/chat_overhead.py's pipeline path), ``follow`` (the next turn of one
conversation, with its history), ``tools`` (a new conversation, three tool steps) and
``http`` (``POST /v1/chat/completions``, ``stream: true``, ``X-Mami-Conversation:
new``, under uvicorn on loopback). SQLite file, memory and RAG off.

    python bench/chat_db_cost.py [--turns 30] [--tokens 16] [--profile KIND]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiosqlite  # noqa: E402
from sqlalchemy import event  # noqa: E402

from core.app import create_app, runtime_of  # noqa: E402
from core.chat import ChatRequest, start_turn  # noqa: E402
from core.config import config_from_dict  # noqa: E402
from core.db import Database  # noqa: E402
from core.protocols import Delta, Principal, ToolCallDelta  # noqa: E402
from core.tools import tool  # noqa: E402

COUNTS = {"hops": 0, "runs": 0, "transactions": 0}
CLIENT = r"""
import sys, httpx
url, tokens = sys.argv[1], int(sys.argv[2])
body = {"messages": [{"role": "user", "content": "Name three colours."}],
        "max_tokens": tokens, "model": "scripted", "stream": True}
with httpx.Client(base_url=url, timeout=60) as client:
    for _ in sys.stdin:
        with client.stream("POST", "/v1/chat/completions", json=body,
                           headers={"X-Mami-Conversation": "new"}) as response:
            assert response.status_code == 200, response.read()
            for _line in response.iter_lines():
                pass
        print("done", flush=True)
"""


def count_hops() -> None:
    execute = aiosqlite.Connection._execute
    run_in_thread = Database._run_in_thread

    async def counted(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        COUNTS["hops"] += 1
        return await execute(self, fn, *args, **kwargs)

    def counted_run(self: Any, work: Any) -> Any:
        COUNTS["runs"] += 1
        return run_in_thread(self, work)

    aiosqlite.Connection._execute = counted  # type: ignore[method-assign]
    Database._run_in_thread = counted_run  # type: ignore[method-assign]


class Scripted:
    """Streams ``tokens`` pieces; a user message ``steps:N`` first asks for N steps of
    the ``pause`` tool."""

    name = "scripted"
    context_window = 8192

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.calls = 0

    def supports(self, feature: str) -> bool:
        return feature == "tools"

    def count_tokens(self, text: str) -> int:
        return len(text) // 3 + 1

    async def stream(self, messages: Any, params: Any) -> AsyncIterator[Delta]:
        user = next(m.content for m in reversed(messages) if m.role == "user")
        wanted = int(user[6:]) if user.startswith("steps:") else 0
        done = sum(1 for m in messages if m.tool_calls)
        self.calls += 1
        if done < wanted and params.tools:
            yield Delta("", "tool_calls", tool_calls=(
                ToolCallDelta(0, f"call_{self.calls}", "pause", "{}"),))
            return
        for _ in range(self.tokens - 1):
            yield Delta(" word")
        yield Delta(" end.", "stop", 20, self.tokens)

    async def aclose(self) -> None:
        pass


async def main_async(turns: int, tokens: int, profile: str | None) -> None:
    from tests.conftest import LiveServer

    count_hops()
    tmp = Path(tempfile.mkdtemp(prefix="mami-chat-db-"))
    config = config_from_dict({"core": {"data_dir": str(tmp), "auth": False,
                                        "image_worker": False,
                                        "database_url": f"sqlite:///{tmp / 'mami.db'}"}})
    app = create_app(config, candidates=[])
    loops: list[asyncio.AbstractEventLoop] = []
    app.on_startup.append(lambda: loops.append(asyncio.get_running_loop()))
    gc.freeze()
    server = LiveServer(app).start()
    runtime = runtime_of(app)
    loop = loops[0]
    model = Scripted(tokens)
    runtime.providers["llm"][model.name] = model

    async def pause() -> str:
        """Return at once."""
        return "ok"

    runtime.tools.add(tool(pause), "bench")
    for engine in (runtime.db.engine.sync_engine, runtime.db._sync_engine):
        if engine is not None:
            event.listen(engine, "commit", lambda _c: COUNTS.__setitem__(
                "transactions", COUNTS["transactions"] + 1))
    principal = Principal("bench")
    follow_id: list[str] = []

    async def stored(content: str, conversation_id: str | None = None) -> str | None:
        turn = await start_turn(runtime, principal, ChatRequest(
            content, model=model.name, conversation_id=conversation_id))
        async for _item in turn.run():
            pass
        assert turn.finished is not None and turn.finished.status == "complete", turn.finished
        return turn.conversation_id

    async def new() -> None:
        await stored("Name three colours.")

    async def follow() -> None:
        if not follow_id:
            follow_id.append(str(await stored("Name three colours.")))
        await stored("And three more.", follow_id[0])

    async def tools() -> None:
        await stored("steps:3")

    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, server.url, str(tokens),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert client.stdin is not None and client.stdout is not None

    async def http() -> None:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(b"go\n")
        await client.stdin.drain()
        assert (await client.stdout.readline()).strip() == b"done"
        await asyncio.sleep(0.05)  # the after-completion work in the server

    kinds = {"new": new, "follow": follow, "tools": tools, "http": http}
    got: dict[str, list[tuple[int, int, int, float]]] = {k: [] for k in kinds}

    async def one(kind: str) -> tuple[int, int, int, float]:
        before = dict(COUNTS)
        cpu = time.process_time()
        if kind == "http":
            await http()
        else:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(kinds[kind](), loop))
        spent = time.process_time() - cpu
        return (COUNTS["hops"] - before["hops"], COUNTS["runs"] - before["runs"],
                COUNTS["transactions"] - before["transactions"], spent)

    for kind in kinds:  # warm-up
        for _ in range(3):
            await one(kind)
    if profile:
        profiler = cProfile.Profile()  # in the server's thread, where the turns run

        async def switch(on: bool) -> None:
            profiler.enable() if on else profiler.disable()

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(switch(True), loop))
        for _ in range(turns):
            await one(profile)
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(switch(False), loop))
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(60)
    for _ in range(turns):
        for kind in kinds:
            got[kind].append(await one(kind))
    client.stdin.close()
    await client.wait()
    server.stop()
    print(f"per turn, median of {turns} ({tokens} tokens, SQLite, scripted model)")
    print(f"{'kind':8} {'hops':>5} {'runs':>5} {'tx':>4} {'cpu ms':>7}")
    for kind, rows in got.items():
        print(f"{kind:8} {statistics.median(r[0] for r in rows):5.0f} "
              f"{statistics.median(r[1] for r in rows):5.0f} "
              f"{statistics.median(r[2] for r in rows):4.0f} "
              f"{statistics.median(r[3] for r in rows) * 1000:7.2f}")
    print("hops: aiosqlite thread hops; runs: Database.run transactions (one hop each); "
          "tx: commits; cpu: this process's CPU (the HTTP client excluded)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--profile", choices=["new", "follow", "tools", "http"])
    args = parser.parse_args()
    asyncio.run(main_async(args.turns, args.tokens, args.profile))


if __name__ == "__main__":
    main()
