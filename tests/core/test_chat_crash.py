"""Crash consistency of stored chat turns: partial text saved while streaming, answers
of dead processes finished as interrupted (and only theirs), a retry of an abandoned
turn answered again, and an SSE reply whose final write fails ending with an error
event. The kill -9 of a real server is in tests/e2e/test_crash_recovery.py."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col

from core import leases
from core.app import create_app
from core.chat import (
    ChatRequest,
    Finished,
    finish_abandoned,
    keep_finishing_abandoned,
    start_turn,
)
from core.errors import ERROR_TYPES
from core.models import Conversation, Message, Owner, utcnow
from tests.chat_support import OPENAI, StandIn
from tests.core.test_chat_pipeline import ALICE, drain, openai_table, rows
from tests.core.test_database_faults import immutable


def dead_holder() -> str:
    """The lease holder name of a process of this host that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    ticks = leases._start_ticks(child.pid)
    child.wait()
    return f"{socket.gethostname()}:{child.pid}:{ticks}/{uuid.uuid4().hex[:12]}"


def test_a_holder_is_gone_only_when_its_process_on_this_host_ended() -> None:
    assert leases.holder_gone(dead_holder())
    assert not leases.holder_gone(leases.new_holder())
    assert not leases.holder_gone(None)
    # Another host: only the lease's expiry can tell.
    assert not leases.holder_gone("elsewhere.example:1:1/abc")
    # pid 1 lives, but a holder that started at another time is a reused pid.
    ticks = leases._start_ticks(1)
    if ticks:
        assert not leases.holder_gone(f"{socket.gethostname()}:1:{ticks}/x")
        assert leases.holder_gone(f"{socket.gethostname()}:1:{int(ticks) + 1}/x")


async def add_answer(runtime: Any, holder: str | None, lease: timedelta | None,
                     content: str = "partial") -> str:
    conversation = uuid.uuid4().hex
    async with runtime.db.session() as session:
        if await session.get(Owner, "alice") is None:
            session.add(Owner(id="alice"))
            await session.flush()
        session.add(Conversation(id=conversation, owner_id="alice"))
        await session.flush()
        user = Message(id=uuid.uuid4().hex, conversation_id=conversation, seq=1, role="user",
                       content="q")
        session.add(user)
        session.add(Message(id=uuid.uuid4().hex, conversation_id=conversation, seq=2,
                            role="assistant", content=content, status="streaming",
                            reply_to=user.id, lease_owner=holder,
                            lease_until=utcnow() + lease if lease is not None else None))
        await session.commit()
    return conversation


async def test_only_answers_of_dead_or_expired_holders_are_finished(
    make_runtime: Any, database_url: str
) -> None:
    runtime = await make_runtime(database_url=database_url)
    live_elsewhere = await add_answer(runtime, "other-host:7:1/a", timedelta(seconds=30))
    live_here = await add_answer(runtime, leases.new_holder(), timedelta(seconds=30))
    expired = await add_answer(runtime, "other-host:7:1/b", timedelta(seconds=-1))
    dead = await add_answer(runtime, dead_holder(), timedelta(seconds=30), "w1 w2 ")
    assert await finish_abandoned(runtime) == 2
    status = {c: [(m.status, m.content) for m in await rows(runtime, c)][1]
              for c in (live_elsewhere, live_here, expired, dead)}
    assert status == {live_elsewhere: ("streaming", "partial"),
                      live_here: ("streaming", "partial"),
                      expired: ("interrupted", "partial"), dead: ("interrupted", "w1 w2 ")}


async def test_the_text_of_a_streaming_answer_is_saved_while_it_streams(
    make_runtime: Any, standin: StandIn
) -> None:
    runtime = await make_runtime(OPENAI, plugins=openai_table(standin, read_timeout=10.0))
    standin.mode = "stall_mid"  # one word, then silence
    turn = await start_turn(runtime, ALICE, ChatRequest("hi", conversation_id=None,
                                                        client_message_id="c1"))
    items = turn.run()
    assert await anext(items) == "Hello"
    saved = ""
    for _ in range(40):
        answer = (await rows(runtime, turn.conversation_id or ""))[1]
        saved = answer.content
        if saved:
            break
        await asyncio.sleep(0.05)
    assert (answer.status, saved) == ("streaming", "Hello")
    assert answer.lease_owner == turn.lease and answer.lease_until is not None
    await items.aclose()  # type: ignore[attr-defined]
    answer = (await rows(runtime, turn.conversation_id or ""))[1]
    assert (answer.status, answer.content, answer.lease_until) == ("interrupted", "Hello", None)


