"""A SQLite database that goes missing or read-only under a running server: a 503 naming
the path and the fix (never a 500), ``/health`` degraded, and recovery without a restart
once the file is back. At start, a database that vanished while data beside it remains is
never recreated empty.

Tests run as root, which file modes do not stop: read-only is made with ``chattr +i``
(the immutable flag stops root too, also through files already open) on the database and
its -wal file."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core import migrations
from core.app import create_app
from core.config import config_from_dict
from core.db import refuse_vanished
from core.errors import DatabaseMissing
from core.plugins import builtin_candidates
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def immutable(paths: list[Path], on: bool) -> None:
    for path in paths:
        if path.exists():
            subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)


@pytest.fixture
def served(tmp_path: Path, live_server: Any) -> Iterator[tuple[httpx.Client, Path]]:
    """A real server on a SQLite file in tmp_path/data, auth off, no model."""
    data = tmp_path / "data"
    database = data / "mami.db"
    config = config_from_dict({"core": {
        "auth": False, "data_dir": str(data), "database_url": f"sqlite:///{database}",
        "image_worker": False}})
    candidates = [c for c in builtin_candidates() if c.name == "token-ws-auth"]
    server = live_server(create_app(config, candidates=candidates))
    files = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield client, database
    finally:
        immutable(files, False)


def assert_unavailable(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 503, response.text
    message = response.json()["error"]["message"]
    assert all(word in message for word in words), message
    assert "Traceback" not in response.text


def test_a_read_only_database_is_a_503_and_heals(served: tuple[httpx.Client, Path]) -> None:
    client, database = served
    assert client.post("/api/conversations", json={"title": "before"}).status_code == 201
    # Not -shm: SQLite maps it in memory, and a write to an immutable mapping is SIGBUS.
    files = [database, Path(f"{database}-wal")]
    try:
        immutable(files, True)
    except (subprocess.CalledProcessError, FileNotFoundError):
        pytest.skip("chattr +i is not available here")

    refused = client.post("/api/conversations", json={"title": "during"})
    assert_unavailable(refused, str(database), "cannot be written", "writable")
    health = client.get("/health").json()
    assert health["status"] == "degraded"
    assert health["database"]["status"] == "unavailable"
    assert str(database) in health["database"]["error"]

    immutable(files, False)
    assert client.post("/api/conversations", json={"title": "after"}).status_code == 201
    assert client.get("/health").json()["database"] == {"status": "ok"}
    titles = {c["title"] for c in client.get("/api/conversations").json()}
    assert titles == {"before", "after"}


def test_a_vanished_database_is_a_503_and_a_restored_one_is_used(
    served: tuple[httpx.Client, Path], tmp_path: Path
) -> None:
    client, database = served
    assert client.post("/api/conversations", json={"title": "kept"}).status_code == 201
    backup = tmp_path / "backup.db"
    with sqlite3.connect(database) as source, sqlite3.connect(backup) as target:
        source.backup(target)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)

    for _ in range(3):  # open connections would write to the deleted file
        assert_unavailable(client.post("/api/conversations", json={"title": "lost"}),
                           str(database), "missing", "put it back")
    assert_unavailable(client.get("/api/conversations"), str(database))
    assert not database.exists()  # never recreated empty
    health = client.get("/health").json()
    assert health["status"] == "degraded" and "missing" in health["database"]["error"]

    shutil.copy(backup, database)
    assert client.post("/api/conversations", json={"title": "after"}).status_code == 201
    titles = {c["title"] for c in client.get("/api/conversations").json()}
    assert titles == {"kept", "after"}
    assert client.get("/health").json()["database"] == {"status": "ok"}


def test_a_database_that_vanished_beside_other_data_is_not_recreated(tmp_path: Path) -> None:
    env = {**os.environ, "MAMI_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)}
    env.pop("MAMI_CONFIG", None)
    env.pop("MAMI_SIGNING_KEY", None)
    (tmp_path / "plugins.toml").write_text(
        "[core]\nauth = true\nimage_worker = false\n"
        + "".join(f"[plugins.{name}]\nenabled = false\n"
                  for name in ("local-llm", "forge-image", "chroma-rag", "memory")),
        encoding="utf-8")
    port = free_port()
    first = subprocess.Popen([sys.executable, "-m", "core.cli", "serve", "--port", str(port)],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
    finally:
        first.terminate()
        first.communicate(timeout=60)
    database = tmp_path / "data" / "mami.db"
    key = tmp_path / "data" / "auth" / "ws-signing.key"
    assert database.exists() and key.exists()

    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    for args in (["serve", "--port", str(free_port())], ["token", "list"]):
        again = subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=tmp_path,
                               env=env, text=True, capture_output=True, timeout=120)
        assert again.returncode == 1, args
        assert again.stderr.strip().splitlines() == [
            f"mami: error: the database {database} is missing, but {tmp_path / 'data'} still "
            "holds data that goes with it (auth): it was deleted or moved. Restore it from a "
            "backup (or point MAMI_DATABASE_URL at where it is now); to start again with an "
            "empty database on purpose, run `mami db upgrade`, which creates one"], args
        assert not database.exists()
    assert subprocess.run([sys.executable, "-m", "core.cli", "db", "current"], cwd=tmp_path,
                          env=env, capture_output=True, timeout=120).returncode == 0
    assert not database.exists()

    upgrade = subprocess.run([sys.executable, "-m", "core.cli", "db", "upgrade"], cwd=tmp_path,
                             env=env, text=True, capture_output=True, timeout=120)
    assert upgrade.returncode == 0, upgrade.stderr
    assert migrations.current_revision(f"sqlite:///{database}") == migrations.head_revision()


def test_the_migration_lock_beside_a_deleted_database_is_not_data(tmp_path: Path) -> None:
    """A database in a folder of the data directory, deleted to start again: the
    migration lock file left beside it does not count as data kept with it."""
    data = tmp_path / "data"
    database = data / "sqlite" / "mami.db"
    migrations.upgrade_all(f"sqlite:///{database}")
    assert migrations.lock_file(database).exists()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    refuse_vanished(database, data)
    (database.parent / "notes.txt").write_text("kept with the database", encoding="utf-8")
    with pytest.raises(DatabaseMissing, match=r"still holds data that goes with it \(sqlite\)"):
        refuse_vanished(database, data)


async def test_checking_the_files_keeps_sqlites_locks(tmp_path: Path) -> None:
    """``Database.problem()`` (run by every ``/health``) must not open and close the
    database files: closing any descriptor of them drops every POSIX lock SQLite holds in
    this process, and another process could then reset the WAL under our open read (the
    cause of tokens made by `mami token create` not being found by a running server)."""
    from sqlalchemy import text

    from core.db import Database

    path = tmp_path / "mami.db"
    writer = sqlite3.connect(path)  # stays open, so its frames stay in the WAL
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    with writer:
        writer.execute("CREATE TABLE t (x INTEGER)")
        writer.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    db = Database(f"sqlite:///{path}")
    checkpoint = [sys.executable, "-c",
                  "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], timeout=0); "
                  "print(c.execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchone()[0])", str(path)]
    try:
        async with db.engine.connect() as conn:
            await conn.execute(text("BEGIN"))
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 100
            assert db.problem() is None
            # our read is still open: another process must not be able to reset the WAL
            busy = subprocess.run(checkpoint, capture_output=True, text=True, check=True)
            assert busy.stdout.strip() == "1", "the WAL was reset under an open read"
            await conn.execute(text("ROLLBACK"))
    finally:
        await db.close()
        writer.close()
