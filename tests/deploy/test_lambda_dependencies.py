"""The Lambda image's dependency set, proven without Docker: ``deploy/lambda/
dependencies.py check`` installs the lock for CPython 3.12 on manylinux glibc 2.34
(x86_64 and aarch64) from the package index, sizes it and runs the handler from it."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy.lambda_events import load_by_path

ROOT = Path(__file__).resolve().parents[2]
DEPENDENCIES = ROOT / "deploy" / "lambda" / "dependencies.py"


def names(lines: list[str]) -> set[str]:
    """Canonical project names of requirement lines."""
    found = (re.match(r"[A-Za-z0-9._-]+", line.strip()) for line in lines)
    return {m.group(0).lower().replace("_", "-") for m in found if m}


def test_lock_covers_requirements_in_except_what_it_leaves_out() -> None:
    deps = load_by_path(DEPENDENCIES, "deps")
    wanted = names([line for line in deps.REQUIREMENTS_IN.read_text().splitlines()
                    if line.strip() and not line.startswith("#")])
    pinned = names(deps.pins())
    assert wanted - set(deps.EXCLUDED) <= pinned
    assert not pinned & set(deps.EXCLUDED)
    assert all("==" in pin for pin in deps.pins())


def test_lambda_set_is_the_project_dependencies_minus_the_server_side() -> None:
    """What the project needs at run time reaches Lambda too, except the embedded
    server parts (full chromadb, uvicorn); a new dependency cannot be forgotten here."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = load_by_path(DEPENDENCIES, "deps")
    wanted = names(deps.REQUIREMENTS_IN.read_text().splitlines())
    assert names(project["dependencies"]) - {"chromadb", "uvicorn"} <= wanted
    assert "chromadb-client" in wanted and "chromadb" not in wanted
    assert names(project["optional-dependencies"]["lambda"]) <= wanted


def test_platform_tags_are_those_glibc_2_34_accepts() -> None:
    deps = load_by_path(DEPENDENCIES, "deps")
    x86 = deps.platform_tags("x86_64")
    assert x86[0] == "manylinux_2_34_x86_64" and "manylinux_2_35_x86_64" not in x86
    assert {"manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"} <= set(x86)
    arm = deps.platform_tags("aarch64")
    assert arm[0] == "manylinux_2_34_aarch64" and arm[-1] == "manylinux2014_aarch64"


@pytest.mark.slow
def test_lambda_dependency_set_installs_for_the_lambda_platform_and_runs_the_handler() -> None:
    done = subprocess.run([sys.executable, str(DEPENDENCIES), "check"], capture_output=True,
                          text=True, timeout=900, check=False, cwd=ROOT)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    for arch in ("x86_64", "aarch64"):
        size = re.search(rf"{arch}: \d+ pinned packages installed .*?: ([\d.]+) MB", done.stdout)
        assert size is not None and float(size.group(1)) <= 250.0
    assert "handler imported from the install" in done.stdout
    assert "{'/health': 200, '/schema/openapi.json': 200}" in done.stdout
