"""Test support for the chat tests: plugin candidates, an event recorder, a test
authenticator, a real ``llama_cpp.server`` process and a stand-in OpenAI-compatible
server (real HTTP/1.1 over loopback) with fault modes."""

from __future__ import annotations

import importlib
import json
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from core import hookimpl
from core.chat import ChatCommand
from core.errors import AuthError
from core.events import MessageCompleted
from core.plugins import Candidate
from core.protocols import Principal
from plugins.local_llm import default_model_path
from tests.conftest import free_port
from tests.loopback_http import LoopbackServer, read_request, write_chunk

SMOLLM = default_model_path()
LOCAL_NAME = SMOLLM.name.removesuffix(".gguf")


def builtin(name: str, module: str) -> Candidate:
    return Candidate(name, module, "builtin", True, lambda: importlib.import_module(module))


def plugin_object(name: str, obj: Any) -> Candidate:
    return Candidate(name, f"tests.{name}", "builtin", True, lambda: obj)


class UnusedMemoryMethods:
    """The rest of the MemoryStore protocol for a stub store (mami checks providers
    against their protocol when they are registered)."""

    async def remember(self, owner: str, text: str, source_message_id: str | None = None
                       ) -> Any:
        raise NotImplementedError

    async def recall(self, owner: str, query: str, k: int = 5) -> list[Any]:
        raise NotImplementedError

    async def list_memories(self, owner: str) -> list[Any]:
        raise NotImplementedError

    async def delete_memory(self, owner: str, memory_id: str) -> bool:
        raise NotImplementedError

    async def erase_owner(self, owner: str) -> int:
        raise NotImplementedError

    async def history(self, owner: str, memory_id: str) -> list[Any]:
        raise NotImplementedError


class UnusedRetrieverMethods:
    """The rest of the Retriever protocol for a stub retriever."""

    async def ingest(self, owner: str, source: str, text: str, scope: str = "default") -> Any:
        raise NotImplementedError

    async def search(self, owner: str, query: str, k: int = 5, scopes: Any = None
                     ) -> list[Any]:
        raise NotImplementedError

    async def list_documents(self, owner: str) -> list[Any]:
        raise NotImplementedError

    async def delete_document(self, owner: str, document_id: str) -> bool:
        raise NotImplementedError

    async def erase_owner(self, owner: str) -> int:
        raise NotImplementedError


class CommandPlugin:
    """A plugin that adds one slash command (its hook takes only ``register``)."""

    def __init__(self, command: ChatCommand) -> None:
        self.command = command

    @hookimpl
    def register_chat_commands(self, register: Any) -> None:
        register(self.command)


def command_plugin(name: str, handler: Any) -> Candidate:
    """A plugin candidate whose chat command ``/<name>`` is answered by ``handler``."""
    return plugin_object(f"command-{name}", CommandPlugin(ChatCommand(name, handler)))


LOCAL = builtin("local-llm", "plugins.local_llm")
OPENAI = builtin("openai-llm", "plugins.openai_llm")


class Recorder:
    """A plugin that records every ``message_completed`` event."""

    def __init__(self) -> None:
        self.events: list[MessageCompleted] = []

    @hookimpl
    def message_completed(self, event: MessageCompleted, runtime: Any) -> None:
        self.events.append(event)


@dataclass
class HeaderAuthenticator:
    """A test authenticator: ``Authorization: Bearer <owner>`` authenticates ``owner``
    unless the owner is in ``revoked``. Sockets pass the owner as ``?owner=``."""

    name: str = "header-auth"
    revoked: set[str] = field(default_factory=set)

    async def authenticate_http(self, headers: Mapping[str, str], client: str | None) -> Principal:
        value = headers.get("authorization", "")
        if not value.startswith("Bearer ") or not value[7:] or value[7:] in self.revoked:
            raise AuthError("not authenticated")
        return Principal(owner=value[7:])

    async def accept_websocket(self, socket: Any) -> Principal | None:
        owner = socket.query_params.get("owner")
        await socket.accept()
        if not owner or owner in self.revoked:
            await socket.close(code=4401, reason="not authenticated")
            return None
        return Principal(owner=owner)

    async def still_valid(self, principal: Principal) -> bool:
        return principal.owner not in self.revoked


