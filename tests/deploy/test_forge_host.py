"""deploy/forge: the health check script against the Forge stand-in (real HTTP with
Basic auth on loopback), and the documented flags and settings against the code."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugins.forge_image import Settings as ForgeSettings
from tests.conftest import free_port
from tests.forge_standin import ForgeStandIn

FORGE = Path(__file__).resolve().parents[2] / "deploy" / "forge"
AUTH = ("mami", "a-long-random-password")

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


@pytest.fixture(scope="module")
def forge() -> Iterator[ForgeStandIn]:
    server = ForgeStandIn("ok", auth=AUTH).start()
    yield server
    server.stop()


def healthcheck(url: str, auth: str | None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "FORGE_URL": url}
    if auth is not None:
        env["FORGE_API_AUTH"] = auth
    return subprocess.run(["sh", str(FORGE / "healthcheck.sh")], env=env, capture_output=True,
                          text=True, timeout=30, check=False)


def test_healthcheck_passes_with_the_right_credentials(forge: ForgeStandIn) -> None:
    done = healthcheck(forge.url, ":".join(AUTH))
    assert done.returncode == 0, done.stderr
    assert f"forge ok: {forge.url}" in done.stdout


@pytest.mark.parametrize("auth", [None, "mami:wrong"])
def test_healthcheck_fails_without_the_right_credentials(
    forge: ForgeStandIn, auth: str | None
) -> None:
    before = forge.auth_failures
    assert healthcheck(forge.url, auth).returncode != 0
    assert forge.auth_failures == before + 1


def test_healthcheck_fails_when_nothing_listens() -> None:
    assert healthcheck(f"http://127.0.0.1:{free_port()}", ":".join(AUTH)).returncode != 0


def test_unit_starts_the_api_the_way_mami_expects() -> None:
    unit = (FORGE / "forge.service").read_text()
    command = re.search(r"ExecStart=(.*?)\n(?!\s)", unit, re.S)
    assert command is not None
    flags = command.group(1).split()
    for flag in ("--api", "--nowebui", "--api-auth", "--port", "--listen"):
        assert flag in flags
    assert "EnvironmentFile=/etc/forge/forge.env" in unit


def test_documented_settings_exist() -> None:
    readme = (FORGE / "README.md").read_text()
    block = readme.split("[plugins.forge-image]", 1)[1].split("```", 1)[0]
    documented = set(re.findall(r"^#?\s*([a-z_]+)\s*=", block, re.M))
    known = {f.name for f in dataclasses.fields(ForgeSettings)}
    assert documented and documented <= known
