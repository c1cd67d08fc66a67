"""Database engine and sessions (async SQLAlchemy on SQLite or PostgreSQL)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from core.errors import ConfigError, DatabaseMissing, DatabaseUnavailable

T = TypeVar("T")

# SQLite's words for a file it cannot use (SQLITE_READONLY, SQLITE_CANTOPEN, SQLITE_IOERR).
STORAGE_FAULTS = ("readonly", "unable to open database file", "disk i/o error")
LOCK_SUFFIX = ".migrate.lock"
"""The file beside a SQLite database whose lock serialises its schema changes (see
:func:`core.migrations.lock_file`); it holds no data."""


def sync_url(url: str) -> str:
    """The URL for synchronous use (Alembic): drivers that only work async are swapped."""
    parsed = make_url(url)
    if parsed.drivername in ("sqlite+aiosqlite", "sqlite"):
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+asyncpg", "postgresql+psycopg2"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def async_url(url: str, sqlite_driver: str = "sqlite+aiosqlite") -> str:
    """The URL for the app's async engine (``sqlite_driver``: another SQLite driver, for
    the same file opened synchronously). A SQLite file is opened with ``mode=rw``: a
    connection made after the file vanished fails instead of making an empty one."""
    parsed = make_url(sync_url(url))
    if parsed.drivername == "sqlite":
        path = sqlite_path(url)
        if path is not None and not parsed.query:
            return f"{sqlite_driver}:///file:{quote(str(path))}?mode=rw&uri=true"
        return parsed.set(drivername=sqlite_driver).render_as_string(hide_password=False)
    return parsed.render_as_string(hide_password=False)


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (absolute), or ``None`` (in memory, or not SQLite)."""
    parsed = make_url(sync_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    database = str(parsed.database)
    if database.startswith("file:"):
        return None
    return Path(database).expanduser().absolute()


def refuse_vanished(database: Path, data_dir: Path) -> None:
    """Raise :class:`DatabaseMissing` when ``database`` does not exist but a folder in
    ``data_dir`` holds files (keys, vector stores, images: data kept beside the database,
    by core and plugins, each in its own folder; a migration lock is not data). Creating
    an empty database then would silently lose every account and conversation."""
    if database.exists() or not data_dir.is_dir():
        return
    holders = sorted(entry.name for entry in data_dir.iterdir()
                     if entry.is_dir() and any(p.is_file() and not p.name.endswith(LOCK_SUFFIX)
                                               for p in entry.rglob("*")))
    if holders:
        raise DatabaseMissing(
            f"the database {database} is missing, but {data_dir} still holds data that goes "
            f"with it ({', '.join(holders)}): it was deleted or moved. Restore it from a "
            "backup (or point MAMI_DATABASE_URL at where it is now); to start again with an "
            "empty database on purpose, run `mami db upgrade`, which creates one")


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
    expire objects on commit.

    With a SQLite file, a missing or read-only file gives :class:`DatabaseUnavailable`
    (503, naming the path and the fix) instead of a 500; the pool is then emptied, so
    once the file is back (or writable) the next session works again. ``data_dir``:
    refuse to create a missing file while data beside it remains (:func:`refuse_vanished`).
    """

    def __init__(self, url: str, data_dir: Path | None = None) -> None:
        try:
            self.url = sync_url(url)
            self.path = sqlite_path(self.url)
            engine_url = async_url(url)
        except Exception as exc:
            raise ConfigError(f"MAMI_DATABASE_URL: invalid database URL: {exc}") from exc
        if self.path is not None and data_dir is not None:
            refuse_vanished(self.path, Path(data_dir).expanduser().absolute())
        ensure_sqlite_dir(self.url)
        self.is_sqlite = is_sqlite(self.url)
        kwargs: dict[str, Any] = {} if self.is_sqlite else {"pool_pre_ping": True}
        self.engine: AsyncEngine = create_async_engine(engine_url, **kwargs)
        # A SQLite file also gets a synchronous engine for run(); both use the same
        # sqlite3 library, which shares its file locks between the process's connections.
        self._sync_engine: Engine | None = None
        self._threads: ThreadPoolExecutor | None = None
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            if self.path is not None:
                self._sync_engine = create_engine(async_url(url, "sqlite"))
                event.listen(self._sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(
            self.engine, class_=AsyncSession, expire_on_commit=False
        )
        self._identity = self._file_identity()

    def _file_identity(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            return None
        return found.st_dev, found.st_ino

    def _missing(self) -> str:
        return (f"the database file {self.path} is missing (deleted or moved while mami "
                "runs): put it back, from a backup if need be; mami uses it again by itself")

    def _read_only(self, reason: str) -> str:
        return (f"the database {self.path} cannot be written ({reason}): make the file, its "
                "-wal and -shm files and its folder writable for the user running mami; "
                "mami recovers by itself")

    def problem(self) -> str | None:
        """What keeps a SQLite file from being used (missing, not writable), or ``None``."""
        if self.path is None:
            return None
        if not self.path.exists():
            return self._missing()
        # access(), never open()+close(): closing any descriptor of the database file
        # drops every POSIX lock SQLite holds on it in this process, and other processes
        # then write under our readers (stale reads, lost writes).
        for path in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            if path.exists() and not os.access(path, os.W_OK):
                return self._read_only(f"{path.name} is not writable")
        return None

    async def _check_file(self) -> None:
        """Before a session: a vanished file is a 503 (open connections would write to
        the deleted file); a file replaced under the same path (restored) gets new
        connections."""
        if self.path is None:
            return
        identity = self._file_identity()
        if identity == self._identity:
            return
        await self._dispose()
        if identity is None:
            raise DatabaseUnavailable(self._missing())
        self._identity = identity

    @asynccontextmanager
    async def _storage_faults(self) -> AsyncIterator[None]:
        """A SQLite file that cannot be used becomes :class:`DatabaseUnavailable`."""
        await self._check_file()
        try:
            yield
        except OperationalError as exc:
            reason = str(exc.orig).lower() if exc.orig is not None else ""
            if self.path is None or not any(fault in reason for fault in STORAGE_FAULTS):
                raise
            await self._dispose()  # connections SQLite opened read-only stay so
            problem = self.problem() or self._read_only(str(exc.orig))
            raise DatabaseUnavailable(problem) from exc

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self._storage_faults(), self._sessions() as session:
            yield session

    async def run(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` in one transaction, committed when it returns; its result.

        ``work`` is synchronous SQLAlchemy Core and must not block on anything but the
        database. With a SQLite file it runs in a worker thread on a synchronous
        connection: one thread hop for the whole transaction, where aiosqlite makes one
        per DBAPI call (about six for one statement). Elsewhere it runs on the async
        engine. Storage faults are :class:`DatabaseUnavailable`, as in :meth:`session`.
        The threads are the database's own: plugin code stuck in the default executor
        cannot hold them up.
        """
        async with self._storage_faults():
            if self._sync_engine is not None:
                if self._threads is None:
                    self._threads = ThreadPoolExecutor(4, thread_name_prefix="mami-db")
                return await asyncio.get_running_loop().run_in_executor(
                    self._threads, self._run_in_thread, work)
            async with self.engine.begin() as connection:
                return await connection.run_sync(work)

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        """One Core ``statement`` with its ``parameters`` in a transaction of its own,
        through :meth:`run`; its result (``rowcount``, or rows already fetched)."""
        return await self.run(lambda connection: connection.execute(statement, parameters))

    def _run_in_thread(self, work: Callable[[Connection], T]) -> T:
        assert self._sync_engine is not None
        with self._sync_engine.begin() as connection:
            return work(connection)

    async def _dispose(self) -> None:
        await self.engine.dispose()
        if self._sync_engine is not None:
            self._sync_engine.dispose()

    async def close(self) -> None:
        await self._dispose()
        if self._threads is not None:
            self._threads.shutdown(wait=False)
            self._threads = None
