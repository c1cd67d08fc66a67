"""Token storage, tickets and the CLI on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlmodel import select

from core import migrations
from core.cli import main
from core.db import Database
from core.errors import BadRequest
from core.models import Owner
from plugins.token_ws_auth import tickets, tokens
from plugins.token_ws_auth.models import ApiToken

KEY = b"k" * 32


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    migrations.upgrade_all(database_url)
    database = Database(database_url)
    yield database
    await database.close()


async def test_only_the_hash_is_stored(db: Database) -> None:
    token, info = await tokens.create_token(db, "ann", "laptop")
    assert re.fullmatch(r"mami_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", token)
    async with db.session() as session:
        row = await session.get(ApiToken, info.id)
        owner = await session.get(Owner, "ann")
    assert row is not None and owner is not None
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in json.dumps(row.model_dump(), default=str)
    assert (await tokens.verify_token(db, token)) == info


async def test_verify_refuses_wrong_expired_and_revoked(db: Database) -> None:
    token, info = await tokens.create_token(db, "ben", expires_in=timedelta(hours=1))
    assert await tokens.verify_token(db, token[:-1] + ("a" if token[-1] != "a" else "b")) is None
    assert await tokens.verify_token(db, token.replace(info.id, "0" * 16)) is None
    async with db.session() as session:
        row = await session.get(ApiToken, info.id)
        assert row is not None
        row.expires_at = tokens.now() - timedelta(seconds=1)
        await session.commit()
    assert await tokens.verify_token(db, token) is None
    other, other_info = await tokens.create_token(db, "ben")
    assert await tokens.revoke_token(db, other_info.id, owner="someone-else") is None
    assert await tokens.verify_token(db, other) is not None
    revoked = await tokens.revoke_token(db, other_info.id, owner="ben")
    assert revoked is not None and revoked.revoked_at is not None
    assert await tokens.verify_token(db, other) is None
    assert await tokens.active_token(db, other_info.id, "ben") is None


async def test_list_is_per_owner(db: Database) -> None:
    _, first = await tokens.create_token(db, "cat")
    _, second = await tokens.create_token(db, "cat")
    await tokens.create_token(db, "dan")
    assert [t.id for t in await tokens.list_tokens(db, "cat")] == [first.id, second.id]
    assert len(await tokens.list_tokens(db)) == 3
    assert await tokens.count_tokens(db) == 3


@pytest.mark.parametrize("owner", ["", "  ", "a b", "x" * 129, "tab\there"])
async def test_bad_owner_is_refused_and_nothing_written(db: Database, owner: str) -> None:
    with pytest.raises(BadRequest):
        await tokens.create_token(db, owner)
    async with db.session() as session:
        assert (await session.exec(select(ApiToken))).all() == []


@pytest.mark.parametrize(("text", "seconds"), [("30d", 2592000), ("12h", 43200), ("15m", 900),
                                               ("90s", 90), ("2w", 1209600), ("45", 45)])
def test_parse_duration(text: str, seconds: int) -> None:
    assert tokens.parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "d", "0d", "-1d", "3y", "1.5h", "99999999d"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(BadRequest):
        tokens.parse_duration(text)


def test_ticket_round_trip_and_expiry() -> None:
    ticket, claims = tickets.issue(KEY, "HS256", "eve", "tid1", ttl=30)
    assert tickets.verify(KEY, "HS256", ticket) == claims
    with pytest.raises(tickets.TicketError, match="expired"):
        tickets.verify(KEY, "HS256", ticket, now=time.time() + 31)
    with pytest.raises(tickets.TicketError, match="algorithm"):
        tickets.verify(KEY, "HS384", ticket)
    with pytest.raises(tickets.TicketError, match="signature"):
        tickets.verify(b"x" * 32, "HS256", ticket)


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), char=st.sampled_from("AQgw-_.=xyz0"))
def test_any_changed_character_is_refused(position: int, char: str) -> None:
    ticket, _ = tickets.issue(KEY, "HS256", "eve", "tid1", ttl=30)
    index = position % len(ticket)
    changed = ticket[:index] + char + ticket[index + 1:]
    if changed == ticket:
        return
    try:
        claims = tickets.verify(KEY, "HS256", changed)
    except tickets.TicketError:
        return
    # base64 padding bits can change without changing the decoded bytes
    assert claims == tickets.verify(KEY, "HS256", ticket)


def write_config(tmp_path: Path, database_url: str) -> str:
    path = tmp_path / "plugins.toml"
    path.write_text(f'[core]\ndata_dir = "{tmp_path}"\ndatabase_url = "{database_url}"\n')
    return str(path)


def test_cli_create_list_revoke(database_url: str, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    migrations.upgrade_all(database_url)
    config = write_config(tmp_path, database_url)
    assert main(["--config", config, "token", "create", "--owner", "zoe", "--expires", "30d",
                 "--name", "ci"]) == 0
    out = capsys.readouterr().out
    token = re.search(r"mami_[0-9a-f]{16}_\S+", out)
    assert token is not None
    token_id = token.group(0)[5:21]
    assert main(["--config", config, "token", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(t["id"], t["owner"], t["name"]) for t in listed] == [(token_id, "zoe", "ci")]
    assert token.group(0) not in json.dumps(listed)
    assert main(["--config", config, "token", "list"]) == 0
    assert re.search(rf"{token_id}\s+zoe\s+active", capsys.readouterr().out)
    assert main(["--config", config, "token", "revoke", token_id]) == 0
    assert main(["--config", config, "token", "list"]) == 0
    assert re.search(rf"{token_id}\s+zoe\s+revoked", capsys.readouterr().out)
    assert main(["--config", config, "token", "revoke", "nope"]) == 1
    refused = capsys.readouterr()  # an error goes to stderr, not into the command's output
    assert refused.out == ""
    assert refused.err.strip() == "mami: error: no token 'nope' (see `mami token list`)"


def test_cli_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'cli.db'}")
    assert main(["--config", config, "token", "create", "--owner", "zoe",
                 "--expires", "soon"]) == 1
    assert "invalid duration" in capsys.readouterr().err
    assert main(["--config", config, "token", "create", "--owner", "a b"]) == 1
    assert main(["--config", config, "token", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
