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
PLUGIN_TABLES = {"api_tokens", "documents", "memories", "memory_decisions"}
CHAINS = {"token_ws_auth": TOKEN_HEAD, "chroma_rag": "chroma_rag_0001",
          "memory": "memory_0002"}
ALL_ON = {"token_ws_auth": True, "chroma_rag": True, "memory": True}
ALL_OFF = {"token_ws_auth": False, "chroma_rag": False, "memory": False}


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


def legacy_database(url: str, tmp_path: Path, revision: str = "head") -> None:
    """A database as the released schema made it (core 0002, or 0001, every table in
    core's chain), with rows in the built-in plugins' tables."""
    scripts = tmp_path / "legacy_alembic"
    shutil.copytree(migrations.SCRIPT_LOCATION, scripts,
                    ignore=shutil.ignore_patterns("__pycache__", "versions"))
    (scripts / "versions").mkdir()
    for path in LEGACY.glob("*.py"):
        shutil.copy(path, scripts / "versions" / path.name)
    command.upgrade(migrations.alembic_config(url, script_location=scripts), revision)
    from plugins.token_ws_auth.tokens import hash_token

    now = "2026-11-30 12:00:00+00:00"
    run(url, "INSERT INTO owners (id, created_at) VALUES ('ann', :t), ('bob', :t)", t=now)
    run(url, "INSERT INTO api_tokens (id, owner_id, token_hash, name, created_at) "
             "VALUES ('0123456789abcdef', 'ann', :h, 'laptop', :t), "
             "('fedcba9876543210', 'bob', 'x', 'old', :t)", h=hash_token(TOKEN), t=now)
    run(url, "INSERT INTO documents (id, owner_id, scope, source, sha256, chunks, bytes, "
             "created_at) VALUES ('d1', 'ann', 'default', 'notes.txt', :h, 3, 120, :t), "
             "('d2', 'bob', 'default', 'b.txt', :h, 1, 10, :t)", h="0" * 64, t=now)
    run(url, "INSERT INTO memories (id, owner_id, text, normalized, seen_count, created_at, "
             "updated_at, last_seen_at) VALUES ('m1', 'ann', 'Ann likes tea', "
             "'ann likes tea', 2, :t, :t, :t), ('m2', 'bob', 'Bob runs', 'bob runs', 1, :t, "
             ":t, :t)", t=now)
    run(url, "INSERT INTO memory_decisions (owner_id, memory_id, action, text, created_at) "
             "VALUES ('ann', 'm1', 'added', 'Ann likes tea', :t)", t=now)


def rows(url: str) -> dict[str, list[Any]]:
    return {
        "api_tokens": run(url, "SELECT id, owner_id, name FROM api_tokens ORDER BY id"),
        "documents": run(url, "SELECT id, owner_id, source, chunks FROM documents ORDER BY id"),
        "memories": run(url, "SELECT id, owner_id, text, seen_count FROM memories ORDER BY id"),
        "memory_decisions": run(url, "SELECT owner_id, memory_id, action FROM memory_decisions"),
    }


LEGACY_ROWS = {
    "api_tokens": [("0123456789abcdef", "ann", "laptop"), ("fedcba9876543210", "bob", "old")],
    "documents": [("d1", "ann", "notes.txt", 3), ("d2", "bob", "b.txt", 1)],
    "memories": [("m1", "ann", "Ann likes tea", 2), ("m2", "bob", "Bob runs", 1)],
    "memory_decisions": [("ann", "m1", "added")],
}


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    work = tmp_path / "work"
    work.mkdir()
    yield work


