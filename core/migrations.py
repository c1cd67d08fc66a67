"""Schema migrations with Alembic: the only way the schema is made or changed.

Alembic is imported only by the functions that change or compare the schema: the check
every start makes (:func:`current_revision` against :func:`head_revision`) runs on
each Lambda cold start, which pays for every import.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, inspect, text

from core.db import ensure_sqlite_dir, sync_url

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

SCRIPT_LOCATION = Path(__file__).resolve().parent.parent / "alembic"
VERSION_TABLE = "alembic_version"


def alembic_config(url: str, script_location: Path | None = None) -> AlembicConfig:
    """An Alembic configuration for ``url`` using the project's ``alembic/`` scripts
    (or another script directory, for tests of the migration machinery)."""
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(script_location or SCRIPT_LOCATION))
    cfg.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    cfg.attributes["database_url"] = sync_url(url)
    return cfg


def head_revision() -> str:
    """The one head of ``alembic/``; RuntimeError when there are several."""
    quick = files_head(SCRIPT_LOCATION / "versions")
    if quick is not None:
        return quick
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"alembic/ has {len(heads)} heads; merge them: {heads}")
    return heads[0]


def files_head(versions: Path) -> str | None:
    """The head read from the revision files' literal ``revision`` and ``down_revision``
    assignments, without importing Alembic; ``None`` unless that gives exactly one head
    (Alembic then decides)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in versions.glob("*.py"):
        values = _literal_assignments(path, ("revision", "down_revision"))
        if not isinstance(values.get("revision"), str):
            continue
        revisions.add(values["revision"])
        down = values.get("down_revision")
        parents.update(down if isinstance(down, tuple | list) else [down] if down else [])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _literal_assignments(path: Path, names: tuple[str, ...]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in names:
            try:
                found[target.id] = ast.literal_eval(value)
            except ValueError:
                continue
    return found


def current_revision(url: str) -> str | None:
    """The revision the database is at, or ``None`` for an empty database."""
    ensure_sqlite_dir(sync_url(url))
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(VERSION_TABLE):
                return None
            rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    finally:
        engine.dispose()
    if len(rows) > 1:
        raise RuntimeError(f"the database is at several revisions: {sorted(rows)}")
    return rows[0] if rows else None


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    ensure_sqlite_dir(sync_url(url))
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def drift(url: str) -> list[Any]:
    """Differences between the models and a database at head (empty list: no drift)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    import core.models  # noqa: F401  (registers the tables)

    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, SQLModel.metadata))
    finally:
        engine.dispose()
