"""Schema migrations with Alembic: the only way the schema is made or changed.

Alembic is imported only by the functions that change or compare the schema: the check
every start makes (:func:`current_revision` against :func:`head_revision`) runs on
each Lambda cold start, which pays for every import.

Core's migrations live in ``alembic/versions`` and are recorded in ``alembic_version``.
A plugin's own tables have their own chain (:class:`MigrationSource`, registered by the
``register_migrations`` hook): its revision files in the plugin's ``versions`` directory,
recorded in their own version table ``alembic_version_<branch>``. The chains are
independent, so a disabled or uninstalled plugin's tables and version row stay as they
are and never stand in core's way. Core's chain runs first (a plugin table may point
at ``owners``). ``<branch>@<revision>`` (``notes@base``, ``notes@-1``, ``notes@head``)
names a revision of one plugin's chain.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import MetaData, create_engine, inspect, pool, text

from core.db import (
    LOCK_SUFFIX,
    ensure_sqlite_dir,
    is_sqlite,
    private_dir,
    sqlite_path,
    sync_url,
)
from core.errors import ConfigError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

    from core.config import Config

SCRIPT_LOCATION = Path(__file__).resolve().parent.parent / "alembic"
VERSION_TABLE = "alembic_version"
BRANCH = re.compile(r"[a-z][a-z0-9_]{0,40}")
# pg_advisory_lock key that serialises schema changes ("mami" in ASCII).
SCHEMA_LOCK = 0x6D616D69

log = logging.getLogger("mami.migrations")


@dataclass(frozen=True)
class MigrationSource:
    """A plugin's own migration chain: ``versions`` is the directory of its revision
    files (the first one has ``down_revision = None`` and ``branch_labels =
    (branch,)``); ``branch`` (lower-case letters, digits, ``_``) names the chain and its
    version table. ``metadata`` holds the plugin's tables (its own ``MetaData``, not
    SQLModel's shared one), so ``mami db check`` compares them too."""

    branch: str
    versions: Path
    metadata: MetaData | None = None

    def __post_init__(self) -> None:
        if not BRANCH.fullmatch(self.branch):
            raise ValueError(f"migration branch {self.branch!r}: use lower-case letters, "
                             "digits and _, starting with a letter")
        if not Path(self.versions).is_dir():
            raise ValueError(f"migration branch {self.branch}: {self.versions} is not a "
                             "directory")

    @property
    def version_table(self) -> str:
        return f"{VERSION_TABLE}_{self.branch}"


def alembic_config(url: str, script_location: Path | None = None,
                   source: MigrationSource | None = None) -> AlembicConfig:
    """An Alembic configuration for ``url`` using the project's ``alembic/`` scripts
    (or another script directory, for tests of the migration machinery); with
    ``source``, for that plugin's chain and version table."""
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(script_location or SCRIPT_LOCATION))
    cfg.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    cfg.attributes["database_url"] = sync_url(url)
    if source is not None:
        cfg.set_main_option("path_separator", "os")
        cfg.set_main_option("version_locations", str(source.versions).replace("%", "%%"))
        cfg.attributes["version_table"] = source.version_table
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


def known_revisions(versions: Path | None = None) -> set[str]:
    """Every revision id in ``alembic/versions`` (or another chain's directory), read
    from the files without Alembic."""
    found = (_literal_assignments(path, ("revision",)).get("revision")
             for path in (versions or SCRIPT_LOCATION / "versions").glob("*.py"))
    return {revision for revision in found if isinstance(revision, str)}


def is_ahead(current: str | None, versions: Path | None = None) -> bool:
    """True when the database is at a revision this code does not have: a newer
    version of mami (or of the plugin owning ``versions``) upgraded it."""
    return current is not None and current not in known_revisions(versions)


