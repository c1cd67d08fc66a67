"""What sharing the auth state through the database costs (plugins/token_ws_auth/state.py):
spending a WebSocket ticket and recording a failed attempt, on SQLite and on
PostgreSQL, against the per-process dictionaries they replaced (the baseline, measured
in the same run).

    python bench/auth_state.py [POSTGRES_URL]

Prints the median and p95 in milliseconds of ``spend`` (one insert) and ``fail`` (one
count over the (address, at) index and one insert), with 5,000 rows already in each
table (a brute-force run in progress), and the in-memory baseline. PostgreSQL defaults
to the local test server; it is skipped when it cannot be reached.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.db import Database
from core.migrations import upgrade_all
from plugins.token_ws_auth.state import SharedAuthState

ROUNDS = 500
FILL = 5_000
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def stats(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.95)] * 1000


async def measure(url: str) -> tuple[tuple[float, float], tuple[float, float]]:
    await asyncio.to_thread(upgrade_all, url)
    db = Database(url)
    state = SharedAuthState(db, limit=10, window=300)
    try:
        for i in range(FILL):
            await state.spend(secrets.token_urlsafe(16), time.time() + 30)
            await state.fail(f"10.0.{i % 250}.{i % 7}")
        spends, fails = [], []
        for i in range(ROUNDS):
            started = time.perf_counter()
            await state.spend(secrets.token_urlsafe(16), time.time() + 30)
            spends.append(time.perf_counter() - started)
            started = time.perf_counter()
            await state.fail(f"192.168.{i % 200}.1")
            fails.append(time.perf_counter() - started)
        return stats(spends), stats(fails)
    finally:
        await db.close()


def baseline() -> tuple[tuple[float, float], tuple[float, float]]:
    """The old in-process state: a dict of spent ids and a deque per address."""
    used: dict[str, float] = {}
    attempts: dict[str, deque[float]] = {}
    spends, fails = [], []
    for i in range(ROUNDS):
        started = time.perf_counter()
        jti = secrets.token_urlsafe(16)
        if jti not in used:
            used[jti] = time.time() + 30
        spends.append(time.perf_counter() - started)
        started = time.perf_counter()
        seen = attempts.setdefault(f"192.168.{i % 200}.1", deque())
        moment = time.monotonic()
        while seen and seen[0] <= moment - 300:
            seen.popleft()
        seen.append(moment)
        fails.append(time.perf_counter() - started)
    return stats(spends), stats(fails)


def pg_database() -> str | None:
    try:
        import psycopg

        name = f"mami_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test",
                             autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name
    except Exception:
        return None


def drop(name: str) -> None:
    import psycopg

    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test",
                         autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def run() -> None:
    rows = [("in-process (base)", *baseline())]
    with tempfile.TemporaryDirectory() as folder:
        rows.append(("SQLite", *await measure(f"sqlite:///{folder}/bench.db")))
    name = pg_database()
    if name is not None:
        try:
            rows.append(("PostgreSQL", *await measure(
                f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")))
        finally:
            drop(name)
    print(f"{ROUNDS} operations each, {FILL} rows already in each table")
    print(f"{'':<20}{'spend p50':>10}{'p95':>8}{'fail p50':>10}{'p95':>8}  (ms)")
    for label, (spend50, spend95), (fail50, fail95) in rows:
        print(f"{label:<20}{spend50:>10.3f}{spend95:>8.3f}{fail50:>10.3f}{fail95:>8.3f}")


if __name__ == "__main__":
    asyncio.run(run())
