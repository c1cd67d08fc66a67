"""Cold start and warm per-request cost of the Lambda handler, against a bare
Litestar + Mangum app answering the same route (``GET /health``), in one run.

Both run from the Lambda dependency set, not the dev venv: ``deploy/lambda/
requirements.txt`` installed for the Lambda platform (``deploy/lambda/dependencies.py``)
into a directory, compiled to bytecode as the image build does, and imported by a
CPython 3.12 interpreter that sees nothing else (``-S``, ``PYTHONPATH``). The installed
size is printed too (target: <= 250 MB unzipped, so a zip deployment fits).

Each cold sample is a fresh Python process (as a new Lambda execution environment):
the time to import the handler, and to answer the first request (the runtime starts
then: plugins register, the schema revision is checked). The database is migrated
beforehand, as ``mami db upgrade`` does before a deployment. Then the same process
answers ``--warm`` more requests; their median is the warm per-request cost.

Targets: cold (import + first answer) <= 1.5 s and <= 3x the bare app; warm per-request
cost of the handler <= 5 ms. Also prints which heavy modules the cold path imported.
``--venv`` measures in this interpreter's environment instead (the old way).

    python bench/cold_start.py [--runs 7] [--warm 300] [--venv]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from report import save, say  # noqa: E402

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

    migrations.upgrade_all(database)
    keep = {k: v for k, v in os.environ.items() if not k.startswith("MAMI")}
    return {**keep, "MAMI_DATABASE_URL": database, "MAMI_DATA_DIR": str(folder),
            "MAMI_FORGE_URL": f"http://127.0.0.1:{closed_port()}", "HOME": str(folder)}


def dependencies() -> ModuleType:
    """``deploy/lambda/dependencies.py`` (``lambda`` is a keyword: loaded by path)."""
    path = ROOT / "deploy" / "lambda" / "dependencies.py"
    spec = importlib.util.spec_from_file_location("lambda_dependencies", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lambda_install(folder: Path) -> tuple[list[str], dict[str, str], float, float]:
    """Install the Lambda set into ``folder``: the command that runs a child from it,
    the environment additions, and the size without and with bytecode (MB)."""
    deps = dependencies()
    python = deps.lambda_python()
    if python is None:
        raise SystemExit(f"needs python{deps.PYTHON_VERSION} (the Lambda runtime's); "
                         "or run with --venv")
    target = folder / "lambda-task-root"
    deps.install(os.uname().machine, target)
    zipped = deps.size_mb(target)
    subprocess.run([python, "-m", "compileall", "-q", str(target), str(ROOT / "core"),
                    str(ROOT / "plugins"), str(ROOT / "deploy")], check=True,
                   capture_output=True)
    return [python, "-S"], {"PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1"}, zipped, \
        deps.size_mb(target)


def sample(command: list[str], mode: str, env: dict[str, str], warm: int, cwd: Path
           ) -> dict[str, Any]:
    done = subprocess.run(
        [*command, "-c", CHILD, mode, str(ROOT), str(warm), ",".join(HEAVY)],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=300, check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def summarise(name: str, runs: list[dict[str, Any]]) -> dict[str, float]:
    stats = {key: statistics.median(r[key] for r in runs) for key in
             ("import", "first", "cold", "warm")}
    say(f"{name:<22} import {stats['import'] * 1000:7.1f} ms   first request "
          f"{stats['first'] * 1000:7.1f} ms   cold total {stats['cold'] * 1000:7.1f} ms "
          f"(min {min(r['cold'] for r in runs) * 1000:.1f})   warm/request "
          f"{stats['warm'] * 1000:6.3f} ms")
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="fresh processes per app")
    parser.add_argument("--warm", type=int, default=300, help="warm requests per process")
    parser.add_argument("--venv", action="store_true",
                        help="run in this interpreter's environment, not the Lambda set")
    args = parser.parse_args()
    sizes: tuple[float, float] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        command: list[str] = [sys.executable]
        extra: dict[str, str] = {}
        if not args.venv:
            command, extra, *measured = lambda_install(folder)
            sizes = (measured[0], measured[1])
        mami_env = {**mami_environment(folder), **extra}
        bare_env = {**{k: v for k, v in os.environ.items() if not k.startswith("MAMI")},
                    **extra}
        mami_runs, bare_runs = [], []
        for _ in range(args.runs):  # interleaved, so machine noise hits both alike
            mami_runs.append(sample(command, "mami", mami_env, args.warm, folder))
            bare_runs.append(sample(command, "bare", bare_env, args.warm, folder))
    where = ("this interpreter's environment" if args.venv else
             f"the Lambda dependency set (deploy/lambda/requirements.txt) with {command[0]}")
    say(f"cold start from {where}; median of {args.runs} fresh processes; warm: median "
        f"of {args.warm} requests; route GET /health, API Gateway HTTP API event; load "
        f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if sizes is not None:
        say(f"Lambda dependency set for {os.uname().machine}: {sizes[0]:.1f} MB installed "
            f"without bytecode (a zip), {sizes[1]:.1f} MB with it (the image)")
    mami = summarise("mami Lambda handler", mami_runs)
    bare = summarise("bare Litestar+Mangum", bare_runs)
    # Each mami process runs right before its bare twin: the ratio within a pair cancels
    # most of the load that other work puts on a shared machine.
    ratio = statistics.median(m["cold"] / b["cold"] for m, b in zip(mami_runs, bare_runs,
                                                                      strict=True))
    say(f"cold ratio: median of paired ratios {ratio:.2f}x, ratio of medians "
          f"{mami['cold'] / bare['cold']:.2f}x")
    overhead = (mami["warm"] - bare["warm"]) * 1000
    heavy = sorted({m for r in mami_runs for m in r["heavy"]})
    say(f"heavy modules imported on the cold path: {', '.join(heavy) or 'none'} "
          f"(checked: {', '.join(HEAVY)})")
    say(f"mami /health answered: {mami_runs[0]['body']}...")
    checks = [
        (f"cold total {mami['cold']:.3f} s <= 1.5 s", mami["cold"] <= 1.5),
        (f"cold total {ratio:.2f}x the bare app (paired) <= 3x", ratio <= 3.0),
        (f"warm per-request {mami['warm'] * 1000:.3f} ms <= 5 ms "
         f"(bare {bare['warm'] * 1000:.3f} ms, difference {overhead:.3f} ms)",
         mami["warm"] * 1000 <= 5.0),
        ("no chromadb, llama_cpp, onnxruntime or PIL on the cold path",
         not {"chromadb", "llama_cpp", "onnxruntime", "PIL"} & set(heavy)),
    ]
    if sizes is not None:
        checks.append((f"installed {sizes[0]:.1f} MB <= 250 MB unzipped", sizes[0] <= 250.0))
    for text, ok in checks:
        say(f"  [{'PASS' if ok else 'FAIL'}] {text}")
    if not args.venv:
        save("cold_start")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
