"""Alembic is the only way the schema is made: upgrade, downgrade, drift and data
preservation, on SQLite and on PostgreSQL."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text

from core import migrations
from core.db import sync_url
from core.runtime import Runtime, SchemaBehind


def table_names(url: str) -> set[str]:
    engine = create_engine(sync_url(url))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_and_no_drift(database_url: str) -> None:
    assert migrations.current_revision(database_url) is None
    migrations.upgrade(database_url)
    assert migrations.current_revision(database_url) == migrations.head_revision()
    # Core's chain makes core's tables only; the built-in plugins' are in their chains.
    assert table_names(database_url) == {"alembic_version", "owners", "conversations",
                                         "messages", "image_jobs", "event_receipts"}
    assert migrations.drift(database_url) == []

    migrations.downgrade(database_url, "base")
    assert migrations.current_revision(database_url) is None
    assert table_names(database_url) <= {"alembic_version"}

    migrations.upgrade(database_url)
    assert migrations.drift(database_url) == []


def test_core_migration_files_are_numbered_in_chain_order() -> None:
    """A file's number is its place in core's chain, so a listing shows the order; the
    revision ids inside (stored in existing databases) keep their older names."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrations.alembic_config("sqlite://"))
    files = [Path(revision.path).name for revision in script.walk_revisions()][::-1]
    assert [name[:5] for name in files] == [f"{n:04d}_" for n in range(1, len(files) + 1)]
    assert files == sorted(files)


ADD_COLUMN = '''"""add owners.display_name (test only)"""
import sqlalchemy as sa
from alembic import op

revision = "9999"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("owners") as batch:
        batch.add_column(sa.Column("display_name", sa.String(100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("owners") as batch:
        batch.drop_column("display_name")
'''


def test_a_migration_adding_a_column_keeps_every_row(database_url: str, tmp_path: Path) -> None:
    scripts = tmp_path / "alembic"
    shutil.copytree(migrations.SCRIPT_LOCATION, scripts,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "9999_add_column.py").write_text(
        ADD_COLUMN.format(head=migrations.head_revision()), encoding="utf-8"
    )
    cfg = migrations.alembic_config(database_url, script_location=scripts)
    migrations.upgrade(database_url)
    engine = create_engine(sync_url(database_url))
    try:
        with engine.begin() as conn:
            for i in range(50):
                conn.execute(text("INSERT INTO owners (id, created_at) VALUES (:i, :t)"),
                             {"i": f"owner-{i}", "t": "2026-01-01 00:00:00+00:00"})
            conn.execute(text("INSERT INTO conversations (id, owner_id, title, summary, "
                              "summary_upto, created_at, updated_at) VALUES ('c1', 'owner-7', "
                              "'t', '', 0, '2026-01-01 00:00:00+00:00', "
                              "'2026-01-01 00:00:00+00:00')"))
        command.upgrade(cfg, "head")
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, display_name FROM owners ORDER BY id")).all()
            convs = conn.execute(text("SELECT owner_id FROM conversations")).scalars().all()
        assert len(rows) == 50 and all(name is None for _, name in rows)
        assert convs == ["owner-7"]
        command.downgrade(cfg, "-1")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM owners")).scalar() == 50
    finally:
        engine.dispose()


def test_sqlite_is_upgraded_on_start_unless_turned_off(make_config: Any, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'auto.db'}"
    Runtime(make_config(core={"database_url": url})).prepare_schema()
    assert migrations.current_revision(url) == migrations.head_revision()

    url2 = f"sqlite:///{tmp_path / 'manual.db'}"
    with pytest.raises(SchemaBehind, match="run `mami db upgrade`"):
        Runtime(make_config(core={"database_url": url2, "auto_migrate": False})).prepare_schema()
    assert migrations.current_revision(url2) is None


def test_postgres_behind_refuses_to_start(make_config: Any, postgres_url: str) -> None:
    runtime = Runtime(make_config(core={"database_url": postgres_url}))
    with pytest.raises(SchemaBehind, match="run `mami db upgrade`"):
        runtime.prepare_schema()
    migrations.upgrade(postgres_url)
    runtime.prepare_schema()


def test_no_create_all_outside_migration_tests() -> None:
    root = Path(__file__).resolve().parents[2]
    offenders = [
        str(path.relative_to(root))
        for folder in ("core", "plugins", "deploy", "alembic")
        for path in (root / folder).rglob("*.py")
        if "create_all(" in path.read_text(encoding="utf-8")
    ]
    assert offenders == []
