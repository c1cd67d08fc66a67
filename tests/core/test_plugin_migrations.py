"""A third-party plugin that owns a table (tests/notes_plugin, pip-installed): its own
Alembic chain, upgraded, downgraded and checked by `mami db`, left alone while the plugin
is disabled, on SQLite and PostgreSQL, keeping every row."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect, text

from core import migrations
from core.chat import ChatRequest, Finished, start_turn
from core.db import sync_url
from core.plugins import entrypoint_candidates
from core.protocols import Principal
from core.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]


def mami(args: list[str], cwd: Path, site: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{site}",
           "MAMI_DATA_DIR": str(cwd / "data"), "MAMI_DATABASE_URL": url}
    env.pop("MAMI_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=cwd, env=env,
                          text=True, capture_output=True, timeout=180)


def query(url: str, sql: str) -> list[Any]:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)).all())
    finally:
        engine.dispose()


def columns(url: str, table: str) -> set[str]:
    engine = create_engine(sync_url(url))
    try:
        return {c["name"] for c in inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def enable(folder: Path, enabled: bool) -> None:
    (folder / "plugins.toml").write_text(
        f"[plugins.notes]\nenabled = {'true' if enabled else 'false'}\n", encoding="utf-8")


async def say(runtime: Runtime, content: str) -> str:
    turn = await start_turn(runtime, Principal("ann"), ChatRequest(content))
    items = [item async for item in turn.run()]
    assert isinstance(items[-1], Finished)
    return items[-1].text


def test_a_plugins_own_table_through_upgrade_downgrade_check_and_disable(
    database_url: str, tmp_path: Path, notes: Path, make_config: Any, sample_plugins: Path
) -> None:
    import asyncio

    enable(tmp_path, True)
    up = mami(["db", "upgrade"], tmp_path, notes, database_url)
    assert up.returncode == 0, up.stderr
    assert "notes: n2 (up to date)" in up.stdout
    assert query(database_url, "SELECT version_num FROM alembic_version_notes") == [("n2",)]
    assert "pinned" in columns(database_url, "notes")
    check = mami(["db", "check"], tmp_path, notes, database_url)
    assert check.returncode == 0 and "no drift" in check.stdout and "notes" in check.stdout

    async def use() -> tuple[str, str]:
        runtime = Runtime(make_config(core={"database_url": database_url, "auto_migrate": False}),
                          [c for c in entrypoint_candidates() if c.name in ("notes", "sample")])
        await runtime.ensure_started()
        try:
            return await say(runtime, "/note buy milk"), await say(runtime, "/notes")
        finally:
            await runtime.stop()

    assert asyncio.run(use()) == ("noted: buy milk", "buy milk")

    down = mami(["db", "downgrade", "notes@n1", "--yes"], tmp_path, notes, database_url)
    assert down.returncode == 0, down.stderr
    assert "notes: n1 (behind (head is n2))" in down.stdout
    assert "pinned" not in columns(database_url, "notes")
    assert query(database_url, "SELECT owner_id, text FROM notes") == [("ann", "buy milk")]
    behind = mami(["db", "check"], tmp_path, notes, database_url)
    assert behind.returncode == 1
    assert "branch notes is at n1, head is n2: run `mami db upgrade`" in behind.stderr

    # Disabled: its tables and version row stay as they are, and do not count as drift.
    enable(tmp_path, False)
    assert mami(["db", "upgrade"], tmp_path, notes, database_url).returncode == 0
    assert query(database_url, "SELECT version_num FROM alembic_version_notes") == [("n1",)]
    quiet = mami(["db", "check"], tmp_path, notes, database_url)
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    core_down = mami(["db", "downgrade", "-1", "--yes"], tmp_path, notes, database_url)
    assert core_down.returncode == 0, core_down.stderr
    assert mami(["db", "upgrade"], tmp_path, notes, database_url).returncode == 0
    unknown = mami(["db", "downgrade", "notes@base", "--yes"], tmp_path, notes, database_url)
    assert unknown.returncode == 1 and "no migration branch 'notes'" in unknown.stderr

    enable(tmp_path, True)
    again = mami(["db", "upgrade"], tmp_path, notes, database_url)
    assert again.returncode == 0 and "notes: n2 (up to date)" in again.stdout
    assert query(database_url, "SELECT owner_id, text, pinned FROM notes") == [
        ("ann", "buy milk", False)]
    assert mami(["db", "check"], tmp_path, notes, database_url).returncode == 0
    base = mami(["db", "downgrade", "notes@base", "--yes"], tmp_path, notes, database_url)
    assert base.returncode == 0, base.stderr
    assert "notes" not in set(inspect_tables(database_url))
    assert migrations.current_revision(database_url) == migrations.head_revision()


def inspect_tables(url: str) -> list[str]:
    engine = create_engine(sync_url(url))
    try:
        return list(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_sqlite_upgrades_a_plugins_tables_on_start(make_config: Any, notes: Path) -> None:
    runtime = Runtime(make_config(), [c for c in entrypoint_candidates() if c.name == "notes"])
    runtime.prepare_schema()
    url = runtime.db.url
    assert migrations.current_revision(url, "alembic_version_notes") == "n2"
    assert runtime.plugins.records["notes"].status == "ok"


def test_a_plugin_whose_tables_are_behind_fails_alone(
    make_config: Any, notes: Path, postgres_url: str
) -> None:
    migrations.upgrade(postgres_url)  # core only: the plugin's chain is not applied
    runtime = Runtime(make_config(core={"database_url": postgres_url}),
                      [c for c in entrypoint_candidates() if c.name == "notes"])
    runtime.prepare_schema()
    record = runtime.plugins.records["notes"]
    assert record.status == "failed"
    assert record.error == ("its tables (branch notes) are at nothing, it needs n2: "
                            "run `mami db upgrade`")
