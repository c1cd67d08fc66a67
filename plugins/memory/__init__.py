# ruff: noqa: RUF002  (Turkish letters and typographic quotes are intended)
"""memory: remembered facts about each owner, without duplicates, written once per reply.

Memories live in the ``memories`` table (the source of truth, with a deterministic id
and a unique normalised text per owner) and, for the semantic part, in one Chroma
collection per owner, embedded with chroma-rag's embedder. Every decision (added,
updated, skipped) goes to ``memory_decisions``.

Facts come from the ``message_completed`` event only: explicit requests ("remember
that ...", "... hatırla") always, and LLM-extracted facts when ``llm_extraction`` is
on. Each assistant message is handled exactly once: claimed with
``runtime.claim_once``, and claims a killed process left unfinished handled again at the
next start. When remembering fails (Chroma or its server down, the store held by another
process), the message is marked for retry in ``event_receipts`` and the claim released:
the next delivery of the event, a background retry of ``mami serve`` (every 30 s while
messages wait, backing off to 10 min while they keep failing) or the next start remembers
it. On AWS Lambda nothing runs after a response, so there the next cold start (or a
retried request) does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from core import hookimpl
from core.errors import ConfigError
from core.events import MessageCompleted
from core.migrations import MigrationSource
from core.protocols import MemoryStore
from core.runtime import Runtime

PLUGIN = "memory"


@dataclass
class Settings:
    """``[plugins.memory]``."""

    duplicate_threshold: float = 0.77
    """Cosine similarity from which a new fact counts as a paraphrase of an existing
    memory and updates it instead of adding one. Measured on
    tests/plugins/memory/dedup_pairs.jsonl by bench/memory_dedup.py."""
    llm_extraction: bool = False
    """Also ask the active LLM for durable facts about the user after each reply."""
    extraction_max_tokens: int = 200
    """Reply tokens allowed for the LLM's JSON list of facts."""
    max_facts: int = 5
    """Most facts taken from one message."""
    max_chars: int = 500
    """Longest fact accepted, in characters."""
    max_k: int = 50
    """Most memories one recall may return."""
    write_behind: bool = True
    """Write vectors to Chroma in batches in the background (SQL stays the source of
    truth; vectors lost in a crash are re-embedded). Off, and always on AWS Lambda,
    every write waits for Chroma."""
    chroma_url: str = ""
    """Chroma server (``http://host:8000``); empty: chroma-rag's setting, else embedded."""
    chroma_token: str = ""
    """Token for the Chroma server (use ``{ env = ... }``); empty: chroma-rag's."""
    path: str = ""
    """Directory of the embedded Chroma; empty: chroma-rag's, else ``<data_dir>/chroma``."""
    collection_prefix: str = "mami-mem"
    """Prefix of the memory collections' names (``<prefix>-shared`` and one per big owner)."""
    shared_max_memories: int = 256
    """An owner with at most this many memories keeps their vectors in the shared
    collection (exact search); beyond it they move to a collection of their own."""
    embedder: str = "minilm"
    """Embedder spec, as in chroma-rag (the same spec shares one loaded model)."""
    model_dir: str = ""
    """Directory of the MiniLM ONNX files; empty: Chroma's cache."""

    def __post_init__(self) -> None:
        where = "[plugins.memory]"
        if not 0.0 < self.duplicate_threshold <= 1.0:
            raise ConfigError(f"{where} duplicate_threshold: must be in (0, 1]")
        for name in ("extraction_max_tokens", "max_facts", "max_chars", "max_k",
                     "shared_max_memories"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where} {name}: must be at least 1")
        if self.max_chars > 1000:
            raise ConfigError(f"{where} max_chars: at most 1000 (the normalised text column)")


@hookimpl
def register_migrations(register: Callable[[MigrationSource], None]) -> None:
    from plugins.memory.models import MIGRATIONS

    register(MIGRATIONS)


@hookimpl
def register_memory_stores(register: Callable[[MemoryStore], None], runtime: Runtime) -> None:
    """Register the store; Chroma and the embedding model are opened on first use."""
    from plugins.memory.store import ChromaMemoryStore

    register(ChromaMemoryStore(runtime.settings(PLUGIN) or Settings(), runtime))


@hookimpl
def startup(runtime: Runtime) -> Awaitable[None] | None:
    """Remember the facts of messages a killed process had claimed but not handled, and
    of those whose memory write failed (Chroma down). A long-running server does it in
    a background task, waiting for it at most ``START_WAIT`` seconds (half the
    ``[core] startup_timeout`` if less), and goes on retrying the ones still failing; on
    AWS Lambda it is done here, as nothing may run after a response."""
    if runtime.memory is None or not getattr(runtime, "repair_on_start", True):
        return None
    from plugins.memory.extract import STATE

    settings = runtime.settings(PLUGIN) or Settings()
    runtime.state.pop(STATE, None)  # a stopped runtime's retries, if it is started again
    if runtime.serverless:
        return _redeliver(runtime, settings)
    return _start_retrying(runtime, settings)


async def _start_retrying(runtime: Runtime, settings: Settings) -> None:
    import asyncio
    import contextlib

    from plugins.memory.extract import START_WAIT, STATE, start_retrying

    start_retrying(runtime, settings, at_start=True)
    wait = min(START_WAIT, runtime.config.core.startup_timeout / 2)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(runtime.state[STATE].passed.wait(), wait)


async def _redeliver(runtime: Runtime, settings: Settings) -> None:
    import logging

    from plugins.memory.extract import redeliver_unfinished, retry_pending

    try:  # never fails the plugin: the next start tries again
        await redeliver_unfinished(runtime, settings)
        await retry_pending(runtime, settings)
    except Exception as exc:
        logging.getLogger("mami.memory").warning("redelivering claimed messages failed: %s",
                                                 exc)


@hookimpl
def shutdown(runtime: Runtime) -> Awaitable[None] | None:
    """Stop the background retries (the messages stay marked: the next start retries)."""
    from plugins.memory.extract import STATE, Retrier

    # Kept, closed: a write failing while the app stops starts no retries after it.
    retrier = runtime.state.setdefault(STATE, Retrier(runtime, runtime.settings(PLUGIN)
                                                      or Settings()))
    return retrier.stop()


@hookimpl
def message_completed(event: MessageCompleted, runtime: Runtime) -> Awaitable[None] | None:
    """Remember the facts of a completed exchange, once per assistant message."""
    if runtime.memory is None:
        return None
    from plugins.memory.extract import remember_from

    return remember_from(event, runtime, runtime.settings(PLUGIN) or Settings())