def schema_problem(current: str | None, head: str) -> str | None:
    """What is wrong with a database at ``current`` for code whose head is ``head``, with
    the way out; ``None`` when they match."""
    if current == head:
        return None
    if is_ahead(current):
        return (f"database schema is at {current}, a revision this version of mami does "
                f"not have (its newest is {head}): a newer mami upgraded it. Deploy that "
                f"version, or run its `mami db downgrade {head}` first")
    return (f"database schema is at {current or 'nothing'} but mami needs {head}: "
            "run `mami db upgrade`")


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


def current_revision(url: str, version_table: str = VERSION_TABLE) -> str | None:
    """The revision the database is at (core's, or the chain of ``version_table``), or
    ``None`` for an empty database (a missing SQLite file is not created)."""
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return None
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(version_table):
                return None
            rows = conn.execute(text(f"SELECT version_num FROM {version_table}")).scalars().all()
    finally:
        engine.dispose()
    if len(rows) > 1:
        raise RuntimeError(f"the database is at several revisions: {sorted(rows)}")
    return rows[0] if rows else None


def source_head(source: MigrationSource) -> str:
    """The one head of a plugin's chain; RuntimeError when it has several or none."""
    quick = files_head(Path(source.versions))
    if quick is not None:
        return quick
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(alembic_config("sqlite://", source=source)).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"migration branch {source.branch} has {len(heads)} heads: {heads}")
    return heads[0]


@dataclass(frozen=True)
class ChainState:
    """Where one chain (``core`` or a plugin's branch) is and where its head is;
    ``ahead`` when it is at a revision this code does not have."""

    name: str
    current: str | None
    head: str
    ahead: bool = False

    @property
    def behind(self) -> bool:
        return self.current != self.head and not self.ahead

    @property
    def problem(self) -> str | None:
        """One line on what is wrong and how to fix it; ``None`` when at head."""
        label = "database schema" if self.name == "core" else f"branch {self.name}"
        if self.ahead:
            return (f"{label} is at {self.current}, a revision this version of mami does not "
                    f"have (its newest is {self.head}): a newer mami upgraded it. Deploy "
                    f"that version, or run its `mami db downgrade "
                    f"{'' if self.name == 'core' else self.name + '@'}{self.head}` first")
        if self.behind:
            return (f"{label} is at {self.current or 'nothing'}, head is {self.head}: "
                    "run `mami db upgrade`")
        return None


def states(url: str, sources: Sequence[MigrationSource] = ()) -> list[ChainState]:
    """Core's chain, then each plugin's."""
    current = current_revision(url)
    found = [ChainState("core", current, head_revision(), is_ahead(current))]
    for source in sources:
        mine = current_revision(url, source.version_table)
        found.append(ChainState(source.branch, mine, source_head(source),
                                is_ahead(mine, Path(source.versions))))
    return found


def _target(revision: str, sources: Sequence[MigrationSource]
            ) -> tuple[MigrationSource | None, str]:
    """The chain a ``[branch@]revision`` names, and the revision within it."""
    branch, at, rest = revision.partition("@")
    if not at or branch in ("", "core"):
        return None, rest if at else revision
    for source in sources:
        if source.branch == branch:
            return source, rest
    known = ", ".join(["core", *(s.branch for s in sources)])
    from core.errors import MamiError

    raise MamiError(f"{revision}: no migration branch {branch!r} among enabled plugins "
                    f"(known: {known})")


def lock_file(database: Path) -> Path:
    """The file whose lock serialises the schema changes of the SQLite ``database``:
    ``<database>.migrate.lock`` beside it. Never the database file itself: closing any
    descriptor of that file drops every POSIX lock SQLite holds on it in the process."""
    return database.with_name(database.name + LOCK_SUFFIX)


_held = threading.local()  # .keys: the schema locks this thread holds


