"""The Lambda function's dependency set, proven without Docker.

``lock`` resolves ``requirements.in`` for the Lambda platform (CPython 3.12 on Amazon
Linux 2023, glibc 2.34, x86_64 and arm64: wheels only, since the image has no
compilers) and writes ``requirements.txt``: exact pins of every package reachable from
``requirements.in`` without passing through :data:`EXCLUDED`.

``check`` installs ``requirements.txt`` for each architecture into a directory, as the
Dockerfile does (``pip install --no-deps --only-binary=:all: --target``, one
``--platform`` per manylinux tag glibc 2.34 accepts), fails if any pin has no wheel
there, prints the installed size against the 250 MB zip limit, and (with a Python 3.12
interpreter on this machine) imports the handler from that directory alone and serves
``GET /health`` and the OpenAPI schema, plus imports every module the function loads
lazily. Exit status 0 only when all of it passed.

    python deploy/lambda/dependencies.py lock
    python deploy/lambda/dependencies.py check [--arch x86_64 --arch aarch64] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REQUIREMENTS_IN = HERE / "requirements.in"
LOCK = HERE / "requirements.txt"

PYTHON_VERSION = "3.12"  # public.ecr.aws/lambda/python:3.12 and the python3.12 runtime
GLIBC_MINOR = 34  # Amazon Linux 2023
ARCHES = ("x86_64", "aarch64")
ZIP_LIMIT_MB = 250.0

# Declared dependencies that the function never imports, and why; with them goes
# everything only they need.
EXCLUDED: dict[str, str] = {
    "boto3": "provided by the Lambda Python runtime (base image and zip)",
    "polyfactory": "Litestar's OpenAPI example generation, off in mami",
    "huggingface-hub": "tokenizers' model download; the model is baked into the image",
    "click": "Litestar's command line",
    "rich": "Litestar's command line",
    "rich-click": "Litestar's command line",
}

# Imported on demand by the function (plugins, migrations, secrets): each must load
# from the installed set alone.
LAZY_IMPORTS = (
    "chromadb", "chromadb.api.fastapi", "chromadb.utils.embedding_functions",
    "onnxruntime", "tokenizers", "numpy", "psycopg", "PIL.Image", "alembic.command",
    "aiosqlite", "stamina", "httpx",
)

SMOKE = r"""
import importlib, json, sys
handler = importlib.import_module("deploy.lambda.handler")
def event(path):
    return {"version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
            "headers": {"host": "check.execute-api.eu-west-1.amazonaws.com"},
            "requestContext": {"http": {"method": "GET", "path": path, "protocol": "HTTP/1.1",
                                        "sourceIp": "198.51.100.7", "userAgent": "check"},
                               "domainName": "check.execute-api.eu-west-1.amazonaws.com",
                               "stage": "$default", "requestId": "check"},
            "isBase64Encoded": False}
statuses = {p: handler.handler(event(p), None)["statusCode"]
            for p in ("/health", "/schema/openapi.json")}
for name in sys.argv[1].split(","):
    importlib.import_module(name)
import psycopg
print(json.dumps({"statuses": statuses, "libpq": psycopg.pq.version(),
                  "outside": sorted({m.__file__.split("/site-packages/")[0]
                                     for m in list(sys.modules.values())
                                     if "site-packages" in (getattr(m, "__file__", "") or "")})}))
