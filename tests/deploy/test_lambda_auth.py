"""Token auth (token-ws-auth) through the Lambda handler, with tokens made the way an
operator makes them for a Lambda deployment: ``mami token create`` against its database."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.lambda_events import SHAPES, Invoker

ROOT = Path(__file__).resolve().parents[2]


def mami(*args: str, database_url: str, cwd: Path) -> str:
    env = {**os.environ, "MAMI_DATABASE_URL": database_url}
    done = subprocess.run([sys.executable, "-m", "core.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def seeded_database(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A migrated SQLite file holding one API token for ``alice``, made once."""
    folder = tmp_path_factory.mktemp("seed")
    url = f"sqlite:///{folder / 'seed.db'}"
    mami("db", "upgrade", database_url=url, cwd=folder)
    output = mami("token", "create", "--owner", "alice", database_url=url, cwd=folder)
    return folder / "seed.db", output.strip().splitlines()[-1]


@pytest.fixture
def token(lambda_env: Any, tmp_path: Path, seeded_database: tuple[Path, str]) -> str:
    """The function's database is a copy of the seeded one; returns alice's token."""
    seed, token = seeded_database
    shutil.copy(seed, tmp_path / "auth.db")
    lambda_env(MAMI__CORE__AUTH="true", MAMI_DATABASE_URL=f"sqlite:///{tmp_path / 'auth.db'}")
    return token


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.parametrize("shape", SHAPES)
def test_token_is_checked_through_each_event_shape(
    invoke: Invoker, token: str, shape: str
) -> None:
    listed = invoke(shape, "GET", "/api/tokens", headers=bearer(token))
    assert listed.status == 200, listed.body
    assert [t["owner"] for t in listed.json()["data"]] == ["alice"]

    missing = invoke(shape, "GET", "/api/tokens")
    assert missing.status == 401
    assert "missing credential" in missing.json()["error"]["message"]

    wrong = invoke(shape, "GET", "/api/tokens", headers=bearer(token[:-4] + "AAAA"))
    assert wrong.status == 401
    assert wrong.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("base64_body", [False, True])
def test_json_and_base64_bodies_create_a_token(
    invoke: Invoker, token: str, shape: str, base64_body: bool
) -> None:
    body = json.dumps({"name": f"laptop-{shape}", "expires_in": "30d"})
    created = invoke(shape, "POST", "/api/tokens", body=body, base64_body=base64_body,
                     headers={**bearer(token), "content-type": "application/json"})
    assert created.status == 201, created.body
    new = created.json()
    assert new["name"] == f"laptop-{shape}"
    assert new["owner"] == "alice"

    listed = invoke(shape, "GET", "/api/tokens", headers=bearer(new["token"]))
    assert listed.status == 200
    assert sorted(t["name"] for t in listed.json()["data"]) == ["", f"laptop-{shape}"]


@pytest.mark.parametrize("base64_body", [False, True])
def test_bad_body_is_a_400_and_writes_nothing(
    invoke: Invoker, token: str, base64_body: bool
) -> None:
    headers = {**bearer(token), "content-type": "application/json"}
    broken = invoke("http-api-v2", "POST", "/api/tokens", body='{"name": "x", ',
                    base64_body=base64_body, headers=headers)
    assert broken.status == 400
    assert broken.json()["error"]["message"]

    bad_duration = invoke("rest-api-v1", "POST", "/api/tokens", base64_body=base64_body,
                          body=json.dumps({"expires_in": "forever"}), headers=headers)
    assert bad_duration.status == 400
    assert "forever" in bad_duration.json()["error"]["message"]

    listed = invoke("alb", "GET", "/api/tokens", headers=bearer(token))
    assert len(listed.json()["data"]) == 1
