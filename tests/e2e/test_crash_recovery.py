"""``kill -9`` of a real ``mami serve`` in the middle of streamed replies (SSE and
WebSocket), then a restart: every answer is final, the text saved before the kill is
kept, and the same client message id then completes the turn."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.conftest import free_port
from tests.e2e.conftest import server_config
from tests.e2e.server import MamiServer
from tests.forge_standin import ForgeStandIn

pytestmark = pytest.mark.slow

WORDS = 60
FULL = "".join(f"w{n} " for n in range(1, WORDS + 1))


@pytest.fixture
def slow_mami(tmp_path: Path, forge: ForgeStandIn, echo_plugin_site: Path
              ) -> Iterator[MamiServer]:
    """``mami serve`` whose model answers ``w1 w2 ... w60``, a word every 50 ms."""
    config = server_config(tmp_path / "data", forge.url, llm="slow-count", auth=False)
    server = MamiServer(tmp_path, config, free_port(), env={
        "PYTHONPATH": str(echo_plugin_site), "MAMI_E2E_SLOW_DELAY": "0.05",
        "MAMI_E2E_SLOW_WORDS": str(WORDS)})
    server.start()
    yield server
    server.stop()


class Reply:
    """One streamed reply read in a thread: its conversation and the text received."""

    def __init__(self, cid: str) -> None:
        self.cid = cid
        self.conversation = ""
        self.text = ""
        self.pieces = 0


def stream_sse(server: MamiServer, reply: Reply) -> None:
    body = {"model": "slow-count", "stream": True, "metadata": {"client_message_id": reply.cid},
            "messages": [{"role": "user", "content": f"question {reply.cid}"}]}
    try:
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30,
                          headers={"X-Mami-Conversation": "new"}) as response:
            reply.conversation = response.headers["X-Mami-Conversation"]
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    for choice in json.loads(line[6:]).get("choices", []):
                        piece = choice["delta"].get("content")
                        if piece:
                            reply.text += piece
                            reply.pieces += 1
    except httpx.HTTPError:
        pass  # the server was killed


def stream_ws(server: MamiServer, reply: Reply) -> None:
    try:
        with connect(server.url.replace("http", "ws") + "/ws/chat") as socket:
            socket.send(json.dumps({"type": "message", "content": f"question {reply.cid}",
                                    "client_message_id": reply.cid}))
            while True:
                event = json.loads(socket.recv(timeout=30))
                if event["type"] == "start":
                    reply.conversation = event["conversation_id"]
                elif event["type"] == "delta":
                    reply.text += event["text"]
                    reply.pieces += 1
                elif event["type"] == "end":
                    return
    except Exception:
        pass  # the server was killed


def ask_ws(server: MamiServer, cid: str) -> tuple[str, str]:
    """Send ``question <cid>`` over a WebSocket; the end status and the text."""
    with connect(server.url.replace("http", "ws") + "/ws/chat") as socket:
        socket.send(json.dumps({"type": "message", "content": f"question {cid}",
                                "client_message_id": cid}))
        text = ""
        while True:
            event = json.loads(socket.recv(timeout=60))
            if event["type"] == "delta":
                text += event["text"]
            elif event["type"] == "end":
                return event["status"], text
            elif event["type"] == "error":
                return f"error {event['code']}: {event['message']}", text


def messages(server: MamiServer, conversation: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.url}/api/conversations/{conversation}/messages", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_kill_9_mid_stream_then_restart_finishes_every_answer(slow_mami: MamiServer) -> None:
    sse = [Reply(f"sse-{n}") for n in range(4)]
    ws = [Reply(f"ws-{n}") for n in range(4)]
    threads = [threading.Thread(target=stream_sse, args=(slow_mami, r)) for r in sse]
    threads += [threading.Thread(target=stream_ws, args=(slow_mami, r)) for r in ws]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while min(r.pieces for r in sse + ws) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert min(r.pieces for r in sse + ws) >= 20, [(r.cid, r.pieces) for r in sse + ws]
    assert slow_mami.process is not None
    slow_mami.process.kill()  # SIGKILL: no shutdown code runs
    slow_mami.process.wait(timeout=10)
    for thread in threads:
        thread.join(timeout=30)
    assert all(r.text and len(r.text) < len(FULL) for r in sse + ws)

    slow_mami.start()
    for reply in sse + ws:
        rows = messages(slow_mami, reply.conversation)
        assert [(m["role"], m["status"]) for m in rows] == [("user", "complete"),
                                                            ("assistant", "interrupted")]
        saved = rows[1]["content"]
        # Saved at most 0.5 s apart: both are beginnings of the same answer.
        assert saved and FULL.startswith(saved) and FULL.startswith(reply.text), reply.cid
        assert len(saved) >= len("w1 w2 w3 "), (reply.cid, saved)
    every = httpx.get(slow_mami.url + "/api/conversations", timeout=30).json()
    assert not [m for c in every for m in messages(slow_mami, c["id"])
                if m["status"] == "streaming"]

    results: dict[str, Any] = {}

    def retry_sse(reply: Reply) -> None:
        results[reply.cid] = httpx.post(
            slow_mami.url + "/v1/chat/completions", timeout=60,
            headers={"X-Mami-Conversation": "new"},
            json={"model": "slow-count", "metadata": {"client_message_id": reply.cid},
                  "messages": [{"role": "user", "content": f"question {reply.cid}"}]})

    def retry_ws(reply: Reply) -> None:
        results[reply.cid] = ask_ws(slow_mami, reply.cid)

    retries = [threading.Thread(target=retry_sse, args=(r,)) for r in sse]
    retries += [threading.Thread(target=retry_ws, args=(r,)) for r in ws]
    for thread in retries:
        thread.start()
    for thread in retries:
        thread.join(timeout=90)
    for reply in sse:
        response = results[reply.cid]
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == FULL
    for reply in ws:
        assert results[reply.cid] == ("complete", FULL)
    for reply in sse + ws:
        rows = messages(slow_mami, reply.conversation)
        assert [(m["role"], m["status"], m["content"]) for m in rows] == [
            ("user", "complete", f"question {reply.cid}"), ("assistant", "complete", FULL)]
