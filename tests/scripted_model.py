"""A scripted OpenAI-compatible chat server for the tool tests: real HTTP/1.1 and real
server-sent events over loopback, answering each request as a test script says.

The script is a function from the request body (as the server received it) to a
:class:`Reply`: text, tool calls, or both. Tool calls are streamed as OpenAI streams
them: a first fragment with the id, type and name and empty arguments, then the
arguments in pieces. Every request body is kept in ``requests``.
"""

from __future__ import annotations

import json
import socketserver
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.loopback_http import LoopbackServer, read_request, write_chunk


@dataclass
class Call:
    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    @property
    def text(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


@dataclass
class Reply:
    text: str = ""
    calls: list[Call] = field(default_factory=list)


Script = Callable[[dict[str, Any]], Reply]


def last_tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool messages at the end of a request's messages."""
    results: list[dict[str, Any]] = []
    for message in reversed(body["messages"]):
        if message.get("role") != "tool":
            break
        results.insert(0, message)
    return results


class ScriptedModel(LoopbackServer):
    """``ScriptedModel(script).start()``; ``url`` is its ``/v1`` root."""

    def __init__(self, script: Script) -> None:
        super().__init__()
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self.counter = 0

    def handle(self, h: socketserver.StreamRequestHandler) -> None:
        while self._answer(h):  # keep-alive: httpx reuses connections
            pass

    def _answer(self, h: socketserver.StreamRequestHandler) -> bool:
        request = read_request(h)
        if request is None:
            return False
        _headers, body = request
        self.requests.append(body)
        try:
            reply = self.script(body)
        except Exception as exc:  # the script's own failure: a 500 the test will see
            payload = json.dumps({"error": {"message": f"script failed: {exc!r}"}}).encode()
            h.wfile.write(b"HTTP/1.1 500 Error\r\nContent-Type: application/json\r\n"
                          + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
            h.wfile.flush()
            return True
        h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                      b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")

        def event(choice_delta: dict[str, Any] | None, finish: str | None = None,
                  usage: dict[str, int] | None = None) -> None:
            chunk: dict[str, Any] = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk",
                                     "created": 0, "model": body.get("model", "scripted"),
                                     "choices": [] if choice_delta is None else [
                                         {"index": 0, "delta": choice_delta,
                                          "finish_reason": finish}]}
            if usage is not None:
                chunk["usage"] = usage
            write_chunk(h, b"data: " + json.dumps(chunk).encode() + b"\n\n")

        event({"role": "assistant", "content": ""})
        for i in range(0, len(reply.text), 7):
            event({"content": reply.text[i:i + 7]})
        for index, call in enumerate(reply.calls):
            self.counter += 1
            ident = call.id or f"call_scripted_{self.counter}"
            event({"tool_calls": [{"index": index, "id": ident, "type": "function",
                                   "function": {"name": call.name, "arguments": ""}}]})
            text = call.text
            middle = len(text) // 2
            for piece in (text[:middle], text[middle:]):
                event({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        event({}, "tool_calls" if reply.calls else "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            event(None, usage={"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})
        write_chunk(h, b"data: [DONE]\n\n")
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()
        return True
