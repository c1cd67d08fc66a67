"""``Database.run``: one synchronous Core transaction, on SQLite in the database's own
threads, elsewhere on the async engine; storage faults are 503s like everywhere else.

The job queue runs on it, so an image request against a read-only database is a 503
naming the file (it was a 500 when the queue bypassed the session's fault handling)."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, text

from core.app import create_app
from core.db import Database
from core.errors import DatabaseUnavailable
from core.plugins import builtin_candidates
from tests.core.test_database_faults import assert_unavailable, immutable
from tests.forge_standin import ForgeStandIn


def create_table(conn: Connection) -> None:
    conn.execute(text("CREATE TABLE numbers (n INTEGER NOT NULL)"))


def insert(n: int, then_fail: bool = False) -> Any:
    def work(conn: Connection) -> None:
        conn.execute(text("INSERT INTO numbers (n) VALUES (:n)"), {"n": n})
        if then_fail:
            raise RuntimeError("the work failed after writing")
    return work


def numbers(conn: Connection) -> list[int]:
    return [row[0] for row in conn.execute(text("SELECT n FROM numbers ORDER BY n"))]


async def test_run_commits_on_return_and_rolls_back_on_error(database_url: str,
                                                            tmp_path: Path) -> None:
    db = Database(database_url)
    try:
        await db.run(create_table)
        await db.run(insert(1))
        with pytest.raises(RuntimeError, match="after writing"):
            await db.run(insert(2, then_fail=True))
        assert await db.run(numbers) == [1]
        async with db.session() as session:  # the async engine sees what run() wrote
            assert [r[0] for r in await session.execute(text("SELECT n FROM numbers"))] == [1]
    finally:
        await db.close()


async def test_run_is_not_held_up_by_work_stuck_in_the_default_executor(
    tmp_path: Path,
) -> None:
    """Sync plugin hooks run in the default executor, where a hung one keeps its thread;
    the database's work must still get through when every such thread is taken."""
    db = Database(f"sqlite:///{tmp_path / 'mami.db'}")
    release = threading.Event()
    loop = asyncio.get_running_loop()
    stuck = [loop.run_in_executor(None, release.wait) for _ in range(64)]
    try:
        await asyncio.sleep(0.1)
        await asyncio.wait_for(db.run(create_table), 20)
        await asyncio.wait_for(db.run(insert(7)), 20)
        assert await asyncio.wait_for(db.run(numbers), 20) == [7]
    finally:
        release.set()
        await asyncio.gather(*stuck)
        await db.close()


async def test_run_on_a_read_only_or_vanished_file_is_unavailable_and_heals(
    tmp_path: Path,
) -> None:
    database = tmp_path / "mami.db"
    db = Database(f"sqlite:///{database}")
    try:
        await db.run(create_table)
        await db.run(insert(1))
        files = [database, Path(f"{database}-wal")]
        try:
            immutable(files, True)
        except (subprocess.CalledProcessError, FileNotFoundError):
            pytest.skip("chattr +i is not available here")
        try:
            with pytest.raises(DatabaseUnavailable, match="cannot be written") as refused:
                await db.run(insert(2))
            assert str(database) in str(refused.value)
        finally:
            immutable(files, False)
        await db.run(insert(3))
        assert await db.run(numbers) == [1, 3]

        moved = tmp_path / "moved.db"
        database.rename(moved)
        with pytest.raises(DatabaseUnavailable, match="missing"):
            await db.run(insert(4))
        assert not database.exists()  # never recreated empty
        moved.rename(database)
        assert await db.run(numbers) == [1, 3]
    finally:
        await db.close()


def test_an_image_request_on_a_read_only_database_is_a_503(make_config: Any,
                                                          live_server: Any) -> None:
    forge = ForgeStandIn().start()
    config = make_config(plugins={"forge-image": {"url": forge.url}})
    database = Path(config.core.data_dir) / "mami.db"
    candidates = [c for c in builtin_candidates() if c.name == "forge-image"]
    live = live_server(create_app(config, candidates=candidates))
    files = [database, Path(f"{database}-wal")]
    try:
        with httpx.Client(base_url=live.url, timeout=30) as client:
            assert client.get("/health").status_code == 200
            try:
                immutable(files, True)
            except (subprocess.CalledProcessError, FileNotFoundError):
                pytest.skip("chattr +i is not available here")
            refused = client.post("/api/images", json={"prompt": "a lighthouse"})
            assert_unavailable(refused, str(database), "cannot be written")
            immutable(files, False)
            accepted = client.post("/api/images", json={"prompt": "a lighthouse"})
            assert accepted.status_code == 202, accepted.text
            assert [job["state"] for job in client.get("/api/images").json()] == ["queued"]
    finally:
        immutable(files, False)
        forge.stop()


def test_trusted_rows_work_before_anything_configured_the_mappers() -> None:
    """``model_construct`` skips what the constructor does first: configuring SQLAlchemy's
    mappers. A process whose first ORM object is a trusted row (``mami chat /image``, with
    no start-up repairs) got "'NoneType' object has no attribute 'supports_population'"."""
    import subprocess
    import sys

    code = ("from core.models import ImageJob, Message, trusted\n"
            "job = trusted(ImageJob, {'id': 'j1', 'owner_id': 'ann', 'request': {}})\n"
            "message = trusted(Message, {'id': 'm1', 'role': 'user', 'content': 'hi'})\n"
            "print(job.id, job.owner_id, message.role, message.content)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["j1", "ann", "user", "hi"]
