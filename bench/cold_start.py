"""Cold start and warm per-request cost of the Lambda handler, against a bare
Litestar + Mangum app answering the same route (``GET /health``), in one run.

Each cold sample is a fresh Python process (as a new Lambda execution environment):
the time to import the handler, and to answer the first request (the runtime starts
then: plugins register, the schema revision is checked). The database is migrated
beforehand, as ``mami db upgrade`` does before a deployment. Then the same process
answers ``--warm`` more requests; their median is the warm per-request cost.

Targets: cold (import + first answer) <= 1.5 s and <= 3x the bare app; warm per-request
cost of the handler <= 5 ms. Also prints which heavy modules the cold path imported.

    python bench/cold_start.py [--runs 7] [--warm 300]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["chromadb", "llama_cpp", "onnxruntime", "PIL", "numpy", "boto3", "httpx", "alembic"]

CHILD = r"""
import json, statistics, sys, time
start = time.perf_counter()
mode, root, warm, heavy = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split(",")
sys.path.insert(0, root)
if mode == "mami":
    import importlib
    handle = importlib.import_module("deploy.lambda.handler").handler
else:
    from litestar import Litestar, get
    from mangum import Mangum

    @get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    handle = Mangum(Litestar([health]), lifespan="off")
imported = time.perf_counter()
event = {
    "version": "2.0", "routeKey": "$default", "rawPath": "/health", "rawQueryString": "",
    "headers": {"host": "bench.execute-api.eu-west-1.amazonaws.com"},
    "requestContext": {"http": {"method": "GET", "path": "/health", "protocol": "HTTP/1.1",
                                "sourceIp": "198.51.100.7", "userAgent": "bench"},
                       "domainName": "bench.execute-api.eu-west-1.amazonaws.com",
                       "stage": "$default", "requestId": "bench"},
    "isBase64Encoded": False,
}
response = handle(event, None)
first = time.perf_counter()
assert response["statusCode"] == 200, response
cold_modules = [m for m in heavy if m in sys.modules]
times = []
for _ in range(warm):
    t = time.perf_counter()
    handle(event, None)
    times.append(time.perf_counter() - t)
print(json.dumps({"import": imported - start, "first": first - imported,
                  "cold": first - start, "warm": statistics.median(times),
                  "heavy": cold_modules, "body": response["body"][:80]}))
"""


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mami_environment(folder: Path) -> dict[str, str]:
    """A Lambda-like environment: SQLite migrated ahead, Forge configured (on a port
    nothing listens on: its health probe fails fast, as a down GPU host would)."""
    database = f"sqlite:///{folder / 'mami.db'}"
    sys.path.insert(0, str(ROOT))
    from core import migrations

    migrations.upgrade(database)
    keep = {k: v for k, v in os.environ.items() if not k.startswith("MAMI")}
    return {**keep, "MAMI_DATABASE_URL": database, "MAMI_DATA_DIR": str(folder),
            "MAMI_FORGE_URL": f"http://127.0.0.1:{closed_port()}", "HOME": str(folder)}


def sample(mode: str, env: dict[str, str], warm: int, cwd: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(ROOT), str(warm), ",".join(HEAVY)],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=300, check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def summarise(name: str, runs: list[dict[str, Any]]) -> dict[str, float]:
    stats = {key: statistics.median(r[key] for r in runs) for key in
             ("import", "first", "cold", "warm")}
    print(f"{name:<22} import {stats['import'] * 1000:7.1f} ms   first request "
          f"{stats['first'] * 1000:7.1f} ms   cold total {stats['cold'] * 1000:7.1f} ms "
          f"(min {min(r['cold'] for r in runs) * 1000:.1f})   warm/request "
          f"{stats['warm'] * 1000:6.3f} ms")
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="fresh processes per app")
    parser.add_argument("--warm", type=int, default=300, help="warm requests per process")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        mami_env = mami_environment(folder)
        bare_env = {k: v for k, v in os.environ.items() if not k.startswith("MAMI")}
        mami_runs, bare_runs = [], []
        for _ in range(args.runs):  # interleaved, so machine noise hits both alike
            mami_runs.append(sample("mami", mami_env, args.warm, folder))
            bare_runs.append(sample("bare", bare_env, args.warm, folder))
    print(f"cold start, median of {args.runs} fresh processes; warm: median of {args.warm} "
          "requests; route GET /health, API Gateway HTTP API event; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    mami = summarise("mami Lambda handler", mami_runs)
    bare = summarise("bare Litestar+Mangum", bare_runs)
    # Each mami process runs right before its bare twin: the ratio within a pair cancels
    # most of the load that other work puts on a shared machine.
    ratio = statistics.median(m["cold"] / b["cold"] for m, b in zip(mami_runs, bare_runs,
                                                                      strict=True))
    print(f"cold ratio: median of paired ratios {ratio:.2f}x, ratio of medians "
          f"{mami['cold'] / bare['cold']:.2f}x")
    overhead = (mami["warm"] - bare["warm"]) * 1000
    heavy = sorted({m for r in mami_runs for m in r["heavy"]})
    print(f"heavy modules imported on the cold path: {', '.join(heavy) or 'none'} "
          f"(checked: {', '.join(HEAVY)})")
    print(f"mami /health answered: {mami_runs[0]['body']}...")
    checks = [
        (f"cold total {mami['cold']:.3f} s <= 1.5 s", mami["cold"] <= 1.5),
        (f"cold total {ratio:.2f}x the bare app (paired) <= 3x", ratio <= 3.0),
        (f"warm per-request {mami['warm'] * 1000:.3f} ms <= 5 ms "
         f"(bare {bare['warm'] * 1000:.3f} ms, difference {overhead:.3f} ms)",
         mami["warm"] * 1000 <= 5.0),
        ("no chromadb, llama_cpp, onnxruntime or PIL on the cold path",
         not {"chromadb", "llama_cpp", "onnxruntime", "PIL"} & set(heavy)),
    ]
    for text, ok in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