def test_an_existing_database_keeps_every_row_and_the_app_works(
    database_url: str, tmp_path: Path, folder: Path, live_server: Any
) -> None:
    legacy_database(database_url, tmp_path)
    assert rows(database_url) == LEGACY_ROWS
    enabled(folder, **ALL_ON)
    up = mami(["db", "upgrade"], folder, database_url)
    assert up.returncode == 0, up.stderr
    for branch, head in CHAINS.items():
        assert f"{branch}: {head} (up to date)" in up.stdout
    assert rows(database_url) == LEGACY_ROWS
    check = mami(["db", "check"], folder, database_url)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no drift" in check.stdout

    config = config_from_dict({
        "core": {"auth": True, "data_dir": str(tmp_path / "data"), "database_url": database_url,
                 "image_worker": False, "auto_migrate": False},
        "plugins": {"token-ws-auth": {"bootstrap_admin": False}},
    })
    names = ("token-ws-auth", "chroma-rag", "memory")
    server = live_server(create_app(config, candidates=[
        c for c in builtin_candidates() if c.name in names]))
    ann = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.get("/api/conversations").status_code == 401
        docs = client.get("/api/documents", headers=ann)
        assert docs.status_code == 200, docs.text
        assert [d["source"] for d in docs.json()] == ["notes.txt"]
        memories = client.get("/api/memories", headers=ann).json()
        assert [m["text"] for m in memories["data"]] == ["Ann likes tea"]
        history = client.get("/api/memories/m1/history", headers=ann).json()
        assert [d["action"] for d in history["data"]] == ["added"]
        assert client.delete("/api/memories/m1", headers=ann).status_code == 204
        health = client.get("/health").json()
    assert {name: health["plugins"][name]["status"] for name in names} == dict.fromkeys(
        names, "ok")
    assert run(database_url, "SELECT id FROM memories") == [("m2",)]


def test_a_database_that_never_ran_0002_gets_the_covering_index(
    database_url: str, tmp_path: Path, folder: Path
) -> None:
    legacy_database(database_url, tmp_path, "0001")
    enabled(folder, **ALL_ON)
    assert mami(["db", "upgrade"], folder, database_url).returncode == 0
    engine = create_engine(sync_url(database_url))
    try:
        indexes = {ix["name"] for ix in inspect(engine).get_indexes("documents")}
    finally:
        engine.dispose()
    assert "ix_documents_owner_scope_chunks" in indexes
    assert rows(database_url) == LEGACY_ROWS
    assert mami(["db", "check"], folder, database_url).returncode == 0


def test_a_fresh_database_gets_the_tables_from_the_plugin_chains_only(
    database_url: str, folder: Path
) -> None:
    enabled(folder, **ALL_ON)
    migrations.upgrade(database_url)  # core's chain alone
    assert tables(database_url) == CORE_TABLES | {"alembic_version"}

    assert mami(["db", "upgrade"], folder, database_url).returncode == 0
    assert tables(database_url) >= CORE_TABLES | PLUGIN_TABLES
    assert mami(["db", "check"], folder, database_url).returncode == 0

    for branch, owned in (("token_ws_auth", {"api_tokens"}), ("chroma_rag", {"documents"}),
                          ("memory", {"memories", "memory_decisions"})):
        down = mami(["db", "downgrade", f"{branch}@base", "--yes"], folder, database_url)
        assert down.returncode == 0, down.stderr
        assert not owned & tables(database_url)
        assert tables(database_url) >= CORE_TABLES | (PLUGIN_TABLES - owned)
        assert mami(["db", "upgrade"], folder, database_url).returncode == 0
        assert tables(database_url) >= owned
    assert mami(["db", "check"], folder, database_url).returncode == 0

    # Core to base takes the plugin chains down first (api_tokens points at owners).
    base = mami(["db", "downgrade", "base", "--yes"], folder, database_url)
    assert base.returncode == 0, base.stderr
    assert all(name.startswith("alembic_version") for name in tables(database_url))


def test_a_disabled_plugins_table_stays_untouched_until_it_is_enabled(
    database_url: str, tmp_path: Path, folder: Path
) -> None:
    legacy_database(database_url, tmp_path)
    enabled(folder, **ALL_OFF)
    assert mami(["db", "upgrade"], folder, database_url).returncode == 0
    assert not {f"alembic_version_{branch}" for branch in CHAINS} & tables(database_url)
    assert rows(database_url) == LEGACY_ROWS
    check = mami(["db", "check"], folder, database_url)
    assert check.returncode == 0, check.stdout + check.stderr

    enabled(folder, **ALL_ON)
    assert mami(["db", "upgrade"], folder, database_url).returncode == 0
    for branch, head in CHAINS.items():
        assert run(database_url, f"SELECT version_num FROM alembic_version_{branch}") == [
            (head,)]
    assert rows(database_url) == LEGACY_ROWS
    assert mami(["db", "check"], folder, database_url).returncode == 0


def test_core_imports_no_plugin_model() -> None:
    offenders = [str(path.relative_to(ROOT)) for path in (ROOT / "core").rglob("*.py")
                 if "from plugins" in path.read_text(encoding="utf-8")
                 or "import plugins" in path.read_text(encoding="utf-8")]
    assert offenders == []