class AuthPlugin:
    def __init__(self, authenticator: HeaderAuthenticator) -> None:
        self.authenticator = authenticator

    @hookimpl
    def register_authenticators(self, register: Any, runtime: Any) -> None:
        register(self.authenticator)


class LlamaServer:
    """``python -m llama_cpp.server`` with the SmolLM2 model on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(SMOLLM),
             "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048",
             "--model_alias", "smollm2"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def wait(self, timeout: float = 90) -> LlamaServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("llama_cpp.server exited")
            try:
                if httpx.get(self.url + "/models", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("llama_cpp.server did not start")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def chunk(text: str | None = None, finish: str | None = None) -> bytes:
    delta = {"content": text} if text is not None else {}
    body = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "standin",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class StandIn(LoopbackServer):
    """An OpenAI-compatible chat server that misbehaves on request.

    ``mode``: ``ok`` (streams ``words`` then [DONE]), ``cut`` (two words, then the
    connection drops mid-body), ``end_early`` (two words, then a clean end without
    [DONE]), ``status500``, ``status400``, ``flaky`` (503 for the first ``failures``
    requests, then ok), ``stall_first`` (headers, then silence), ``stall_mid`` (one
    word, then silence), ``gated`` (like ``ok``, but before each word after the first
    it waits for the next event of ``gates``, while there is one). ``requests`` records
    (headers, body) of each request. When a request asks for
    ``stream_options.include_usage`` a usage chunk with ``usage`` (prompt, completion
    tokens) follows the finish, as OpenAI sends it.
    """

    def __init__(self, mode: str = "ok") -> None:
        super().__init__()
        self.mode = mode
        self.words = ["Hello", " from", " the", " stand-in", "."]
        self.failures = 1
        self.usage = (17, 4)
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.stop_event = threading.Event()
        self.gates: list[threading.Event] = []

    def stop(self) -> None:
        self.stop_event.set()
        super().stop()

    def handle(self, h: socketserver.StreamRequestHandler) -> None:
        request = read_request(h)
        if request is None:
            return
        headers, body = request
        self.requests.append((headers, body))
        mode = self.mode
        if mode == "flaky":
            mode = "status503" if len(self.requests) <= self.failures else "ok"
        if mode.startswith("status"):
            status = int(mode[6:])
            payload = json.dumps({"error": {"message": f"stand-in says {status}"}}).encode()
            h.wfile.write(f"HTTP/1.1 {status} Error\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                          + payload)
            return
        h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                      b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        h.wfile.flush()

        if mode == "stall_first":
            self.stop_event.wait(30)
            return
        words = self.words[:2] if mode in ("cut", "end_early") else self.words
        if mode == "stall_mid":
            words = self.words[:1]
        for i, word in enumerate(words):
            if mode == "gated" and 0 < i <= len(self.gates):
                self.gates[i - 1].wait(30)
            write_chunk(h, chunk(word))
        if mode == "stall_mid":
            self.stop_event.wait(30)
            return
        if mode == "cut":
            h.wfile.write(b"40\r\ndata: {\"choices\"")  # half a chunk, then the line drops
            h.wfile.flush()
            return
        if mode in ("ok", "gated"):
            write_chunk(h, chunk(None, "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                prompt, completion = self.usage
                write_chunk(h, b"data: " + json.dumps({
                    "id": "x", "object": "chat.completion.chunk", "created": 0,
                    "model": "standin", "choices": [],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                              "total_tokens": prompt + completion}}).encode() + b"\n\n")
            write_chunk(h, b"data: [DONE]\n\n")
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
