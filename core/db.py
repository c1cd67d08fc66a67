"""Database engine and sessions (async SQLAlchemy on SQLite or PostgreSQL)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from core.errors import ConfigError


def sync_url(url: str) -> str:
    """The URL for synchronous use (Alembic): drivers that only work async are swapped."""
    parsed = make_url(url)
    if parsed.drivername in ("sqlite+aiosqlite", "sqlite"):
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+asyncpg", "postgresql+psycopg2"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def async_url(url: str) -> str:
    """The URL for the app's async engine."""
    parsed = make_url(sync_url(url))
    if parsed.drivername == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    return parsed.render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents with mode 0700 (only the owner may list
    or read what mami keeps there); an existing directory is left as it is."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)
    return path


def ensure_sqlite_dir(url: str) -> None:
    """Create the directory (0700) and the file (0600) of a SQLite database so a fresh
    install needs no set-up and other local users cannot read it. SQLite gives its
    journal files the database file's mode."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        database = Path(parsed.database).expanduser()
        private_dir(database.parent)
        if not database.exists():
            os.close(os.open(database, os.O_WRONLY | os.O_CREAT, 0o600))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    """The app's engine. ``session()`` yields an :class:`AsyncSession` that does not
    expire objects on commit."""

    def __init__(self, url: str) -> None:
        try:
            self.url = sync_url(url)
            ensure_sqlite_dir(self.url)
            engine_url = async_url(url)
        except Exception as exc:
            raise ConfigError(f"MAMI_DATABASE_URL: invalid database URL: {exc}") from exc
        self.is_sqlite = is_sqlite(self.url)
        kwargs: dict[str, Any] = {} if self.is_sqlite else {"pool_pre_ping": True}
        self.engine: AsyncEngine = create_async_engine(engine_url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(
            self.engine, class_=AsyncSession, expire_on_commit=False
        )

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            yield session

    async def close(self) -> None:
        await self.engine.dispose()
