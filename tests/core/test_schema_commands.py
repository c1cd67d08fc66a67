"""`mami db` and `mami serve` facing a schema in the wrong state: concurrent upgrades take
turns, a downgrade asks first, a schema ahead or behind is one line naming the revision."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from core import migrations
from core.db import sync_url

ROOT = Path(__file__).resolve().parents[2]


def environment(cwd: Path, url: str) -> dict[str, str]:
    env = {**os.environ, "MAMI_DATA_DIR": str(cwd / "data"), "PYTHONPATH": str(ROOT),
           "MAMI_DATABASE_URL": url}
    env.pop("MAMI_CONFIG", None)
    return env


def mami(args: list[str], cwd: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=cwd,
                          env=environment(cwd, url), text=True, capture_output=True,
                          timeout=300, stdin=subprocess.DEVNULL)


def set_version(url: str, table: str, revision: str) -> None:
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(text(f"UPDATE {table} SET version_num = :r"), {"r": revision})
    finally:
        engine.dispose()


# Everything imported first, then `mami db upgrade` at one agreed moment: the processes
# meet inside Alembic (without the lock, 2 of 3 fail with IntegrityError on pg_type).
AT_ONCE = """
import sys, time
import alembic.command, sqlmodel, psycopg
import core.models
from core import cli, migrations
migrations.plugin_sources()
while time.time() < float(sys.argv[1]):
    time.sleep(0.001)
sys.exit(cli.main(["db", "upgrade"]))
"""


def test_concurrent_upgrades_of_an_empty_postgres_take_turns(
    tmp_path: Path, postgres_url: str
) -> None:
    start = time.time() + 15
    runs = [subprocess.Popen([sys.executable, "-c", AT_ONCE, str(start)], cwd=tmp_path,
                             env=environment(tmp_path, postgres_url), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(3)]
    results = [(run.wait(timeout=300), *run.communicate()) for run in runs]
    assert time.time() > start
    assert [code for code, _, _ in results] == [0, 0, 0], [err for _, _, err in results]
    assert all("IntegrityError" not in err for _, _, err in results)
    assert migrations.current_revision(postgres_url) == migrations.head_revision()
    assert mami(["db", "check"], tmp_path, postgres_url).returncode == 0


def test_a_downgrade_asks_first_and_refuses_without_a_terminal(
    database_url: str, tmp_path: Path
) -> None:
    assert mami(["db", "upgrade"], tmp_path, database_url).returncode == 0
    head = migrations.head_revision()

    refused = mami(["db", "downgrade", "base"], tmp_path, database_url)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"mami: error: mami db downgrade base takes core from {head} to base (every enabled "
        "plugin's chain to base first): the revisions it undoes may drop tables and columns, "
        "and every row in them. Back up the database, then run it again with --yes to confirm"]
    assert migrations.current_revision(database_url) == head

    def typed(answer: bytes) -> tuple[int, str]:
        leader, follower = pty.openpty()
        run = subprocess.Popen([sys.executable, "-m", "core.cli", "db", "downgrade", "base"],
                               cwd=tmp_path, env=environment(tmp_path, database_url),
                               stdin=follower, stdout=follower, stderr=follower)
        os.close(follower)
        os.write(leader, answer)
        out = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        os.close(leader)
        return run.wait(timeout=300), out.decode()

    code, out = typed(b"no\n")
    assert code == 1 and "Type yes to go on" in out and "downgrade cancelled" in out
    assert migrations.current_revision(database_url) == head
    code, out = typed(b"yes\n")
    assert code == 0, out
    assert migrations.current_revision(database_url) is None

    assert mami(["db", "upgrade"], tmp_path, database_url).returncode == 0
    forced = mami(["db", "downgrade", "token_ws_auth@base", "--yes"], tmp_path, database_url)
    assert forced.returncode == 0, forced.stderr
    assert "token_ws_auth: base (empty) (behind" in forced.stdout


def test_a_schema_ahead_of_the_code_names_the_revision(tmp_path: Path, postgres_url: str) -> None:
    assert mami(["db", "upgrade"], tmp_path, postgres_url).returncode == 0
    head = migrations.head_revision()
    set_version(postgres_url, "alembic_version", "0099_from_the_future")
    for args in (["db", "upgrade"], ["db", "check"], ["serve", "--port", "1"]):
        result = mami(args, tmp_path, postgres_url)
        assert result.returncode == 1, args
        assert result.stderr.strip().splitlines() == [
            "mami: error: database schema is at 0099_from_the_future, a revision this version "
            f"of mami does not have (its newest is {head}): a newer mami upgraded it. Deploy "
            f"that version, or run its `mami db downgrade {head}` first"], args
    set_version(postgres_url, "alembic_version", head)

    set_version(postgres_url, "alembic_version_memory", "memory_0042")
    check = mami(["db", "check"], tmp_path, postgres_url)
    assert check.returncode == 1
    assert "branch memory is at memory_0042, a revision this version of mami does not have " \
           "(its newest is memory_0002)" in check.stderr
    assert "`mami db downgrade memory@memory_0002`" in check.stderr


def test_serve_on_a_schema_behind_is_one_line(tmp_path: Path, postgres_url: str) -> None:
    result = mami(["serve", "--port", "1"], tmp_path, postgres_url)
    assert result.returncode == 1
    head = migrations.head_revision()
    assert result.stderr.strip().splitlines() == [
        f"mami: error: database schema is at nothing but mami needs {head}: "
        "run `mami db upgrade`"]
