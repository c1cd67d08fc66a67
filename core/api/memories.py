"""Memories: what mami remembers about the caller, and why.

``GET /api/memories`` (paged with ``limit`` and ``offset``), ``DELETE
/api/memories/{id}``, ``DELETE /api/memories`` (forget everything) and ``GET
/api/memories/{id}/history`` (each added / updated / skipped decision). The owner is
the authenticated principal, never a parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from litestar import Controller, delete, get
from litestar.params import Parameter

from core.api.deps import MAX_OFFSET
from core.errors import BadRequest, NotFound
from core.protocols import Memory, MemoryDecision, MemoryStore, Principal
from core.runtime import Runtime

MEMORY_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_PAGE = 1000


@dataclass
class MemoryOut:
    id: str
    text: str
    seen_count: int
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass
class MemoryPage:
    data: list[MemoryOut]
    total: int
    limit: int
    offset: int


@dataclass
class History:
    memory_id: str
    data: list[MemoryDecision]


@dataclass
class Erased:
    deleted: int


def _out(memory: Memory) -> MemoryOut:
    return MemoryOut(memory.id, memory.text, memory.seen_count, memory.created_at,
                     memory.updated_at)


def checked_id(memory_id: str) -> str:
    """``memory_id`` if it can be an id at all, else a 400 saying what an id looks like."""
    if not MEMORY_ID.match(memory_id):
        raise BadRequest("invalid memory id: 1 to 64 letters, digits, '_', '.', ':' or '-'")
    return memory_id


class MemoryController(Controller):
    path = "/api/memories"
    tags = ["memories"]

    @get("/")
    async def list_memories(
        self, runtime: Runtime, principal: Principal,
        limit: int = Parameter(default=100, ge=1, le=MAX_PAGE),
        offset: int = Parameter(default=0, ge=0, le=MAX_OFFSET),
    ) -> MemoryPage:
        """The caller's memories, most recently seen first. 400 for a bad limit/offset."""
        store: MemoryStore = runtime.require("memory")
        paged = getattr(store, "page", None)  # a store may page in its database
        if paged is not None:
            page, total = await paged(principal.owner, limit, offset)
        else:
            memories = await store.list_memories(principal.owner)
            page, total = memories[offset : offset + limit], len(memories)
        return MemoryPage([_out(m) for m in page], total, limit, offset)

    @delete("/{memory_id:str}", status_code=204)
    async def remove(self, runtime: Runtime, principal: Principal, memory_id: str) -> None:
        """Forget one of the caller's memories and its history (404 if there is none)."""
        store: MemoryStore = runtime.require("memory")
        if not await store.delete_memory(principal.owner, checked_id(memory_id)):
            raise NotFound(f"memory {memory_id} not found")

    @delete("/", status_code=200)
    async def erase(self, runtime: Runtime, principal: Principal) -> Erased:
        """Forget every memory of the caller; returns how many there were."""
        store: MemoryStore = runtime.require("memory")
        return Erased(await store.erase_owner(principal.owner))

    @get("/{memory_id:str}/history")
    async def history(self, runtime: Runtime, principal: Principal, memory_id: str) -> History:
        """Every decision about one of the caller's memories, oldest first: ``added``,
        ``updated`` (a paraphrase changed its wording) or ``skipped`` (an exact repeat),
        with the closest memory it was compared with, the similarity and the message it
        came from. 404 if there is no such memory."""
        store: MemoryStore = runtime.require("memory")
        decisions = await store.history(principal.owner, checked_id(memory_id))
        if not decisions:
            raise NotFound(f"memory {memory_id} not found")
        return History(memory_id, list(decisions))


routes: list[Any] = [MemoryController]
