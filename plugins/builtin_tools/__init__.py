"""builtin-tools: the active retriever and memory store as tools the model may call.

``search_documents`` searches the caller's documents (and the shared ones), and
``recall_memories`` / ``remember`` read and write the caller's memories, so RAG and
memory can also be used agentically. They use whatever providers are active
(``[core] retriever`` / ``memory``), looked up at call time. The owner always comes
from the turn, never from the model's arguments; a feature that is off gives the model
an error it can read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from core import hookimpl
from core.errors import ConfigError
from core.runtime import Runtime
from core.tools import Tool, tool

PLUGIN = "builtin-tools"


@dataclass
class Settings:
    """``[plugins.builtin-tools]``."""

    search_k: int = 4
    """Passages ``search_documents`` returns when the model does not say."""
    recall_k: int = 5
    """Memories ``recall_memories`` returns when the model does not say."""
    max_k: int = 20
    """Most passages or memories one call may return, whatever the model asks."""

    def __post_init__(self) -> None:
        for name in ("search_k", "recall_k", "max_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"[plugins.{PLUGIN}] {name}: must be at least 1")


def make_tools(runtime: Runtime, settings: Settings) -> list[Tool]:
    """The three tools, bound to ``runtime``'s active providers."""

    def bounded(k: int | None, default: int) -> int:
        return max(1, min(k or default, settings.max_k))

    async def search_documents(
        owner: str, query: Annotated[str, "what to look for, in the user's words"],
        k: Annotated[int | None, "how many passages (default a few)"] = None,
        scope: Annotated[str | None, "only this scope of the documents"] = None,
    ) -> list[dict[str, Any]]:
        """Search the user's documents (and the shared ones) for the passages most
        relevant to a query. Each passage has its source file, its text and a score."""
        retriever = runtime.require("retriever")
        passages = await retriever.search(owner, query, k=bounded(k, settings.search_k),
                                          scopes=[scope] if scope else None)
        return [{"n": n, "source": p.source, "document_id": p.document_id,
                 "chunk_index": p.chunk_index, "page": getattr(p, "page", None),
                 "scope": p.scope, "score": round(p.score, 4), "text": p.text}
                for n, p in enumerate(passages, 1)]

    async def recall_memories(
        owner: str, query: Annotated[str, "what to recall"],
        k: Annotated[int | None, "how many memories (default a few)"] = None,
    ) -> list[dict[str, Any]]:
        """Recall what is remembered about the user that relates to a query, most
        relevant first."""
        memory = runtime.require("memory")
        found = await memory.recall(owner, query, k=bounded(k, settings.recall_k))
        return [{"id": m.id, "text": m.text, "seen_count": m.seen_count} for m in found]

    async def remember(owner: str,
                       text: Annotated[str, "the fact, as one short sentence"]) -> dict[str, Any]:
        """Remember a lasting fact about the user (a preference, a name, a plan) for
        later conversations. A fact already known is updated, not repeated."""
        memory = runtime.require("memory")
        decision = await memory.remember(owner, text)
        return {"action": decision.action, "memory_id": decision.memory_id,
                "text": decision.text}

    return [tool(fn, needs_owner=True)
            for fn in (search_documents, recall_memories, remember)]


@hookimpl
def register_tools(register: Callable[[Tool], None], runtime: Runtime) -> None:
    for item in make_tools(runtime, runtime.settings(PLUGIN) or Settings()):
        register(item)
