"""`mami db` and `mami serve` facing a schema in the wrong state: concurrent upgrades take
turns, a downgrade asks first, a schema ahead or behind is one line naming the revision."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from core import migrations
from core.db import sync_url
from tests.conftest import free_port

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


# Two processes upgrade one fresh SQLite file per round: `mami db upgrade` (role cli) or
# the start-up path of `mami serve` (role start: Runtime.prepare_schema, as its lifespan
# runs it). Everything is imported first; the two meet at a file barrier before each round.
RACE = """
import json, os, sys, time
from pathlib import Path
role, me, other, work, rounds = sys.argv[1:4] + [Path(sys.argv[4]), int(sys.argv[5])]
import alembic.command, sqlmodel
import core.models
from core import cli, migrations
from core.config import load_config
from core.runtime import Runtime
migrations.plugin_sources()
for n in range(rounds):
    os.environ["MAMI_DATABASE_URL"] = f"sqlite:///{work / f'round-{n}' / 'mami.db'}"
    os.environ["MAMI_DATA_DIR"] = str(work / f"round-{n}")
    (work / f"ready-{n}-{me}").touch()
    while not (work / f"ready-{n}-{other}").exists():
        time.sleep(0.0002)
    try:
        if role == "cli":
            problem = None if cli.main(["db", "upgrade"]) == 0 else "mami db upgrade failed"
        else:
            runtime = Runtime(load_config(None))
            runtime.prepare_schema()
            problem = "; ".join(f"{name}: {record.error}" for name, record
                                in runtime.plugins.records.items()
                                if record.status == "failed") or None
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
    (work / f"result-{n}-{me}.json").write_text(json.dumps(problem))
"""
ROUNDS = 12


def chain_problems(url: str) -> list[str]:
    """What is wrong with the chains of a database that should be at head: a chain
    behind, or a version table with other than one row."""
    sources = migrations.plugin_sources()
    found = [f"{s.name} at {s.current}, head {s.head}"
             for s in migrations.states(url, sources) if s.current != s.head]
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            for table in [migrations.VERSION_TABLE, *(s.version_table for s in sources)]:
                rows = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()
                if rows != 1:
                    found.append(f"{table} has {rows} rows")
    finally:
        engine.dispose()
    return found


@pytest.mark.slow
@pytest.mark.parametrize("roles, database", [
    (("cli", "cli"), "fresh"), (("cli", "start"), "fresh"), (("start", "start"), "fresh"),
    (("cli", "start"), "old")])
def test_concurrent_upgrades_of_one_sqlite_file_take_turns(
    tmp_path: Path, roles: tuple[str, str], database: str
) -> None:
    """Without a lock the two run the same migrations at once ("table already exists",
    "duplicate column", a chain left half done); with it the second waits and then finds
    the work done, in every round. An old file is at core's first revision (which made
    the built-in plugins' tables too, that their chains adopt)."""
    if database == "old":
        first = ScriptDirectory.from_config(migrations.alembic_config("sqlite://")).get_base()
        for n in range(ROUNDS):
            migrations.upgrade(f"sqlite:///{tmp_path / f'round-{n}' / 'mami.db'}", first)
    runs = [subprocess.Popen([sys.executable, "-c", RACE, role, me, other, str(tmp_path),
                              str(ROUNDS)],
                             cwd=tmp_path, env=environment(tmp_path, "sqlite://"), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for role, me, other in ((roles[0], "a", "b"), (roles[1], "b", "a"))]
    outputs = [(run.wait(timeout=600), *run.communicate()) for run in runs]
    assert [code for code, _, _ in outputs] == [0, 0], [err[-3000:] for _, _, err in outputs]
    failed: dict[int, list[str]] = {}
    for n in range(ROUNDS):
        problems = [f"{me}: {json.loads((tmp_path / f'result-{n}-{me}.json').read_text())}"
                    for me in "ab"]
        problems = [p.splitlines()[0] for p in problems if not p.endswith(": None")]
        problems += chain_problems(f"sqlite:///{tmp_path / f'round-{n}' / 'mami.db'}")
        if problems:
            failed[n] = problems
    errors = [line for _, _, err in outputs for line in err.splitlines() if "error" in line]
    assert failed == {}, f"{len(failed)} of {ROUNDS} rounds failed: {failed}; {errors[:6]}"


WAITS = "waiting for another process's schema migration"


def read_until(proc: subprocess.Popen[str], wanted: str) -> str:
    """The output of ``proc`` up to and including the first line holding ``wanted``
    (all of it, if the process ends first)."""
    assert proc.stdout is not None
    seen = ""
    for line in proc.stdout:
        seen += line
        if wanted in line:
            break
    return seen


@pytest.mark.parametrize("command, database", [
    ("db upgrade", "sqlite"), ("serve", "sqlite"),
    pytest.param("db upgrade", "postgres", marks=pytest.mark.postgres)])
def test_a_process_meeting_a_migration_waits_then_finds_it_done(
    tmp_path: Path, command: str, database: str, request: pytest.FixtureRequest
) -> None:
    """While this process holds the migration lock of an empty database (and upgrades
    it), ``mami db upgrade`` or ``mami serve`` (which upgrades SQLite on start) says it
    waits and changes nothing; once the lock is released it finds the schema at head and
    carries on. SQLite's lock is a file beside the database, PostgreSQL's an advisory
    lock."""
    url = (str(request.getfixturevalue("postgres_url")) if database == "postgres"
           else f"sqlite:///{tmp_path / 'data' / 'mami.db'}")
    port = free_port()
    args = ["serve", "--port", str(port)] if command == "serve" else command.split()
    with migrations.schema_lock(url):
        proc = subprocess.Popen([sys.executable, "-m", "core.cli", *args], cwd=tmp_path,
                                env=environment(tmp_path, url), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            before = read_until(proc, WAITS)
            held = (str(migrations.lock_file(tmp_path / "data" / "mami.db"))
                    if database == "sqlite" else "advisory lock")
            assert WAITS in before and held in before, before
            assert migrations.current_revision(url) is None
            migrations.upgrade_all(url)
        except BaseException:
            proc.kill()
            raise
    try:
        if command == "serve":
            after = read_until(proc, "Application startup complete")
            assert "Application startup complete" in after, after
            assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).status_code == 200
            assert "upgrading" not in before + after
        else:
            after = proc.communicate(timeout=300)[0]
            assert proc.returncode == 0, before + after
            assert f"database at {migrations.head_revision()}" in after
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.communicate(timeout=60)
    assert chain_problems(url) == []


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
