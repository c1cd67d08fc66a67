"""A hand-written HTTP/1.1 server on loopback for the model stand-ins: a threaded TCP
server on an ephemeral port of 127.0.0.1 whose subclass answers each connection byte by
byte, so it can stream, stall or break exactly as a test needs."""

from __future__ import annotations

import json
import socketserver
import threading
from typing import Any, Self


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class LoopbackServer:
    """``start()`` serves; ``url`` is the ``/v1`` root; :meth:`handle` (a subclass's)
    answers one connection."""

    def __init__(self) -> None:
        owner = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                owner.handle(self)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Self:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, h: socketserver.StreamRequestHandler) -> None:
        raise NotImplementedError


def read_request(h: socketserver.StreamRequestHandler
                 ) -> tuple[dict[str, str], dict[str, Any]] | None:
    """The next request on the connection: its headers (lower-case names) and its JSON
    body; ``None`` when the client closed the connection instead."""
    request_line = h.rfile.readline()
    if not request_line.strip():
        return None
    headers: dict[str, str] = {}
    while True:
        line = h.rfile.readline().decode().strip()
        if not line:
            break
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    body = json.loads(h.rfile.read(int(headers.get("content-length", "0"))) or b"{}")
    return headers, body


def write_chunk(h: socketserver.StreamRequestHandler, data: bytes) -> None:
    """One chunk of a ``Transfer-Encoding: chunked`` body, sent at once."""
    h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    h.wfile.flush()
