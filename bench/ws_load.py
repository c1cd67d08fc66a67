"""WebSocket chat under load, with token-ws-auth in front of it.

Two real servers (uvicorn subprocesses on loopback, SQLite, a fast stand-in model
registered as a tiny plugin): one with ``[core] auth = true``, one with auth off.
Prints:
1. 200 authenticated sessions at once on ``/ws/chat``, each sending messages and
   reading the streamed replies: messages lost (target 0) and time from sending a
   message to its first delta (p50/p95).
2. handshake cost, connect -> open on ``/ws/chat``, with a ticket against the same
   handshake with auth off, measured alternately in the same run: auth may add at most
   2 ms at p95. Twice: a ticket this server issued (its token was just seen active, no
   database trip) and a ticket signed elsewhere (the token is looked up).

Run from the repository root: ``python bench/ws_load.py [--sessions 200]``. The output
is also written to ``bench/results/ws_load.txt``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from report import pct, save, say  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from core import migrations  # noqa: E402
from core.db import Database  # noqa: E402
from core.protocols import ChatMessage, Delta, GenerationParams  # noqa: E402
from tests.conftest import free_port  # noqa: E402

ORIGIN = "https://bench.example"
DELTAS = 8
# -- the server side (runs in a subprocess) -----------------------------------------------


class FastLLM:
    """A stand-in model that answers at once with a fixed number of deltas."""

    name = "fast"
    context_window = 4096

    def count_tokens(self, text: str) -> int:
        return len(text.split()) + 1

    async def stream(self, messages: Sequence[ChatMessage],
                     params: GenerationParams) -> AsyncIterator[Delta]:
        for i in range(DELTAS):
            yield Delta(f"t{i} ")
            await asyncio.sleep(0)
        yield Delta("", finish_reason="stop")

    async def aclose(self) -> None:
        return None


def serve(data_dir: str, port: int, auth: bool) -> None:
    """Run one server until killed."""
    from types import ModuleType

    import uvicorn

    from core import hookimpl
    from core.app import create_app
    from core.config import config_from_dict
    from core.plugins import Candidate, builtin_candidates

    @hookimpl
    def register_llm_providers(register: Any, runtime: Any) -> None:
        register(FastLLM())

    fast = ModuleType("bench_fast_llm")
    fast.register_llm_providers = register_llm_providers  # type: ignore[attr-defined]
    candidates = [c for c in builtin_candidates() if c.name == "token-ws-auth"]
    candidates.append(Candidate("fast-llm", "bench", "builtin", True, lambda: fast))
    config = config_from_dict({
        "core": {"auth": auth, "data_dir": data_dir, "image_worker": False, "llm": "fast",
                 "database_url": f"sqlite:///{data_dir}/mami.db", "log_level": "WARNING"},
        "plugins": {"token-ws-auth": {"allowed_origins": [ORIGIN], "bootstrap_admin": False,
                                      "messages_per_minute": 600}},
    })
    app = create_app(config, candidates=candidates)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                ws_max_size=1 << 20)


# -- the client side ----------------------------------------------------------------------


class Server:
    def __init__(self, data_dir: Path, auth: bool) -> None:
        self.data_dir, self.auth, self.port = data_dir, auth, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}/ws/chat"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        env = {**os.environ, "MAMI_SIGNING_KEY": SIGNING_KEY}
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(self.data_dir), str(self.port),
             "1" if self.auth else "0"], env=env, cwd=ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)


SIGNING_KEY = "bench-signing-key-" + "x" * 32


async def make_tokens(data_dir: Path, count: int) -> list[str]:
    from plugins.token_ws_auth import tokens

    url = f"sqlite:///{data_dir}/mami.db"
    migrations.upgrade_all(url)
    db = Database(url)
    made = []
    for i in range(count):
        token, info = await tokens.create_token(db, f"user{i:03d}")
        COLD_OWNERS[info.id] = info.owner
        made.append(token)
    await db.close()
    return made


async def ticket(client: httpx.AsyncClient, token: str) -> str:
    response = await client.post("/api/ws-ticket", headers={"Authorization": f"Bearer {token}"})
    response.raise_for_status()
    return str(response.json()["ticket"])


async def session(server: Server, offered: list[str] | None, messages: int,
                  start: asyncio.Event) -> tuple[list[float], int]:
    """One chat session offering ``offered`` subprotocols (a ticket, or nothing when auth
    is off); returns first-delta latencies (s) and messages lost."""
    await start.wait()
    latencies: list[float] = []
    lost = 0
    async with connect(server.ws, origin=ORIGIN, subprotocols=offered,  # type: ignore[arg-type]
                       proxy=None, open_timeout=60, max_queue=None) as ws:
        conversation = None
        for n in range(messages):
            sent = time.perf_counter()
            await ws.send(json.dumps({"type": "message", "content": f"hello {n}",
                                      "conversation_id": conversation}))
            first: float | None = None
            text = ""
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if event["type"] == "start":
                    conversation = event["conversation_id"]
                elif event["type"] == "delta":
                    first = first or time.perf_counter() - sent
                    text += event["text"]
                elif event["type"] in ("end", "error"):
                    break
            complete = event["type"] == "end" and event["status"] == "complete"
            if not complete or text != "".join(f"t{i} " for i in range(DELTAS)):
                lost += 1
            elif first is not None:
                latencies.append(first)
    return latencies, lost


async def load(server: Server, tokens_: list[str | None], messages: int) -> None:
    """Open one session per entry of ``tokens_`` at once and report what was lost."""
    start = asyncio.Event()
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as client:
        tickets_ = await asyncio.gather(*(ticket(client, t) for t in tokens_ if t))
    offers: list[list[str] | None] = [["mami.v1", "mami.ticket." + t] for t in tickets_]
    offers = offers or [None] * len(tokens_)
    tasks = [asyncio.create_task(session(server, offered, messages, start))
             for offered in offers]
    await asyncio.sleep(0.2)
    began = time.perf_counter()
    start.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    took = time.perf_counter() - began
    failed = [r for r in results if isinstance(r, BaseException)]
    latencies = [x for r in results if not isinstance(r, BaseException) for x in r[0]]
    lost = sum(r[1] for r in results if not isinstance(r, BaseException))
    lost += messages * len(failed)
    kind = "authenticated" if server.auth else "unauthenticated (baseline, auth off)"
    say(f"   {len(tokens_)} {kind} sessions at once, {messages} messages each, "
        f"{DELTAS} deltas per reply")
    say(f"     sessions failed:        {len(failed)}"
        + (f" (first: {type(failed[0]).__name__}: {failed[0]})" if failed else ""))
    say(f"     messages lost:          {lost} of {len(tokens_) * messages} "
        f"(target 0: {'PASS' if lost == 0 else 'FAIL'})")
    if latencies:
        say(f"     time to first delta:    p50 {pct(latencies, .5) * 1000:.1f} ms, "
            f"p95 {pct(latencies, .95) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms "
            f"(n={len(latencies)})")
    say(f"     wall time:              {took:.2f} s")


async def handshake(url: str, offered: list[str] | None) -> float:
    began = time.perf_counter()
    async with connect(url, origin=ORIGIN, subprotocols=offered,  # type: ignore[arg-type]
                       proxy=None) as ws:
        took = time.perf_counter() - began
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await ws.recv()) == {"type": "pong"}
    return took


def cold_ticket(token: str) -> str:
    """A ticket signed here, as another process of the deployment would: the server has
    not seen its token lately, so it looks the token up in the database."""
    from plugins.token_ws_auth import tickets

    token_id = token[5:21]
    return tickets.issue(SIGNING_KEY.encode(), "HS256", COLD_OWNERS[token_id], token_id, 30)[0]


COLD_OWNERS: dict[str, str] = {}


async def handshakes(with_auth: Server, without: Server, token: str, cold: list[str],
                     rounds: int) -> None:
    """Alternate the three kinds of handshake so they share the machine's noise."""
    kinds = ("ticket", "cold", "off")
    timed: dict[str, list[float]] = {kind: [] for kind in kinds}
    async with httpx.AsyncClient(base_url=with_auth.url) as client:
        for i in range(rounds + 20):
            offered = {
                "ticket": ["mami.v1", "mami.ticket." + await ticket(client, token)],
                "cold": ["mami.v1", "mami.ticket." + cold_ticket(cold[i % len(cold)])],
                "off": None,
            }
            order = kinds[i % 3:] + kinds[:i % 3]
            for kind in order:
                url = without.ws if kind == "off" else with_auth.ws
                took = await handshake(url, offered[kind])
                if i >= 20:  # warm-up
                    timed[kind].append(took)
    off = timed["off"]
    say(f"   handshake connect -> open on /ws/chat, {rounds} each, alternating")
    say(f"     baseline, auth off:         p50 {pct(off, .5) * 1000:.2f} ms, "
        f"p95 {pct(off, .95) * 1000:.2f} ms")
    labels = {"ticket": "with auth (ticket)", "cold": "with auth, token looked up"}
    for kind, label in labels.items():
        on = timed[kind]
        added = pct(on, .95) - pct(off, .95)
        say(f"     {label + ':':<28}p50 {pct(on, .5) * 1000:.2f} ms, "
            f"p95 {pct(on, .95) * 1000:.2f} ms; added p50 "
            f"{(pct(on, .5) - pct(off, .5)) * 1000:.2f} ms, p95 {added * 1000:.2f} ms "
            f"(target <= 2 ms: {'PASS' if added <= 0.002 else 'FAIL'})")


async def main(sessions: int, messages: int, rounds: int) -> None:
    import platform

    say(f"ws_load: {time.strftime('%Y-%m-%d %H:%M:%S')} python {platform.python_version()}, "
        f"{os.cpu_count()} cpu")
    with tempfile.TemporaryDirectory() as tmp:
        on_dir, off_dir = Path(tmp, "auth"), Path(tmp, "open")
        tokens_ = await make_tokens(on_dir, sessions + 50)
        tokens_, cold = tokens_[:sessions], tokens_[sessions:]
        migrations.upgrade_all(f"sqlite:///{off_dir}/mami.db")
        with_auth, without = Server(on_dir, True).start(), Server(off_dir, False).start()
        try:
            say("1. load")
            await load(with_auth, list(tokens_), messages)
            await load(without, [None] * sessions, messages)
            say()
            say("2. handshake cost")
            await handshakes(with_auth, without, tokens_[0], cold, rounds)
        finally:
            with_auth.stop()
            without.stop()
    save("ws_load")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--messages", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--serve", nargs=3, metavar=("DATA_DIR", "PORT", "AUTH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), args.serve[2] == "1")
    else:
        asyncio.run(main(args.sessions, args.messages, args.rounds))
