"""The memory store: rows in SQL, vectors in one Chroma collection per owner.

SQL is the source of truth. A memory's id is derived from its owner and normalised
text, and ``(owner_id, normalized)`` is unique, so a repeated or racing write cannot
add a second row. Each owner's vectors live in their own collection (chroma-rag's
:class:`~plugins.chroma_rag.store.VectorStore`, written through
:class:`~plugins.memory.index.MemoryIndex`), so a query cannot see another owner's
memories and needs no slow filtered search; rows read back from SQL are filtered by
owner as well.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, insert, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from core.errors import AuthError, BadRequest
from core.models import MemoryDecisionRecord, MemoryRecord, utcnow
from core.protocols import Check, Memory, MemoryDecision
from core.runtime import Runtime
from plugins.chroma_rag.embeddings import Embedder, aembed, embedder_health, get_embedder
from plugins.chroma_rag.store import Hit, VectorStore, open_client, shown_location
from plugins.memory import Settings
from plugins.memory.index import SCOPE, MemoryIndex
from plugins.memory.normalize import clean, memory_id, normalize

__all__ = ["SCOPE", "ChromaMemoryStore"]

NORMALIZED_MAX = 1024  # the length of memories.normalized

log = logging.getLogger("mami.memory")


def _memory(row: MemoryRecord, score: float | None = None) -> Memory:
    return Memory(row.id, row.owner_id, row.text, row.seen_count, row.created_at,
                  row.updated_at, score)


def _decision(row: MemoryDecisionRecord) -> MemoryDecision:
    return MemoryDecision(row.action, row.memory_id, row.text,  # type: ignore[arg-type]
                          row.similarity, row.source_message_id, row.created_at,
                          row.matched_memory_id)


def chroma_location(settings: Settings, runtime: Runtime) -> tuple[str, str, str]:
    """``(url, path, token)`` of the Chroma to use: this plugin's settings, else
    chroma-rag's, else an embedded Chroma under the data directory (shared with RAG)."""
    rag = runtime.settings("chroma-rag")
    url = settings.chroma_url or getattr(rag, "chroma_url", "")
    token = settings.chroma_token or getattr(rag, "chroma_token", "")
    path = settings.path or getattr(rag, "path", "") or str(
        Path(runtime.config.data_dir) / "chroma")
    return url, path, token


