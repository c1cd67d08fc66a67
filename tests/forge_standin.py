"""A stand-in for a Stable Diffusion WebUI Forge / AUTOMATIC1111 server.

A real HTTP server on loopback (stdlib ``ThreadingHTTPServer`` in a thread) speaking
``/sdapi/v1/txt2img``, ``progress``, ``interrupt``, ``sd-models``, ``samplers``,
``schedulers`` and ``options``, returning real PNGs made with Pillow.

It models the parts of A1111 (>= 1.8) and Forge that decide who gets which image:

- one generation at a time behind a queue lock; a request is *pending* until it holds
  the lock, then it is ``current_task`` (its ``force_task_id``, or a made-up id) until
  it finishes. A client that hangs up does not stop it: it still runs (orphan work).
- ``state`` as ``shared.state.dict()``: ``interrupted`` is reset when a job begins and
  stays set after an interrupted job ends; ``job_timestamp`` is set when a job begins
  and is echoed in the response's ``info`` (A1111 uses whole seconds; here it is unique
  per job so tests are deterministic).
- ``POST /interrupt`` stops whatever is sampling *now*, whoever sent it; the sampler
  then returns its last latent, so that request still answers 200 with an
  under-sampled image. Each image carries a ``standin:steps`` PNG text chunk
  ``"done/total"`` so tests can tell a partial image from a complete one.
- an unknown sampler is a 404 (``validate_sampler_name``); an unknown checkpoint, a seed
  outside 0..2**32-1 and (with ``oom_pixels``) a too-large image are 500s.
- ``override_settings`` apply to one request and are restored afterwards unless
  ``override_settings_restore_afterwards`` is false.

``mode`` picks a fault: ok, slow (each job takes ``delay`` s, spread over its steps),
stall (sampling never advances until interrupted or stopped), refuse (nothing listens:
connection refused), oom (500 with an ``OutOfMemoryError`` body), 503, 502, reject (422),
malformed (invalid JSON), bad_base64, not_image, empty (``images: []``), flapping (every
other call 503).
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODES = ("ok", "slow", "stall", "refuse", "oom", "503", "502", "reject", "malformed",
         "bad_base64", "not_image", "empty", "flapping")
SEED_MAX = 2**32 - 1
STEPS_KEY = "standin:steps"
CHECKPOINTS = ("standin-v1.safetensors [abc123]", "dream-v2.safetensors [def456]")
SAMPLERS = (("Euler a", ["k_euler_a"]), ("Euler", ["k_euler"]), ("DPM++ 2M", ["k_dpmpp_2m"]))
SCHEDULERS = (("automatic", "Automatic"), ("karras", "Karras"), ("simple", "Simple"),
              ("beta", "Beta"))


def make_png(width: int, height: int, seed: int, steps: str = "") -> bytes:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    colour = (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)
    meta = PngInfo()
    if steps:
        meta.add_text(STEPS_KEY, steps)
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG", pnginfo=meta)
    return out.getvalue()


@dataclass
class Generation:
    """One txt2img that ran on the (pretend) GPU."""

    task_id: str
    steps: int
    steps_done: int = 0
    interrupted: bool = False


class ForgeStandIn:
    """Start with :meth:`start`; read counters (``calls``, ``prompts``, ``interrupts``),
    ``generations`` (every job that held the lock, with the steps it sampled) and
    ``interrupted_tasks``."""

    def __init__(self, mode: str = "ok", delay: float = 0.5, auth: tuple[str, str] | None = None,
                 port: int = 0, oom_pixels: int | None = None) -> None:
        self.mode = mode
        self.delay = delay
        self.auth = auth
        self.port = port
        self.oom_pixels = oom_pixels
        self.calls: Counter[str] = Counter()
        self.prompts: Counter[str] = Counter()
        self.interrupts = 0
        self.auth_failures = 0
        self.last_payload: dict[str, Any] = {}
        self.payloads: list[dict[str, Any]] = []
        self.options: dict[str, Any] = {"sd_model_checkpoint": CHECKPOINTS[0]}
        self.generations: list[Generation] = []
        self.interrupted_tasks: list[str | None] = []
        """``current_task`` at each interrupt: whose job it stopped."""
        self.current_task: str | None = None
        self.pending: set[str] = set()
        self.state: dict[str, Any] = {
            "skipped": False, "interrupted": False, "stopping_generation": False, "job": "",
            "job_count": 0, "job_timestamp": "0", "job_no": 0, "sampling_step": 0,
            "sampling_steps": 0}
        self._queue_lock = threading.Lock()  # one generation at a time, as in A1111/Forge
        self._state_lock = threading.Lock()
        self._ids = itertools.count(1)
        self.gate = threading.Event()  # txt2img calls wait here while it is cleared
        self.gate.set()
        self._stopping = threading.Event()
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
        with self._state_lock:
            self.calls[key] += 1
            if prompt is not None:
                self.prompts[prompt] += 1
            return self.calls[key]

    def interrupt(self) -> None:
        """``shared.state.interrupt()``: whatever samples now stops, whoever asked."""
        with self._state_lock:
            self.interrupts += 1
            self.calls["interrupt"] += 1
            self.interrupted_tasks.append(self.current_task)
            self.state["interrupted"] = True

    def progress(self) -> dict[str, Any]:
        """The body of ``GET /sdapi/v1/progress`` (A1111 >= 1.8 shape)."""
        with self._state_lock:
            state = dict(self.state)
            current = self.current_task
        steps = state["sampling_steps"]
        value = state["sampling_step"] / steps if state["job_count"] and steps else 0.0
        return {"progress": value, "eta_relative": 0.0, "state": state, "current_image": None,
                "textinfo": None, "current_task": current}

    def generate(self, payload: dict[str, Any]) -> tuple[int, bytes]:
        """One txt2img request: checks, then a generation under the queue lock."""
        number = self.count("txt2img", str(payload.get("prompt", "")))
        with self._state_lock:
            self.last_payload = payload
            self.payloads.append(payload)
        self.gate.wait(60)
        mode = self.mode
        if mode == "flapping":
            mode = "503" if number % 2 else "ok"
        simple = {
            "oom": (500, _oom()),
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
        refused = self._refuse(payload)
        if refused is not None:
            return refused
        task_id = str(payload.get("force_task_id") or f"task({next(self._ids)})")
        with self._state_lock:
            self.pending.add(task_id)
        with self._queue_lock:
            return self._run(payload, task_id, mode)

    def _refuse(self, payload: dict[str, Any]) -> tuple[int, bytes] | None:
        sampler = str(payload.get("sampler_name") or "")
        for _name, label in SCHEDULERS:  # "DPM++ 2M Karras": sampler and scheduler label
            sampler = sampler.removesuffix(f" {label}")
        if sampler and not any(sampler in (name, *aliases) for name, aliases in SAMPLERS):
            missing = {"error": "HTTPException", "detail": "Sampler not found"}
            return 404, json.dumps(missing).encode()
        scheduler = payload.get("scheduler")
        if scheduler and not any(scheduler in pair for pair in SCHEDULERS):
            return 500, json.dumps({"error": "KeyError", "errors": repr(scheduler)}).encode()
        checkpoint = (payload.get("override_settings") or {}).get("sd_model_checkpoint")
        if checkpoint and not any(checkpoint in (t, t.split(" [")[0], t.split(".")[0], t[-7:-1])
                                  for t in CHECKPOINTS):
            return 500, json.dumps({"error": "RuntimeError",
                                    "errors": f"model {checkpoint!r} not found"}).encode()
        if not -1 <= int(payload.get("seed", -1)) <= SEED_MAX:
            return 500, json.dumps({"error": "ValueError",
                                    "errors": "Seed must be between 0 and 2**32 - 1"}).encode()
        pixels = int(payload.get("width", 512)) * int(payload.get("height", 512))
        if self.oom_pixels is not None and pixels > self.oom_pixels:
            return 500, json.dumps(_oom()).encode()
        return None

    def _run(self, payload: dict[str, Any], task_id: str, mode: str) -> tuple[int, bytes]:
        steps = max(1, int(payload.get("steps", 20)))
        generation = Generation(task_id, steps)
        overrides = dict(payload.get("override_settings") or {})
        stored = {k: self.options.get(k) for k in overrides}
        with self._state_lock:
            self.pending.discard(task_id)
            self.current_task = task_id
            self.generations.append(generation)
            self.options.update(overrides)
            timestamp = f"{time.strftime('%Y%m%d%H%M%S')}-{len(self.generations)}"
            self.state.update(interrupted=False, skipped=False, job="txt2img", job_count=1,
                              job_no=0, sampling_step=0, sampling_steps=steps,
                              job_timestamp=timestamp)
        step_time = self.delay / steps if mode == "slow" else 0.0
        try:
            while generation.steps_done < steps:
                if self.state["interrupted"] or self._stopping.is_set():
                    generation.interrupted = True
                    break
                if mode == "stall":
                    time.sleep(0.01)
                    continue
                if step_time:
                    time.sleep(step_time)
                generation.steps_done += 1
                with self._state_lock:
                    self.state["sampling_step"] = generation.steps_done
        finally:
            with self._state_lock:
                self.current_task = None
                self.state.update(job="", job_count=0)
                if payload.get("override_settings_restore_afterwards", True):
                    self.options.update(stored)
        seed = int(payload.get("seed", -1))
        seed = seed if seed >= 0 else 1234
        png = make_png(int(payload.get("width", 64)), int(payload.get("height", 64)), seed,
                       f"{generation.steps_done}/{steps}")
        info = {"seed": seed, "sd_model_name": str(self.options["sd_model_checkpoint"]),
                "sampler_name": payload.get("sampler_name", "Euler"),
                "job_timestamp": timestamp}
        return 200, json.dumps({"images": [base64.b64encode(png).decode()],
                                "parameters": payload, "info": json.dumps(info)}).encode()


def _oom() -> dict[str, Any]:
    return {"error": "OutOfMemoryError", "detail": "", "body": "",
            "errors": "CUDA out of memory. Tried to allocate 2.00 GiB"}


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
            self._send(200, owner.progress())
        elif path == "/sdapi/v1/sd-models":
            owner.count("sd-models")
            if owner.mode == "stall":
                owner._stopping.wait(30)
            self._send(200, [{"title": title, "model_name": title.split(".")[0],
                              "hash": title[-7:-1], "sha256": title[-7:-1] * 10,
                              "filename": f"/models/{title.split(' [')[0]}", "config": None}
                             for title in CHECKPOINTS])
        elif path == "/sdapi/v1/samplers":
            owner.count("samplers")
            self._send(200, [{"name": name, "aliases": aliases, "options": {}}
                             for name, aliases in SAMPLERS])
        elif path == "/sdapi/v1/schedulers":
            owner.count("schedulers")
            self._send(200, [{"name": name, "label": label, "aliases": None,
                              "default_rho": -1, "need_inner_model": False}
                             for name, label in SCHEDULERS])
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
            owner.interrupt()
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