"""


def platform_tags(arch: str) -> list[str]:
    """Every manylinux tag a glibc 2.34 system accepts for ``arch``, newest first."""
    first = 5 if arch == "x86_64" else 17
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(GLIBC_MINOR, first - 1, -1)]
    tags.append(f"manylinux2014_{arch}")
    if arch == "x86_64":
        tags += [f"manylinux2010_{arch}", f"manylinux1_{arch}"]
    return tags


def pip_platform_args(arch: str) -> list[str]:
    args = ["--python-version", PYTHON_VERSION, "--implementation", "cp",
            "--abi", "cp" + PYTHON_VERSION.replace(".", ""), "--only-binary=:all:"]
    for tag in platform_tags(arch):
        args += ["--platform", tag]
    return args


def _pip(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check"],
                          capture_output=True, text=True, check=False)


def resolve(arch: str, workdir: Path) -> list[dict[str, Any]]:
    """pip's installation report for ``requirements.in`` on ``arch``."""
    report = workdir / f"report-{arch}.json"
    done = _pip(["install", "--dry-run", "--ignore-installed", "--quiet", "--report",
                 str(report), "--target", str(workdir / "unused"), *pip_platform_args(arch),
                 "-r", str(REQUIREMENTS_IN)])
    if done.returncode != 0:
        raise SystemExit(f"resolving {REQUIREMENTS_IN.name} for {arch} failed:\n{done.stderr}")
    return json.loads(report.read_text())["install"]  # type: ignore[no-any-return]


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def reachable(install: list[dict[str, Any]], arch: str) -> dict[str, str]:
    """``{name: version}`` of the packages reachable from the requested ones without
    passing through :data:`EXCLUDED` (markers evaluated for Linux, ``arch``, 3.12)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip always carries it
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[assignment]

    meta = {canonical(i["metadata"]["name"]): i for i in install}
    env = {"python_version": PYTHON_VERSION, "python_full_version": PYTHON_VERSION + ".0",
           "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
           "platform_machine": arch, "implementation_name": "cpython",
           "platform_python_implementation": "CPython"}
    todo = [(canonical(i["metadata"]["name"]), frozenset(i.get("requested_extras") or ()))
            for i in install if i.get("requested")]
    seen: set[tuple[str, frozenset[str]]] = set()
    kept: dict[str, str] = {}
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen or name in EXCLUDED or name not in meta:
            continue
        seen.add((name, extras))
        kept[name] = meta[name]["metadata"]["version"]
        for line in meta[name]["metadata"].get("requires_dist") or ():
            requirement = Requirement(line)
            wanted = requirement.marker is None or any(
                requirement.marker.evaluate({**env, "extra": extra})
                for extra in ("", *extras))
            if wanted:
                todo.append((canonical(requirement.name), frozenset(requirement.extras)))
    return kept


def lock() -> int:
    """Write requirements.txt; both architectures must resolve to the same pins."""
    with tempfile.TemporaryDirectory() as tmp:
        pins = {arch: reachable(resolve(arch, Path(tmp)), arch) for arch in ARCHES}
    if len({tuple(sorted(p.items())) for p in pins.values()}) != 1:
        raise SystemExit(f"x86_64 and aarch64 resolve differently: {pins}")
    lines = [
        "# The Lambda function's dependencies, pinned: generated from requirements.in by",
        "# `python deploy/lambda/dependencies.py lock` for CPython "
        f"{PYTHON_VERSION}, manylinux glibc 2.{GLIBC_MINOR},",
        "# x86_64 and aarch64. Install with --no-deps (the Dockerfile does). Left out:",
        *(f"#   {name}: {why}" for name, why in EXCLUDED.items()),
        *(f"{name}=={version}" for name, version in sorted(pins["x86_64"].items())),
    ]
    LOCK.write_text("\n".join(lines) + "\n")
    print(f"wrote {LOCK.relative_to(ROOT)}: {len(pins['x86_64'])} packages")
    return 0


def pins() -> list[str]:
    """The lock's ``name==version`` lines."""
    return [line for line in LOCK.read_text().splitlines() if line and not line.startswith("#")]


def install(arch: str, target: Path, compile_pyc: bool = False) -> None:
    """Install the lock for ``arch`` into ``target`` as the Dockerfile does."""
    args = ["install", "--no-deps", "--quiet", "--target", str(target),
            *pip_platform_args(arch), "-r", str(LOCK)]
    done = _pip(args if compile_pyc else [*args, "--no-compile"])
    if done.returncode != 0:
        raise SystemExit(f"installing {LOCK.name} for {arch} failed:\n{done.stderr}")


