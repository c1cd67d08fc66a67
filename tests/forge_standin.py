"""A stand-in for a Stable Diffusion WebUI Forge / AUTOMATIC1111 server.

A real HTTP server on loopback (stdlib ``ThreadingHTTPServer`` in a thread) speaking
``/sdapi/v1/txt2img``, ``progress``, ``interrupt``, ``sd-models`` and ``options``,
returning real PNGs made with Pillow. Like Forge it runs one generation at a time
behind a lock. ``mode`` picks a fault:

ok, slow (answers after ``delay`` s, reporting progress), stall (never answers until
interrupted or stopped), refuse (nothing listens: connection refused), oom (500 with
an ``OutOfMemoryError`` body), 503, 502, reject (422), malformed (invalid JSON),
bad_base64, not_image, empty (``images: []``), flapping (every other call 503).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODES = ("ok", "slow", "stall", "refuse", "oom", "503", "502", "reject", "malformed",
         "bad_base64", "not_image", "empty", "flapping")


def make_png(width: int, height: int, seed: int) -> bytes:
    from PIL import Image

    colour = (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


class ForgeStandIn:
    """Start with :meth:`start`; read counters (``calls``, ``prompts``, ``interrupts``)."""

    def __init__(self, mode: str = "ok", delay: float = 0.5, auth: tuple[str, str] | None = None,
                 port: int = 0) -> None:
        self.mode = mode
        self.delay = delay
        self.auth = auth
        self.port = port
        self.calls: Counter[str] = Counter()
        self.prompts: Counter[str] = Counter()
        self.interrupts = 0
        self.auth_failures = 0
        self.last_payload: dict[str, Any] = {}
        self.options: dict[str, Any] = {"sd_model_checkpoint": "standin-v1.safetensors"}
        self._lock = threading.Lock()  # one generation at a time, as in Forge
        self._counter_lock = threading.Lock()
        self._interrupt = threading.Event()
        self.gate = threading.Event()  # txt2img calls wait here while it is cleared
        self.gate.set()
        self._stopping = threading.Event()
        self._job_started: float | None = None
        self._job_length = 0.0
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[Any] = set()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ForgeStandIn:
        """Listen (on the same port as before, if restarted)."""
        standin = self

        class Handler(_Handler):
            owner = standin

        server = _Server(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._stopping.clear()
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening: later connections are refused."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for connection in list(self._connections):  # kept-alive sockets die too
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def set_mode(self, mode: str) -> None:
        assert mode in MODES, mode
        listening = self._server is not None
        if mode == "refuse" and listening:
            self.stop()
        elif mode != "refuse" and not listening:
            self.start()
        self.mode = mode

    def count(self, key: str, prompt: str | None = None) -> int:
        with self._counter_lock:
            self.calls[key] += 1
            if prompt is not None:
                self.prompts[prompt] += 1
            return self.calls[key]

    def progress(self) -> float:
        started = self._job_started
        if started is None or self._job_length <= 0:
            return 0.0
        return min(0.99, (time.monotonic() - started) / self._job_length)

    def generate(self, payload: dict[str, Any]) -> tuple[int, bytes]:
        """Run one txt2img under the lock; returns (status, body)."""
        number = self.count("txt2img", str(payload.get("prompt", "")))
        self.last_payload = payload
        self.gate.wait(60)
        mode = self.mode
        if mode == "flapping":
            mode = "503" if number % 2 else "ok"
        simple = {
            "oom": (500, {"error": "OutOfMemoryError", "detail": "",
                          "body": "", "errors": "CUDA out of memory. Tried to allocate 2.00 GiB"}),
            "503": (503, {"detail": "Service Unavailable"}),
            "502": (502, {"detail": "Bad Gateway"}),
            "reject": (422, {"detail": [{"loc": ["body", "width"], "msg": "bad width"}]}),
            "empty": (200, {"images": [], "parameters": payload, "info": "{}"}),
            "bad_base64": (200, {"images": ["@@not base64@@"], "parameters": {}, "info": "{}"}),
            "not_image": (200, {"images": [base64.b64encode(b"hello, not a png").decode()],
                                "parameters": {}, "info": "{}"}),
        }
        if mode in simple:
            status, body = simple[mode]
            return status, json.dumps(body).encode()
        if mode == "malformed":
            return 200, b'{"images": ["iVBOR'
        with self._lock:
            self._interrupt.clear()
            self._job_started = time.monotonic()
            self._job_length = self.delay if mode == "slow" else 0.0
            try:
                if mode == "stall":
                    while not (self._interrupt.is_set() or self._stopping.is_set()):
                        time.sleep(0.01)
                    return 500, json.dumps({"error": "Interrupted"}).encode()
                if mode == "slow":
                    self._interrupt.wait(self.delay)
            finally:
                self._job_started = None
        seed = int(payload.get("seed", -1))
        seed = seed if seed >= 0 else 1234
        png = make_png(int(payload.get("width", 64)), int(payload.get("height", 64)), seed)
        info = {"seed": seed, "sd_model_name": self.options["sd_model_checkpoint"],
                "sampler_name": payload.get("sampler_name", "Euler a")}
        return 200, json.dumps({"images": [base64.b64encode(png).decode()],
                                "parameters": payload, "info": json.dumps(info)}).encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up (timeouts, interrupts) are part of the test


class _Handler(BaseHTTPRequestHandler):
    owner: ForgeStandIn
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.owner._connections.add(self.connection)

    def finish(self) -> None:
        self.owner._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def _authorised(self) -> bool:
        if self.owner.auth is None:
            return True
        user, password = self.owner.auth
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        if self.headers.get("Authorization") == expected:
            return True
        self.owner.auth_failures += 1
        self._send(401, {"detail": "Not authenticated"})
        return False

    def _send(self, status: int, body: Any) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        data = json.loads(raw or b"{}")
        return data if isinstance(data, dict) else {}

    def do_GET(self) -> None:
        if not self._authorised():
            return
        path = self.path.split("?")[0]
        owner = self.owner
        if path == "/sdapi/v1/progress":
            owner.count("progress")
            self._send(200, {"progress": owner.progress(), "eta_relative": 0.0,
                             "state": {"interrupted": owner._interrupt.is_set(), "job_count": 1},
                             "current_image": None, "textinfo": None})
        elif path == "/sdapi/v1/sd-models":
            owner.count("sd-models")
            if owner.mode == "stall":
                owner._stopping.wait(30)
            self._send(200, [{"title": "standin-v1.safetensors [abc123]",
                              "model_name": "standin-v1", "hash": "abc123",
                              "sha256": "abc123" * 8, "filename": "/models/standin-v1.safetensors",
                              "config": None}])
        elif path == "/sdapi/v1/options":
            self._send(200, owner.options)
        else:
            self._send(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        if not self._authorised():
            return
        path = self.path.split("?")[0]
        owner = self.owner
        try:
            payload = self._body()
        except ValueError:
            self._send(422, {"detail": "invalid JSON"})
            return
        if path == "/sdapi/v1/txt2img":
            status, body = owner.generate(payload)
            self._send(status, body)
        elif path == "/sdapi/v1/interrupt":
            owner.interrupts += 1
            owner.count("interrupt")
            owner._interrupt.set()
            self._send(200, {})
        elif path == "/sdapi/v1/options":
            owner.options.update(payload)
            self._send(200, None)
        else:
            self._send(404, {"detail": "Not Found"})


if __name__ == "__main__":
    import sys

    standin = ForgeStandIn(mode=sys.argv[1] if len(sys.argv) > 1 else "ok").start()
    print(standin.url, flush=True)
    threading.Event().wait()