class ChromaMemoryStore:
    """The :class:`core.protocols.MemoryStore` of the memory plugin."""

    name = "memory"

    def __init__(self, settings: Settings, runtime: Runtime, embedder: Embedder | None = None):
        self.settings = settings
        self.db = runtime.db
        url, path, token = chroma_location(settings, runtime)
        vectors = VectorStore(lambda: open_client(url, path, token), settings.collection_prefix)
        self.embedder = embedder or get_embedder(settings.embedder, settings.model_dir)
        self.index = MemoryIndex(vectors, self.embedder,
                                 settings.write_behind and not runtime.serverless)
        self.vectors, self.location = vectors, shown_location(url, path)

    async def doctor(self) -> list[Check]:
        """The embedding model's files and Chroma (see ``mami doctor``)."""
        checks = [self.embedder.check()] if hasattr(self.embedder, "check") else []
        return [*checks, await self.vectors.check("memory store", self.location)]

    async def health(self) -> dict[str, Any]:
        """``degraded`` with the fix when the embedding model is missing: memories are
        then neither recalled nor stored."""
        return embedder_health(self.embedder)

    def candidate(self, text: str) -> tuple[str, str]:
        """``(wording, normalised)`` of a fact, or a 400 saying what is wrong with it."""
        wording = clean(text)
        if len(wording) > self.settings.max_chars:
            raise BadRequest(f"a memory is at most {self.settings.max_chars} characters")
        normalized = normalize(wording)
        if not normalized:
            raise BadRequest("nothing to remember: the text is empty")
        if len(normalized) > NORMALIZED_MAX:  # NFKC can expand: "ﬃ" is "ffi"
            raise BadRequest(f"a memory is at most {NORMALIZED_MAX} characters once normalised")
        return wording, normalized

    async def remember(
        self, owner: str, text: str, source_message_id: str | None = None
    ) -> MemoryDecision:
        """Store a fact about ``owner`` unless it is already known.

        An exact repeat (same normalised text) is ``skipped``; a paraphrase of an
        existing memory (cosine >= ``duplicate_threshold``) ``updated`` it (new wording,
        one more sighting); anything else is ``added``. Either way the existing memory
        counts one more sighting and the decision is recorded. 400 for empty or too
        long text.
        """
        if not owner:
            raise AuthError("no owner")
        wording, normalized = self.candidate(text)
        for attempt in range(3):
            try:
                return await self._remember(owner, wording, normalized, source_message_id)
            except IntegrityError:
                # A concurrent write stored the same text first; the next pass sees it.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _remember(
        self, owner: str, wording: str, normalized: str, source: str | None
    ) -> MemoryDecision:
        new_id = memory_id(owner, normalized)
        async with self.db.session() as session:
            exact = (await session.exec(select(MemoryRecord.id).where(
                col(MemoryRecord.owner_id) == owner,
                or_(col(MemoryRecord.normalized) == normalized, col(MemoryRecord.id) == new_id),
            ))).first()
            if exact is not None:
                await self._seen(session, owner, exact)
                return await self._record(session, owner, exact, "skipped", wording, 1.0,
                                          exact, source)
        vector, nearest = await self._nearest(owner, normalized, 1)
        match = nearest[0] if nearest and nearest[0].score >= self.settings.duplicate_threshold \
            else None
        async with self.db.session() as session:
            if match is not None and await self._seen(session, owner, match.id, wording,
                                                      normalized):
                decision = await self._record(session, owner, match.id, "updated", wording,
                                              match.score, match.id, source)
            else:
                now = utcnow()
                await session.execute(insert(MemoryRecord).values(
                    id=new_id, owner_id=owner, text=wording, normalized=normalized,
                    seen_count=1, created_at=now, updated_at=now, last_seen_at=now,
                ))
                closest = nearest[0] if nearest else None
                decision = await self._record(session, owner, new_id, "added", wording,
                                              closest.score if closest else None,
                                              closest.id if closest else None, source)
        await self.index.put(owner, decision.memory_id, vector, wording)
        return decision

    async def _seen(
        self, session: Any, owner: str, memory: str, wording: str | None = None,
        normalized: str | None = None,
    ) -> bool:
        """Count one more sighting of ``memory`` (and take the new wording when given).
        False when the owner has no such row (a vector left by a failed write)."""
        now = utcnow()
        values: dict[str, Any] = {"seen_count": col(MemoryRecord.seen_count) + 1,
                                  "last_seen_at": now}
        if wording is not None:
            values.update(text=wording, normalized=normalized, updated_at=now)
        result = await session.execute(
            update(MemoryRecord)
            .where(col(MemoryRecord.id) == memory, col(MemoryRecord.owner_id) == owner)
            .values(**values)
            .execution_options(synchronize_session=False)  # no ORM objects to refresh
        )
        return bool(result.rowcount)

    async def _record(
        self, session: Any, owner: str, memory: str, action: str, wording: str,
        similarity: float | None, matched: str | None, source: str | None,
    ) -> MemoryDecision:
        """Add the decision row and commit it together with the memory change."""
        now = utcnow()
        rounded = None if similarity is None else round(float(similarity), 4)
        await session.execute(insert(MemoryDecisionRecord).values(
            owner_id=owner, memory_id=memory, action=action, text=wording, similarity=rounded,
            matched_memory_id=matched, source_message_id=source, created_at=now,
        ))
        await session.commit()
        return MemoryDecision(action, memory, wording, rounded, source, now,  # type: ignore[arg-type]
                              matched)

    async def _nearest(self, owner: str, normalized: str, k: int) -> tuple[Any, list[Hit]]:
        """The embedding of ``normalized`` and the owner's ``k`` memories closest to
        it, best first."""
        if owner not in self.index.checked:
            await self._reindex_if_incomplete(owner)
        return await self.index.nearest(owner, normalized, k)

    async def _reindex_if_incomplete(self, owner: str) -> None:
        """Once per owner and process: if Chroma holds fewer of the owner's vectors
        than SQL has rows (vectors lost in a crash, a wiped Chroma), embed the missing
        ones again."""
        async with self.db.session() as session:
            stored = int((await session.exec(
                select(func.count()).select_from(MemoryRecord)
                .where(col(MemoryRecord.owner_id) == owner)
            )).one())
        if stored and await self.index.indexed(owner) < stored:
            have = await self.index.written_ids(owner) | set(self.index.pending.get(owner, {}))
            async with self.db.session() as session:
                rows = [row for row in (await session.exec(
                    select(MemoryRecord).where(col(MemoryRecord.owner_id) == owner))).all()
                    if row.id not in have]
            log.warning("re-indexing %d of the %d memories of %s", len(rows), stored, owner)
            vectors = await aembed(self.embedder, [row.normalized for row in rows])
            for row, vector in zip(rows, vectors, strict=True):
                self.index.pending.setdefault(owner, {}).setdefault(row.id, (vector, row.text))
            await self.index.flush()
        self.index.checked.add(owner)

    async def _has_memories(self, owner: str) -> bool:
        """Whether the owner has (or, in this process, had) any memory. A stale yes
        costs a search that finds nothing; a no spares loading the model."""
        if owner in self.index.checked:
            return True
        async with self.db.session() as session:
            return (await session.exec(select(MemoryRecord.id).where(
                col(MemoryRecord.owner_id) == owner).limit(1))).first() is not None

    async def recall(self, owner: str, query: str, k: int = 5) -> list[Memory]:
        """The owner's ``k`` (at most ``max_k``) memories most relevant to ``query``,
        best first, each with its cosine similarity as ``score``. Nothing for a query
        without words (an emoji, "?!"); 400 for k < 1."""
        if not owner:
            raise AuthError("no owner")
        if k < 1:
            raise BadRequest("k must be at least 1")
        normalized = normalize(query)
        if not normalized or not await self._has_memories(owner):
            return []  # and the embedding model need not even be loaded
        _vector, hits = await self._nearest(owner, normalized, min(k, self.settings.max_k))
        if not hits:
            return []
        async with self.db.session() as session:
            rows = {row.id: row for row in (await session.exec(select(MemoryRecord).where(
                col(MemoryRecord.owner_id) == owner,
                col(MemoryRecord.id).in_([h.id for h in hits]),
            ))).all()}
        return [_memory(rows[h.id], h.score) for h in hits if h.id in rows]

    async def list_memories(self, owner: str) -> list[Memory]:
        """All of the owner's memories, most recently seen first."""
        return (await self.page(owner, None, 0))[0]

    async def page(self, owner: str, limit: int | None, offset: int) -> tuple[list[Memory], int]:
        """``limit`` of the owner's memories from ``offset`` (most recently seen first)
        and how many the owner has in all."""
        async with self.db.session() as session:
            rows = (await session.exec(
                select(MemoryRecord).where(col(MemoryRecord.owner_id) == owner)
                .order_by(col(MemoryRecord.last_seen_at).desc(), col(MemoryRecord.id))
                .offset(offset).limit(limit)
            )).all()
            last_page = (limit is None or len(rows) < limit) and (rows or not offset)
            total = len(rows) + offset if last_page else int(
                (await session.exec(select(func.count()).select_from(MemoryRecord).where(
                    col(MemoryRecord.owner_id) == owner))).one())
        return [_memory(row) for row in rows], total

    async def delete_memory(self, owner: str, memory_id: str) -> bool:
        """Forget one memory and its history; False if the owner has no such memory.
        The vector goes first, so a failure never leaves a forgotten text searchable."""
        async with self.db.session() as session:
            row = (await session.exec(select(MemoryRecord).where(
                col(MemoryRecord.id) == memory_id, col(MemoryRecord.owner_id) == owner,
            ))).first()
        if row is None:
            return False
        await self.index.forget(owner, memory_id)
        async with self.db.session() as session:
            await session.execute(delete(MemoryDecisionRecord).where(
                col(MemoryDecisionRecord.owner_id) == owner,
                col(MemoryDecisionRecord.memory_id) == memory_id,
            ))
            result = await session.execute(delete(MemoryRecord).where(
                col(MemoryRecord.id) == memory_id, col(MemoryRecord.owner_id) == owner,
            ))
            await session.commit()
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def erase_owner(self, owner: str) -> int:
        """Forget every memory and decision of ``owner``; returns how many memories."""
        if not owner:
            raise AuthError("no owner")
        await self.index.drop(owner)
        async with self.db.session() as session:
            await session.execute(delete(MemoryDecisionRecord).where(
                col(MemoryDecisionRecord.owner_id) == owner))
            result = await session.execute(delete(MemoryRecord).where(
                col(MemoryRecord.owner_id) == owner))
            await session.commit()
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def history(self, owner: str, memory_id: str) -> list[MemoryDecision]:
        """The decisions that concern one of the owner's memories, oldest first."""
        async with self.db.session() as session:
            rows = (await session.exec(
                select(MemoryDecisionRecord).where(
                    col(MemoryDecisionRecord.owner_id) == owner,
                    col(MemoryDecisionRecord.memory_id) == memory_id,
                ).order_by(col(MemoryDecisionRecord.id))
            )).all()
        return [_decision(row) for row in rows]

    async def get(self, owner: str, memory_id: str) -> Memory | None:
        """One of the owner's memories, or None."""
        async with self.db.session() as session:
            row = (await session.exec(select(MemoryRecord).where(
                col(MemoryRecord.id) == memory_id, col(MemoryRecord.owner_id) == owner,
            ))).first()
        return _memory(row) if row is not None else None

    async def aclose(self) -> None:
        """Write the vectors still queued."""
        await self.index.close()