def size_mb(folder: Path) -> float:
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
    return total / 1e6


VERSION_PROBE = "import sys; print('%d.%d' % sys.version_info[:2])"


def lambda_python() -> str | None:
    """A working CPython 3.12 interpreter on this machine (PATH, then pyenv), or ``None``."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [shutil.which(f"python{PYTHON_VERSION}"),
                  *map(str, sorted(pyenv.glob(f"{PYTHON_VERSION}.*/bin/python{PYTHON_VERSION}")))]
    for candidate in filter(None, candidates):
        done = subprocess.run([candidate, "-c", VERSION_PROBE], capture_output=True,
                              text=True, check=False)
        if done.returncode == 0 and done.stdout.strip() == PYTHON_VERSION:
            return candidate
    return None


def isolated_env(target: Path, workdir: Path) -> dict[str, str]:
    """An environment where Python sees only ``target`` and the repository's code, as
    the Lambda task root; SQLite in ``workdir`` (upgraded on first use)."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("MAMI", "PYTHON", "VIRTUAL_ENV"))}
    return {**keep, "PYTHONPATH": f"{ROOT}{os.pathsep}{target}", "PYTHONNOUSERSITE": "1",
            "MAMI_DATABASE_URL": f"sqlite:///{workdir / 'check.db'}",
            "MAMI_DATA_DIR": str(workdir / "data"), "HOME": str(workdir)}


def smoke_test(python: str, target: Path, workdir: Path) -> dict[str, Any]:
    """Import the handler from ``target`` alone and answer two requests with it."""
    done = subprocess.run([python, "-S", "-c", SMOKE, ",".join(LAZY_IMPORTS)],
                          env=isolated_env(target, workdir), cwd=workdir,
                          capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the handler does not run from {target}:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def check(arches: Iterable[str], keep: Path | None) -> int:
    python = lambda_python()
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        base = keep or Path(tmp)
        for arch in arches:
            target = base / f"lambda-{arch}"
            shutil.rmtree(target, ignore_errors=True)
            install(arch, target)
            size = size_mb(target)
            ok = size <= ZIP_LIMIT_MB
            print(f"{arch}: {len(pins())} pinned packages installed for CPython "
                  f"{PYTHON_VERSION} manylinux glibc 2.{GLIBC_MINOR}: {size:.1f} MB without "
                  f"bytecode (limit {ZIP_LIMIT_MB:.0f} MB unzipped): {'PASS' if ok else 'FAIL'}")
            if not ok:
                failures.append(f"{arch} size")
            if arch != os.uname().machine:
                continue
            if python is None:
                print(f"{arch}: no python{PYTHON_VERSION} here: cannot import the handler")
                failures.append("no interpreter")
                continue
            result = smoke_test(python, target, Path(tmp))
            leaked = [p for p in result["outside"] if not p.startswith(str(target))]
            ok = result["statuses"] == {"/health": 200, "/schema/openapi.json": 200}
            print(f"{arch}: handler imported from the install with {python}: "
                  f"{result['statuses']}, libpq {result['libpq']}, lazy imports "
                  f"{', '.join(LAZY_IMPORTS)}: {'PASS' if ok and not leaked else 'FAIL'}")
            if leaked:
                print(f"  modules loaded from outside the install: {leaked}")
            if not ok or leaked:
                failures.append(f"{arch} import")
    print("FAILED: " + ", ".join(failures) if failures else "all checks passed")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("lock", help="resolve requirements.in into requirements.txt")
    checker = sub.add_parser("check", help="install the lock for Lambda and try it")
    checker.add_argument("--arch", action="append", choices=ARCHES)
    checker.add_argument("--keep", type=Path, help="install here and keep it")
    args = parser.parse_args(argv)
    if args.command == "lock":
        return lock()
    return check(args.arch or ARCHES, args.keep)


if __name__ == "__main__":
    sys.exit(main())
