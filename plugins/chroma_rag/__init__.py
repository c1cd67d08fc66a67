"""chroma-rag: owner-scoped retrieval (RAG) over Chroma.

Documents are split into overlapping token chunks, embedded with all-MiniLM-L6-v2
(dynamic padding) and stored in Chroma keyed by owner and scope (a shared collection for
small scopes, ranked exactly; an own collection for big ones), so a search is exact
about whose documents it reads and needs no slow filtered query.
Shared documents live in the ``global`` scope under a sentinel owner. The embedder
(:mod:`.embeddings`) and the client factory (:func:`.store.open_client`) are meant to
be reused by other plugins.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from core import hookimpl
from core.errors import ConfigError
from core.migrations import MigrationSource
from core.protocols import Retriever
from core.runtime import Runtime

PLUGIN = "chroma-rag"
GLOBAL_OWNER = "__global__"
"""Sentinel owner of the shared ``global`` scope (Chroma rejects ``None``)."""
GLOBAL_SCOPE = "global"
SCOPE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass
class Settings:
    """``[plugins.chroma-rag]``."""

    chroma_url: str = ""
    """Chroma server (``http://host:8000``); empty: embedded Chroma under ``path``."""
    chroma_token: str = ""
    """Token for the Chroma server, sent as ``X-Chroma-Token`` (use ``{ env = ... }``)."""
    path: str = ""
    """Directory of the embedded Chroma; empty: ``<data_dir>/chroma``. One process only."""
    collection_prefix: str = "mami-rag"
    """Prefix of the collection names (``<prefix>-shared`` and one per big owner scope)."""
    shared_max_chunks: int = 256
    """An owner's scope with at most this many chunks lives in the shared collection and
    is ranked exactly; beyond it, it moves to a collection of its own (HNSW). Keeps
    memory and open files flat whatever the number of owners (bench/many_owners.py)."""
    hnsw_ef_search: int = 200
    """HNSW search breadth of collections created from now on (Chroma's default is 100;
    200 keeps recall@5 >= 0.98 for owners with thousands of chunks, see the bench)."""
    embedder: str = "minilm"
    """``minilm`` (all-MiniLM-L6-v2, Chroma's default model, dynamically padded) or
    ``module:factory`` returning an embedder (see plugins.chroma_rag.embeddings)."""
    model_dir: str = ""
    """Directory of the MiniLM ONNX files; empty: Chroma's cache
    (~/.cache/chroma/onnx_models/all-MiniLM-L6-v2/onnx)."""
    chunk_tokens: int = 200
    """Tokens per chunk (at most the model's limit minus 2)."""
    chunk_overlap: int = 40
    """Tokens shared by neighbouring chunks."""
    scopes: list[str] = field(default_factory=lambda: ["default", "work", "personal"])
    """Scopes an owner may file documents under. ``global`` (shared, read by every
    owner, written only by ``global_writers``) always exists."""
    global_writers: list[str] = field(default_factory=lambda: ["admin"])
    """Owners allowed to write, list and delete the shared ``global`` scope."""
    search_global: bool = True
    """Whether a search without explicit scopes also reads the ``global`` scope."""
    max_k: int = 20
    """Most passages one search may return."""
    max_bytes: int = 2_000_000
    """Largest document accepted, in bytes of UTF-8."""

    def __post_init__(self) -> None:
        where = "[plugins.chroma-rag]"
        if not 1 <= self.chunk_tokens <= 8192:
            raise ConfigError(f"{where} chunk_tokens: must be between 1 and 8192")
        if not 0 <= self.chunk_overlap < self.chunk_tokens:
            raise ConfigError(f"{where} chunk_overlap: must be >= 0 and < chunk_tokens")
        for scope in self.scopes:
            if not SCOPE_NAME.match(scope) or scope == GLOBAL_SCOPE:
                raise ConfigError(
                    f"{where} scopes: {scope!r} must be lowercase letters, digits, - or _ "
                    "and not 'global'"
                )
        if min(self.max_k, self.max_bytes, self.hnsw_ef_search, self.shared_max_chunks) < 1:
            raise ConfigError(f"{where} max_k, max_bytes, hnsw_ef_search and shared_max_chunks "
                              "must be positive")


@hookimpl
def register_migrations(register: Callable[[MigrationSource], None]) -> None:
    from plugins.chroma_rag.models import MIGRATIONS

    register(MIGRATIONS)


@hookimpl
def register_retrievers(register: Callable[[Retriever], None], runtime: Runtime) -> None:
    """Register the retriever; Chroma and the model are opened on first use."""
    from plugins.chroma_rag.retriever import ChromaRetriever

    retriever = ChromaRetriever(runtime.settings(PLUGIN) or Settings(), runtime)
    runtime.state[PLUGIN] = retriever
    register(retriever)


@hookimpl
def startup(runtime: Runtime) -> Awaitable[None] | None:
    """Remove documents a stopped ingest left unfinished (see ``ChromaRetriever.repair``)."""
    retriever = runtime.state.get(PLUGIN)
    if retriever is None or not getattr(runtime, "repair_on_start", True):
        return None
    return _repair_pending(retriever)


async def _repair_pending(retriever: Any) -> None:
    # A failure must not fail the plugin: search never shows unfinished documents anyway.
    try:
        await retriever.repair_pending()
    except Exception as exc:
        logging.getLogger("mami.rag").warning("repairing unfinished documents failed: %s", exc)


def retriever_of(runtime: Runtime) -> Any:
    """This plugin's retriever in ``runtime`` (after the runtime started)."""
    return runtime.state[PLUGIN]
