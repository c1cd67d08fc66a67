"""The built-in plugins own their tables: each in its own Alembic chain, not in core's.

A database made before that (core's 0001 and 0002 as released, kept in
``legacy_schema/``) keeps every row: each enabled plugin's first revision adopts its
table as it is, a disabled plugin's table is left untouched, and ``mami db check`` is
clean. On SQLite and PostgreSQL, through the real ``mami`` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text

from core import migrations
from core.app import create_app
from core.config import config_from_dict
from core.db import sync_url
from core.plugins import builtin_candidates
from plugins.token_ws_auth.models import MIGRATIONS as TOKEN_CHAIN

ROOT = Path(__file__).resolve().parents[2]
LEGACY = Path(__file__).resolve().parent / "legacy_schema"
TOKEN = "mami_0123456789abcdef_" + "A" * 43
TOKEN_HEAD = migrations.source_head(TOKEN_CHAIN)
CORE_TABLES = {"owners", "conversations", "messages", "image_jobs", "event_receipts"}


def mami(args: list[str], cwd: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MAMI_DATA_DIR": str(cwd / "data"),
           "MAMI_DATABASE_URL": url}
    env.pop("MAMI_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=cwd, env=env,
                          text=True, capture_output=True, timeout=300)


def enabled(folder: Path, **plugins: bool) -> None:
    """plugins.toml in ``folder``: only the named built-ins, on or off (the heavy ones off)."""
    wanted = {"local-llm": False, "forge-image": False, "web-ui": False, **{
        name.replace("_", "-"): on for name, on in plugins.items()}}
    (folder / "plugins.toml").write_text("".join(
        f"[plugins.{name}]\nenabled = {'true' if on else 'false'}\n"
        for name, on in wanted.items()), encoding="utf-8")


def run(url: str, sql: str, **params: Any) -> list[Any]:
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as conn:
            result = conn.execute(text(sql), params)
            return list(result.all()) if result.returns_rows else []
    finally:
        engine.dispose()


def tables(url: str) -> set[str]:
    engine = create_engine(sync_url(url))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def legacy_database(url: str, tmp_path: Path) -> None:
    """A database as the released schema made it (core 0002, every table in core's
    chain), with rows in the built-in plugins' tables."""
    scripts = tmp_path / "legacy_alembic"
    shutil.copytree(migrations.SCRIPT_LOCATION, scripts,
                    ignore=shutil.ignore_patterns("__pycache__", "versions"))
    (scripts / "versions").mkdir()
    for path in LEGACY.glob("*.py"):
        shutil.copy(path, scripts / "versions" / path.name)
    command.upgrade(migrations.alembic_config(url, script_location=scripts), "head")
    from plugins.token_ws_auth.tokens import hash_token

    now = "2026-11-30 12:00:00+00:00"
    run(url, "INSERT INTO owners (id, created_at) VALUES ('ann', :t), ('bob', :t)", t=now)
    run(url, "INSERT INTO api_tokens (id, owner_id, token_hash, name, created_at) "
             "VALUES ('0123456789abcdef', 'ann', :h, 'laptop', :t), "
             "('fedcba9876543210', 'bob', 'x', 'old', :t)", h=hash_token(TOKEN), t=now)


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    work = tmp_path / "work"
    work.mkdir()
    yield work


def test_an_existing_database_keeps_every_row_and_the_app_works(
    database_url: str, tmp_path: Path, folder: Path, live_server: Any
) -> None:
    legacy_database(database_url, tmp_path)
    enabled(folder, token_ws_auth=True)
    up = mami(["db", "upgrade"], folder, database_url)
    assert up.returncode == 0, up.stderr
    assert f"token_ws_auth: {TOKEN_HEAD} (up to date)" in up.stdout
    assert run(database_url, "SELECT id, owner_id, name FROM api_tokens ORDER BY id") == [
        ("0123456789abcdef", "ann", "laptop"), ("fedcba9876543210", "bob", "old")]
    check = mami(["db", "check"], folder, database_url)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no drift" in check.stdout

    config = config_from_dict({
        "core": {"auth": True, "data_dir": str(tmp_path / "data"), "database_url": database_url,
                 "image_worker": False, "auto_migrate": False},
        "plugins": {"token-ws-auth": {"bootstrap_admin": False}},
    })
    candidates = [c for c in builtin_candidates() if c.name == "token-ws-auth"]
    server = live_server(create_app(config, candidates=candidates))
    with httpx.Client(base_url=server.url, timeout=30) as client:
        ok = client.get("/api/conversations", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200, ok.text
        assert client.get("/api/conversations").status_code == 401
        health = client.get("/health").json()
    assert health["plugins"]["token-ws-auth"]["status"] == "ok"


def test_a_fresh_database_gets_the_tables_from_the_plugin_chain_only(
    database_url: str, folder: Path
) -> None:
    enabled(folder, token_ws_auth=True)
    migrations.upgrade(database_url)  # core's chain alone
    assert "api_tokens" not in tables(database_url)
    assert tables(database_url) >= CORE_TABLES

    assert mami(["db", "upgrade"], folder, database_url).returncode == 0
    assert "api_tokens" in tables(database_url)
    assert mami(["db", "check"], folder, database_url).returncode == 0

    down = mami(["db", "downgrade", "token_ws_auth@base"], folder, database_url)
    assert down.returncode == 0, down.stderr
    assert "api_tokens" not in tables(database_url)
    assert tables(database_url) >= CORE_TABLES
    assert mami(["db", "upgrade"], folder, database_url).returncode == 0
    assert "api_tokens" in tables(database_url)
    assert mami(["db", "check"], folder, database_url).returncode == 0

    # Core to base takes the plugin chains down first (api_tokens points at owners).
    base = mami(["db", "downgrade", "base"], folder, database_url)
    assert base.returncode == 0, base.stderr
    assert tables(database_url) <= {"alembic_version", "alembic_version_token_ws_auth"}


def test_a_disabled_plugins_table_stays_untouched_until_it_is_enabled(
    database_url: str, tmp_path: Path, folder: Path
) -> None:
    legacy_database(database_url, tmp_path)
    enabled(folder, token_ws_auth=False)
    assert mami(["db", "upgrade"], folder, database_url).returncode == 0
    assert "alembic_version_token_ws_auth" not in tables(database_url)
    assert len(run(database_url, "SELECT id FROM api_tokens")) == 2
    check = mami(["db", "check"], folder, database_url)
    assert check.returncode == 0, check.stdout + check.stderr

    enabled(folder, token_ws_auth=True)
    assert mami(["db", "upgrade"], folder, database_url).returncode == 0
    assert run(database_url, "SELECT version_num FROM alembic_version_token_ws_auth") == [
        (TOKEN_HEAD,)]
    assert len(run(database_url, "SELECT id FROM api_tokens")) == 2
    assert mami(["db", "check"], folder, database_url).returncode == 0


def test_core_imports_no_plugin_model() -> None:
    offenders = [str(path.relative_to(ROOT)) for path in (ROOT / "core").rglob("*.py")
                 if "from plugins" in path.read_text(encoding="utf-8")
                 or "import plugins" in path.read_text(encoding="utf-8")]
    assert offenders == []