async def test_an_answer_outlives_its_database_being_read_only_for_a_while(
    make_runtime: Any, standin: StandIn, tmp_path: Any
) -> None:
    """The partial saves fail while the database file cannot be written; once it can
    again, the answer is finished and stored whole (the saver logged and went on; it
    used to end, and the turn then failed on the old error)."""
    database = tmp_path / "data" / "mami.db"
    runtime = await make_runtime(OPENAI, plugins=openai_table(standin),
                                 core={"database_url": f"sqlite:///{database}"})
    standin.mode = "gated"
    standin.gates = [threading.Event(), threading.Event()]
    turn = await start_turn(runtime, ALICE, ChatRequest("hi", conversation_id=None))
    items = turn.run()
    files = [database, Path(f"{database}-wal")]
    try:
        assert await anext(items) == "Hello"
        try:
            immutable(files, True)
        except (subprocess.CalledProcessError, FileNotFoundError):
            pytest.skip("chattr +i is not available here")
        standin.gates[0].set()
        assert await anext(items) == " from"
        await asyncio.sleep(1.5)  # three save intervals, each refused
        immutable(files, False)
        standin.gates[1].set()
        rest = [item async for item in items]
    finally:
        immutable(files, False)
        for gate in standin.gates:
            gate.set()
    finished = rest[-1]
    assert isinstance(finished, Finished) and finished.status == "complete", finished
    assert "".join(str(p) for p in rest[:-1]) == " the stand-in."
    answer = (await rows(runtime, turn.conversation_id or ""))[1]
    assert (answer.status, answer.content) == ("complete", "Hello from the stand-in.")


async def test_a_retry_of_a_turn_whose_process_died_answers_again(
    make_runtime: Any, standin: StandIn, database_url: str
) -> None:
    runtime = await make_runtime(OPENAI, database_url=database_url,
                                 plugins=openai_table(standin, read_timeout=10.0))
    standin.mode = "stall_mid"
    request = ChatRequest("hi", client_message_id="c1")
    turn = await start_turn(runtime, ALICE, request)
    items = turn.run()
    assert await anext(items) == "Hello"
    # The process answering it "dies": its lease now names a process that has ended.
    async with runtime.db.session() as session:
        await session.execute(update(Message).where(col(Message.id) == turn.message_id)
                              .values(lease_owner=dead_holder()))
        await session.commit()
    await items.aclose()  # type: ignore[attr-defined]
    first = (await rows(runtime, turn.conversation_id or ""))[1]
    assert first.status == "streaming"  # a turn that lost its lease writes nothing more
    standin.mode = "ok"
    again = await start_turn(runtime, ALICE, request)
    assert again.message_id == turn.message_id and again.replay is None
    pieces, finished = await drain(again)
    assert finished.status == "complete" and "".join(pieces) == "Hello from the stand-in."
    stored = await rows(runtime, turn.conversation_id or "")
    assert [(m.role, m.status, m.content) for m in stored] == [
        ("user", "complete", "hi"), ("assistant", "complete", "Hello from the stand-in.")]


def test_an_sse_reply_whose_final_write_fails_ends_with_an_error_event(
    make_config: Any, live_server: Any, standin: StandIn, tmp_path: Any
) -> None:
    config = make_config(plugins=openai_table(standin))
    server = live_server(create_app(config, candidates=[OPENAI]))
    assert httpx.get(server.url + "/health").status_code == 200
    database = sqlite3.connect(tmp_path / "data" / "mami.db")
    # A real refusal by the database of the answer's final write (the text saved on the
    # way, status still streaming, is allowed).
    database.execute("CREATE TRIGGER refuse_final BEFORE UPDATE OF status ON messages "
                     "WHEN NEW.status != 'streaming' BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    database.commit()
    database.close()
    events = []
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=30,
                      headers={"X-Mami-Conversation": "new"},
                      json={"model": "standin", "stream": True,
                            "messages": [{"role": "user", "content": "hi"}]}) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["message"] == "the answer could not be stored; retry", error
    assert error["type"] == ERROR_TYPES.get(503, "server_error")
    text = "".join(c["delta"].get("content") or "" for e in events[:-2]
                   for c in json.loads(e)["choices"])
    assert text == "Hello from the stand-in."


async def test_a_server_finishes_answers_abandoned_elsewhere_without_a_restart(
    make_runtime: Any, database_url: str
) -> None:
    runtime = await make_runtime(database_url=database_url)
    sweeper = asyncio.create_task(keep_finishing_abandoned(runtime, every=0.05))
    try:
        # Another host's process stopped renewing this answer's lease a second ago.
        gone = await add_answer(runtime, "other-host:7:1/c", timedelta(seconds=-1), "half")
        alive = await add_answer(runtime, "other-host:8:1/d", timedelta(seconds=30))
        for _ in range(100):
            if (await rows(runtime, gone))[1].status != "streaming":
                break
            await asyncio.sleep(0.05)
        assert [(m.status, m.content) for m in await rows(runtime, gone)][1] == (
            "interrupted", "half")
        assert (await rows(runtime, alive))[1].status == "streaming"
    finally:
        sweeper.cancel()
