"""What the core browser guard (core/security.py) costs per request: the same JSON
writes through the app with the guard and, as the baseline in this run, without it.

    python bench/browser_guard.py

Prints the median time of POST /api/conversations (small body) and of a 1 MiB chat
body (brackets, braces and digits in its text) to POST /v1/chat/completions (read and
parsed by the handler, then refused for want of a model, alike on both sides), and
json_problem alone on that body.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from litestar.testing import AsyncTestClient

import core.app
from core.app import create_app
from core.config import config_from_dict
from core.security import json_problem

ROUNDS = 200


def build(guarded: bool, data_dir: str) -> Any:
    """The app, or (the baseline) the same app built without the guard."""
    config = config_from_dict({"core": {"auth": False, "data_dir": data_dir,
                                        "image_worker": False}})
    if guarded:
        return create_app(config)
    original = core.app.guards
    core.app.guards = lambda runtime, max_body: []  # type: ignore[assignment]
    try:
        return create_app(config)
    finally:
        core.app.guards = original


async def timed(client: AsyncTestClient[Any], path: str, body: bytes) -> float:
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        await client.post(path, content=body, headers={"content-type": "application/json"})
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def run() -> None:
    small = json.dumps({"title": "hello"}).encode()
    text = "Some [markdown](link) with {braces} and 12345 numbers. " * 19_000
    big = json.dumps({"messages": [{"role": "user", "content": text}]}).encode()
    rows = []
    for guarded in (True, False):
        with tempfile.TemporaryDirectory() as data_dir:
            built = build(guarded, data_dir)
            async with AsyncTestClient(built, base_url="http://127.0.0.1") as client:
                rows.append((guarded, await timed(client, "/api/conversations", small),
                             await timed(client, "/v1/chat/completions", big)))
    started = time.perf_counter()
    for _ in range(20):
        json_problem(big)
    alone = (time.perf_counter() - started) / 20 * 1000
    print(f"{'':<18}{'small POST ms':>15}{'1 MiB POST ms':>15}")
    for guarded, small_ms, big_ms in rows:
        label = "with guard" if guarded else "without (base)"
        print(f"{label:<18}{small_ms:>15.2f}{big_ms:>15.2f}")
    print(f"json_problem alone on the 1 MiB body: {alone:.2f} ms")


if __name__ == "__main__":
    asyncio.run(run())
