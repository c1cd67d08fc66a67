"""local-llm's model process under a real server: killed mid-reply, broken on load,
streams closed mid-reply again and again. The server must stay up through all of it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets.sync.client as ws_client

from core.app import create_app
from plugins.local_llm.child import generate
from plugins.local_llm.cpu import amx_permitted, extra_buffers_allowed, native_features
from tests.chat_support import LOCAL

LONG = {"messages": [{"role": "user", "content": "Tell a very long story about ships."}],
        "max_tokens": 400, "stream": True}


@pytest.fixture
def server(make_config: Any, live_server: Any) -> Any:
    return live_server(create_app(make_config(plugins={"local-llm": {"n_ctx": 1024}}),
                                  candidates=[LOCAL]))


def plugin_health(server: Any) -> dict[str, Any]:
    report = httpx.get(server.url + "/health", timeout=10).json()
    return report["plugins"]["local-llm"]  # type: ignore[no-any-return]


def chat(server: Any, text: str = "Say hi.", max_tokens: int = 8) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", timeout=120, json={
        "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens})


def stored_reply(server: Any, conversation: str) -> dict[str, Any]:
    """The assistant row of a conversation once it is no longer ``streaming``."""
    deadline = time.monotonic() + 60
    while True:
        rows = httpx.get(f"{server.url}/api/conversations/{conversation}/messages").json()
        reply = rows[-1]
        if reply["status"] != "streaming" or time.monotonic() > deadline:
            return reply  # type: ignore[no-any-return]
        time.sleep(0.05)


def kill_mid_reply(server: Any, signum: int) -> tuple[list[str], dict[str, Any]]:
    """Start a long streamed reply, send ``signum`` to the model process after the first
    piece, and return the SSE events that followed and the stored reply."""
    assert chat(server).status_code == 200  # the model process is running
    pid = plugin_health(server)["health"]["pid"]
    events = []
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=LONG, timeout=60,
                      headers={"X-Mami-Conversation": "new"}) as response:
        conversation = response.headers["x-mami-conversation"]
        lines = (line for line in response.iter_lines() if line.startswith("data: "))
        while '"content": ""' in (first := next(lines)):
            pass  # the role chunk
        assert json.loads(first.removeprefix("data: "))["choices"][0]["delta"]["content"]
        os.kill(pid, signum)
        events = list(lines)
    return events, stored_reply(server, conversation)


@pytest.mark.parametrize(("signum", "words"), [
    (signal.SIGKILL, "SIGKILL"),
    (signal.SIGILL, "illegal instruction"),
])
def test_a_model_process_killed_mid_reply_ends_the_reply_not_the_server(
    server: Any, signum: int, words: str
) -> None:
    events, reply = kill_mid_reply(server, signum)
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert words in error["message"]
    assert reply["status"] == "interrupted" and reply["content"] and words in reply["error"]
    if signum == signal.SIGILL:
        assert "-DGGML_NATIVE=OFF" in reply["error"]  # the fix, as a command
    health = plugin_health(server)
    assert health["status"] == "degraded" and words in health["error"]
    # The next request starts a fresh model process and succeeds.
    response = chat(server)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    health = plugin_health(server)
    assert health["status"] == "ok" and health["health"]["restarts"] == 1


def test_a_hung_model_process_killed_before_it_answers_is_replaced(server: Any) -> None:
    assert chat(server).status_code == 200
    pid = plugin_health(server)["health"]["pid"]
    os.kill(pid, signal.SIGSTOP)  # hung: it holds the request before its first token
    killer = threading.Timer(0.5, os.kill, (pid, signal.SIGKILL))
    killer.start()
    try:
        response = chat(server)
    finally:
        killer.join()
    assert response.status_code == 200, response.text  # served by a fresh process
    health = plugin_health(server)
    assert health["health"]["pid"] != pid and health["health"]["restarts"] == 1


def test_a_model_that_fails_to_load_is_degraded_with_back_off(
    make_config: Any, live_server: Any, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + os.urandom(4096))
    server = live_server(create_app(
        make_config(plugins={"local-llm": {"model_path": str(broken)}}), candidates=[LOCAL]))
    assert plugin_health(server)["status"] == "ok"  # nothing tried yet
    first = chat(server)
    assert first.status_code == 503 and "could not be loaded" in first.json()["error"]["message"]
    second = chat(server)  # at once: a new attempt (the first failure waits for nothing)
    assert second.status_code == 503
    started = time.monotonic()
    third = chat(server)  # inside the back-off: refused at once, no new process
    assert third.status_code == 503 and "next attempt in" in third.json()["error"]["message"]
    assert time.monotonic() - started < 1.0
    health = plugin_health(server)
    assert health["status"] == "degraded" and "could not be loaded" in health["error"]
    assert health["health"]["retry_in"] > 0
    assert httpx.get(server.url + "/health").json()["status"] == "degraded"


def test_closing_the_sse_stream_at_once_50_times_leaves_every_reply_stored(
    server: Any,
) -> None:
    conversations = []
    for _ in range(50):
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=LONG,
                          timeout=60, headers={"X-Mami-Conversation": "new"}) as response:
            conversations.append(response.headers["x-mami-conversation"])
            for line in response.iter_lines():
                if '"content": "' in line and '"content": ""' not in line:
                    break  # the first real piece: leave now
    assert chat(server).status_code == 200
    statuses = {stored_reply(server, c)["status"] for c in conversations}
    assert statuses <= {"interrupted", "complete"}
    assert plugin_health(server)["health"]["restarts"] == 0


def test_cancelling_over_the_websocket_50_times_leaves_every_reply_stored(
    server: Any,
) -> None:
    ends = []
    with ws_client.connect(server.ws_url + "/ws/chat", open_timeout=10) as socket:
        for i in range(50):
            socket.send(json.dumps({"type": "message", "content": f"Story {i} about ships.",
                                    "conversation_id": None}))
            cancelled = False
            while True:
                event = json.loads(socket.recv(timeout=60))
                if event["type"] == "delta" and not cancelled:
                    socket.send(json.dumps({"type": "cancel"}))
                    cancelled = True
                if event["type"] in ("end", "error"):
                    ends.append(event)
                    break
    assert all(e["type"] == "end" for e in ends), ends
    assert {e["status"] for e in ends} <= {"interrupted", "complete"}
    assert chat(server).status_code == 200
    assert plugin_health(server)["health"]["restarts"] == 0


def test_the_installed_build_has_no_avx512_or_amx() -> None:
    """The default install must run on any x86-64 CPU with AVX2: no native build."""
    code = "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"
    info = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout
    assert "AVX2 = 1" in info or os.uname().machine != "x86_64", info
    assert native_features(info) == [], info
    assert native_features("CPU : AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 |") \
        == ["AVX512", "AVX512_VNNI", "AMX_INT8"]  # what a native build on a recent Xeon says


def test_extra_buffers_stay_off_where_amx_is_advertised_but_not_permitted() -> None:
    amx_build = "CPU : AVX2 = 1 | AMX_INT8 = 1 |"
    assert extra_buffers_allowed("auto", "CPU : AVX2 = 1 | REPACK = 1 |")
    assert extra_buffers_allowed("auto", amx_build) == amx_permitted()
    assert not extra_buffers_allowed("off", "CPU : AVX2 = 1 |")
    assert extra_buffers_allowed("on", amx_build)


def test_a_generation_cancelled_before_it_starts_still_sends_its_end() -> None:
    sent: list[dict[str, Any]] = []

    class Collect:
        def send(self, message: dict[str, Any]) -> None:
            sent.append(message)

    request = {"id": 7, "messages": [], "params": {}}
    generate(None, request, {7}, Collect())  # no model is touched for a cancelled request
    assert sent[0]["id"] == 7 and sent[0]["end"] == "cancelled" and len(sent) == 1
