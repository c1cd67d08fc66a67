"""The server's side of the model process: start it, talk to it, notice its death.

:class:`ModelProcess` is thread-based (a reader thread per pipe), so a blocking request
(``count``) works from any thread, and an async stream is fed from the reader with
``call_soon_threadsafe``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

log = logging.getLogger("mami.local_llm")

Handler = Callable[[dict[str, Any] | None], None]
"""Receives each answer to one request, then ``None`` if the process died first."""

PORTABLE_BUILD = ('CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --no-cache-dir '
                  '--force-reinstall --no-deps llama-cpp-python')


class ModelDied(Exception):
    """The model process ended; the message says how and what to do."""


def death_reason(returncode: int, last_error: str) -> str:
    """A sentence naming how the model process ended and the likely fix."""
    detail = f" (last output: {last_error})" if last_error else ""
    if returncode >= 0:
        return f"the model process exited with status {returncode}{detail}"
    signum = -returncode
    try:
        sig = signal.Signals(signum)
    except ValueError:
        return f"the model process died of signal {signum}{detail}"
    hints = {
        signal.SIGILL: ("illegal instruction: this llama.cpp build uses CPU instructions this "
                        f"machine cannot run; rebuild it portably: {PORTABLE_BUILD}"),
        signal.SIGKILL: ("killed, often by the kernel's out-of-memory killer: use a smaller "
                         "model or a smaller n_ctx"),
        signal.SIGABRT: "aborted by an assertion in llama.cpp",
        signal.SIGSEGV: "a crash in llama.cpp",
    }
    hint = f" ({hints[sig]})" if sig in hints else ""
    return f"the model process died of {sig.name}{hint}{detail}"


class ModelProcess:
    """One child process owning one loaded model (see :mod:`plugins.local_llm.child`)."""

    def __init__(self, settings: dict[str, Any], load_timeout: float) -> None:
        self.settings = settings
        self.load_timeout = load_timeout
        self.n_ctx = 0
        self.system_info = ""
        self.died: str | None = None
        self._handlers: dict[int, Handler] = {}
        self._next_id = 0
        self._lock = threading.Lock()
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._ready: Future[dict[str, Any]] = Future()
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "plugins.local_llm.child", json.dumps(settings)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, text=True, encoding="utf-8", bufsize=1, start_new_session=True,
        )
        self._stderr_done = threading.Event()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        threading.Thread(target=self._read_answers, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self) -> None:
        """Block until the model is loaded; raise :class:`ModelDied` if it never is."""
        try:
            ready = self._ready.result(self.load_timeout)
        except TimeoutError:
            self.kill()
            raise ModelDied(f"the model process did not load the model within "
                            f"{self.load_timeout:g}s") from None
        if ready.get("op") == "failed":
            raise ModelDied(f"the model could not be loaded: {ready.get('error')}")
        self.n_ctx = int(ready["n_ctx"])
        self.system_info = str(ready.get("system_info", ""))

    def request(self, op: str, handler: Handler, **fields: Any) -> int:
        """Send a request whose answers go to ``handler``; returns its id."""
        with self._lock:
            if self.died is not None:
                raise ModelDied(self.died)
            self._next_id += 1
            ident = self._next_id
            self._handlers[ident] = handler
            self._write({"op": op, "id": ident, **fields})
        return ident

    def call(self, op: str, timeout: float, **fields: Any) -> dict[str, Any]:
        """A request with one answer, waited for (blocking)."""
        answer: Future[dict[str, Any]] = Future()

        def settle(message: dict[str, Any] | None) -> None:
            if answer.done():
                return
            if message is None:
                answer.set_exception(ModelDied(self.died or "the model process ended"))
            else:
                answer.set_result(message)

        ident = self.request(op, settle, **fields)
        try:
            return answer.result(timeout)
        finally:
            self.forget(ident)

    def cancel(self, ident: int) -> None:
        with self._lock:
            if self.died is None and ident in self._handlers:
                self._write({"op": "cancel", "id": ident})

    def forget(self, ident: int) -> None:
        with self._lock:
            self._handlers.pop(ident, None)

    def _write(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(message, ensure_ascii=False) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the reader thread reports the death

    def _read_answers(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                log.warning("model process: unreadable line %r", line[:200])
                continue
            if "op" in message:
                self._ready.set_result(message)
                continue
            with self._lock:
                handler = self._handlers.get(message.get("id"))
            if handler is not None:
                self._deliver(handler, message)
        returncode = self.proc.wait()
        self._stderr_done.wait(2.0)
        last = self._stderr[-1] if self._stderr else ""
        with self._lock:
            self.died = death_reason(returncode, last)
            handlers, self._handlers = list(self._handlers.values()), {}
        if not self._ready.done():
            self._ready.set_result({"op": "failed", "error": self.died})
        if returncode != 0:
            log.error("local model: %s", self.died)
        for handler in handlers:
            self._deliver(handler, None)

    @staticmethod
    def _deliver(handler: Handler, message: dict[str, Any] | None) -> None:
        """Hand an answer over; a receiver that has gone (its event loop closed) must not
        stop the reader, which also watches for the process's death."""
        try:
            handler(message)
        except Exception as exc:
            log.debug("model process: an answer was not delivered: %s", exc)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            line = line.strip()
            if line:
                self._stderr.append(line[:500])
                log.debug("model process: %s", line)
        self._stderr_done.set()

    def kill(self) -> None:
        """End the process at once (its death is reported like any other)."""
        if self.proc.poll() is None:
            self.proc.kill()

    def close(self, timeout: float = 5.0) -> None:
        """Ask the process to exit (end of its input), then make sure it has."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()