@contextmanager
def schema_lock(url: str) -> Iterator[None]:
    """Let one process at a time change the schema of the database at ``url``: the
    second waits (saying so in the log) and then finds the work done, instead of
    running the same migration again and failing on a half-made table. PostgreSQL:
    the advisory lock :data:`SCHEMA_LOCK`, on a connection of its own. A SQLite file:
    an exclusive ``flock`` on :func:`lock_file` (released however the process ends).
    Re-entrant within one thread. An in-memory SQLite database (or a ``file:`` URI) is
    not locked."""
    path = sqlite_path(url)
    if is_sqlite(sync_url(url)) and path is None:
        yield
        return
    key = str(path) if path is not None else sync_url(url)
    held: set[str] = _held.__dict__.setdefault("keys", set())
    if key in held:
        yield
        return
    held.add(key)
    try:
        with _file_lock(path) if path is not None else _advisory_lock(url):
            yield
    finally:
        held.discard(key)


@contextmanager
def _file_lock(database: Path) -> Iterator[None]:
    import fcntl

    path = lock_file(database)
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open the migration lock {path}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process's schema migration of %s (it holds %s)",
                     database, path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def _advisory_lock(url: str) -> Iterator[None]:
    engine = create_engine(sync_url(url), poolclass=pool.NullPool,
                           isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            key = {"key": SCHEMA_LOCK}
            if not conn.execute(text("SELECT pg_try_advisory_lock(:key)"), key).scalar():
                log.info("waiting for another process's schema migration of the database "
                         "(PostgreSQL advisory lock %d)", SCHEMA_LOCK)
                conn.execute(text("SELECT pg_advisory_lock(:key)"), key)
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), key)
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head", sources: Sequence[MigrationSource] = ()) -> None:
    """Upgrade to ``revision``; ``head`` (or ``heads``) upgrades core and then every
    plugin chain in ``sources`` to its head. One schema change at a time per database
    (:func:`schema_lock`)."""
    from alembic import command

    ensure_sqlite_dir(sync_url(url))
    with schema_lock(url):
        if revision in ("head", "heads"):
            command.upgrade(alembic_config(url), "head")
            for each in sources:
                command.upgrade(alembic_config(url, source=each), "head")
            return
        source, rev = _target(revision, sources)
        command.upgrade(alembic_config(url, source=source), rev)


def plugin_sources(config: Config | None = None) -> list[MigrationSource]:
    """The chains of the plugins ``config`` enables (default: every plugin that is on
    unless configured otherwise)."""
    from core.config import config_from_dict
    from core.plugins import PluginHost

    host = PluginHost(config if config is not None else config_from_dict({}))
    return [source for _plugin, source in host.register_migrations()]


def upgrade_all(url: str, config: Config | None = None) -> None:
    """Core's chain and then the chain of every plugin ``config`` enables, to head."""
    upgrade(url, "head", plugin_sources(config))


def downgrade(url: str, revision: str, sources: Sequence[MigrationSource] = ()) -> None:
    """Downgrade core's chain, or one plugin's with ``<branch>@<revision>``. Core to
    ``base`` takes every chain in ``sources`` to its base first (their tables may point
    at core's)."""
    from alembic import command

    source, rev = _target(revision, sources)
    with schema_lock(url):
        if source is None and rev == "base":
            for each in reversed(sources):
                command.downgrade(alembic_config(url, source=each), "base")
        command.downgrade(alembic_config(url, source=source), rev)


def drift(url: str, sources: Sequence[MigrationSource] = ()) -> list[Any]:
    """Differences between the models (core's and the ``metadata`` of every source) and
    a database at head (empty list: no drift). Version tables are not compared, nor are
    tables no model declares: those of a disabled or uninstalled plugin (also the
    built-in plugins' tables that core's 0001 once made) stay as they are."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    import core.models  # noqa: F401  (registers the tables)

    models = MetaData()
    for metadata in [SQLModel.metadata, *(s.metadata for s in sources if s.metadata)]:
        for table in metadata.tables.values():
            table.to_metadata(models)
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:

            def include(obj: Any, name: str | None, kind: str, reflected: bool,
                        compare_to: Any) -> bool:
                if kind == "table" and name is not None and name.startswith(VERSION_TABLE):
                    return False
                return not (kind == "table" and reflected and name not in models.tables)

            ctx = MigrationContext.configure(
                conn, opts={"compare_type": True, "include_object": include})
            return list(compare_metadata(ctx, models))
    finally:
        engine.dispose()
