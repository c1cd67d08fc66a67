"""Start-up: the signing key, the first admin token, the auth-off warning, bad settings."""

from __future__ import annotations

import json
import logging
import re
import stat
from pathlib import Path

import httpx
import pytest

from core import migrations
from core.app import create_app
from core.config import config_from_dict
from core.errors import ConfigError
from plugins.token_ws_auth import keys
from tests.plugins.token_ws_auth.ws_auth_harness import ALL_SECRETS, auth_candidates, start_server


def test_key_file_is_created_0600_and_reused(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAMI_TEST_KEY", raising=False)
    path = tmp_path / "auth" / "ws-signing.key"
    key = keys.load_signing_key("MAMI_TEST_KEY", path)
    assert len(key) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.load_signing_key("MAMI_TEST_KEY", path) == key
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        keys.load_signing_key("MAMI_TEST_KEY", path)


def test_key_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMI_TEST_KEY", "short")
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        keys.load_signing_key("MAMI_TEST_KEY", tmp_path / "k")
    monkeypatch.setenv("MAMI_TEST_KEY", "z" * 40)
    assert keys.load_signing_key("MAMI_TEST_KEY", tmp_path / "k") == b"z" * 40
    assert not (tmp_path / "k").exists()


async def test_first_start_prints_an_admin_token_once(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MAMI_SIGNING_KEY")
    migrations.upgrade_all(database_url)
    server, serving = start_server(tmp_path, database_url, bootstrap_admin=True)
    serving.stop()
    out = capsys.readouterr().out
    found = re.search(r"(http://\S+)/\?token=(mami_\S+)", out)
    assert found is not None, out
    token = found.group(2)
    ALL_SECRETS.add(token)
    assert f'curl -H "Authorization: Bearer {token}"' in out
    key_file = tmp_path / "auth" / "ws-signing.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    server, serving = start_server(tmp_path, database_url, bootstrap_admin=True)
    try:
        assert "token=" not in capsys.readouterr().out
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.get("/api/tokens",
                                        headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
        assert [t["owner"] for t in response.json()["data"]] == ["admin"]
    finally:
        serving.stop()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_auth_off_warns_at_start(tmp_path: Path) -> None:
    from litestar.testing import TestClient

    # Litestar's logging set-up replaces the root handlers (and so caplog's).
    records = Records()
    logging.getLogger("mami.auth").addHandler(records)
    config = config_from_dict({"core": {"auth": False, "data_dir": str(tmp_path),
                                        "database_url": f"sqlite:///{tmp_path / 'm.db'}"}})
    try:
        with TestClient(create_app(config, candidates=auth_candidates()),
                    base_url="http://127.0.0.1") as client:
            assert client.get("/api/tokens").status_code == 200
    finally:
        logging.getLogger("mami.auth").removeHandler(records)
    assert any("authentication is OFF" in r.getMessage() for r in records.records)


def test_auth_on_without_authenticator_is_503(tmp_path: Path) -> None:
    from litestar.testing import TestClient

    config = config_from_dict({"core": {"auth": True, "data_dir": str(tmp_path),
                                        "database_url": f"sqlite:///{tmp_path / 'm.db'}"},
                               "plugins": {"token-ws-auth": {"enabled": False}}})
    with TestClient(create_app(config, candidates=auth_candidates()),
                    base_url="http://127.0.0.1") as client:
        assert client.get("/api/tokens").status_code == 404
        assert client.get("/health").status_code == 200


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("algorithm", "none", "algorithm"),
    ("algorithm", "RS256", "algorithm"),
    ("ticket_ttl", 120, "ticket_ttl"),
    ("allowed_origins", ["https://*.example.com"], "allowed_origins"),
    ("allowed_origins", ["https://good.example/"], "allowed_origins"),
    ("allowed_origins", ["good.example"], "allowed_origins"),
    ("messages_per_minute", 0, "messages_per_minute"),
    ("max_message_bytes", "big", "max_message_bytes"),
    ("no_such_setting", 1, "no_such_setting"),
])
def test_bad_settings_stop_startup(tmp_path: Path, setting: str, value: object,
                                   message: str) -> None:
    config = config_from_dict({"core": {"data_dir": str(tmp_path)},
                               "plugins": {"token-ws-auth": {setting: value}}})
    with pytest.raises(ConfigError, match=message):
        create_app(config, candidates=auth_candidates())


def test_mami_plugins_makes_no_admin_token(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`mami plugins` on a fresh install (to see a newly installed plugin) created the
    first admin token and printed it into the listing, so `mami serve` then printed no
    sign-in URL. A listing changes nothing: the first `mami serve` makes the token."""
    from core.cli import main

    config = tmp_path / "plugins.toml"
    config.write_text(f'[core]\ndata_dir = "{tmp_path}"\n'
                      f'database_url = "sqlite:///{tmp_path / "mami.db"}"\n')
    assert main(["--config", str(config), "plugins"]) == 0
    listing = capsys.readouterr()
    assert "token-ws-auth" in listing.out
    assert "admin token" not in listing.out + listing.err
    assert main(["--config", str(config), "token", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_mami_chat_makes_no_admin_token(tmp_path: Path, sample_plugins: Path) -> None:
    """`mami chat` on a fresh install created the first admin token and printed it
    above the reply (as `mami plugins` did), so the first `mami serve` printed no
    sign-in URL. One turn in the terminal is not the server's first start."""
    import os
    import subprocess
    import sys

    config = tmp_path / "plugins.toml"
    config.write_text(f'[core]\ndata_dir = "{tmp_path}"\nauth = true\n'
                      f'database_url = "sqlite:///{tmp_path / "mami.db"}"\n')
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{sample_plugins}"}
    env.pop("MAMI_CONFIG", None)

    def mami(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "core.cli", "--config", str(config),
                               *args], cwd=tmp_path, env=env, text=True, capture_output=True,
                              timeout=120)

    chat = mami("chat", "hello there")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip() == "hello there"  # the sample model echoes; nothing else
    assert "admin token" not in chat.stdout + chat.stderr
    listed = mami("token", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
