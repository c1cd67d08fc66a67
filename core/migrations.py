"""Schema migrations with Alembic: the only way the schema is made or changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from core.db import ensure_sqlite_dir, sync_url

SCRIPT_LOCATION = Path(__file__).resolve().parent.parent / "alembic"


def alembic_config(url: str, script_location: Path | None = None) -> AlembicConfig:
    """An Alembic configuration for ``url`` using the project's ``alembic/`` scripts
    (or another script directory, for tests of the migration machinery)."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(script_location or SCRIPT_LOCATION))
    cfg.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    cfg.attributes["database_url"] = sync_url(url)
    return cfg


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"alembic/ has {len(heads)} heads; merge them: {heads}")
    return heads[0]


def current_revision(url: str) -> str | None:
    """The revision the database is at, or ``None`` for an empty database."""
    ensure_sqlite_dir(sync_url(url))
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    ensure_sqlite_dir(sync_url(url))
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def drift(url: str) -> list[Any]:
    """Differences between the models and a database at head (empty list: no drift)."""
    from alembic.autogenerate import compare_metadata
    from sqlmodel import SQLModel

    import core.models  # noqa: F401  (registers the tables)

    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, SQLModel.metadata))
    finally:
        engine.dispose()
