"""Memory vectors: in chroma-rag's tiered store (shared collection, or the owner's own
once they have many), written behind the SQL rows.

A single-record write to an embedded Chroma costs one fsync (20-30 ms on this disk),
which alone would cap memory writes far below 100/s. The SQL row is the source of
truth and the vector can always be rebuilt from its text, so vectors are queued in
memory and written per owner in batches by one background task; until then the
queued ones take part in every nearest-neighbour search, so dedup and recall never
miss them. A crash loses only queued vectors, and :meth:`MemoryIndex.missing` lets
the store re-index an owner whose collection holds fewer vectors than rows. With
``write_behind`` off (and on AWS Lambda, where nothing may run after a response)
every write waits for Chroma.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from plugins.chroma_rag.embeddings import Embedder
from plugins.chroma_rag.store import Hit, VectorStore

log = logging.getLogger("mami.memory")

SCOPE = "memories"
"""The scope of every memory vector (VectorStore keys collections by owner and scope)."""
FLUSH_INTERVAL = 0.2
BATCH = 32
RETRY_PAUSE = 1.0


class MemoryIndex:
    """The vectors of every owner's memories. Coroutine methods only; one per store."""

    def __init__(self, vectors: VectorStore, embedder: Embedder, write_behind: bool) -> None:
        self.vectors = vectors
        self.embedder = embedder
        self.write_behind = write_behind
        self._searches: list[tuple[str, str, int, asyncio.Future[Any]]] = []
        self._searcher: asyncio.Task[None] | None = None
        self.pending: dict[str, dict[str, tuple[Any, str]]] = {}
        self.checked: set[str] = set()  # owners whose collection was compared with SQL
        self._lock = asyncio.Lock()  # one Chroma write at a time; deletes wait for it
        self._flusher: asyncio.Task[None] | None = None

    async def put(self, owner: str, memory_id: str, vector: Any, text: str) -> None:
        """Queue (or, without write-behind, write) the vector of one memory."""
        self.pending.setdefault(owner, {})[memory_id] = (vector, text)
        if not self.write_behind:
            await self.flush()
        elif self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        while self.pending:
            # Gather writes first: each Chroma call costs about the same whatever its
            # size (an fsync, with the GIL held by Chroma's bindings for part of it).
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                await self.flush()
            except Exception as exc:
                log.warning("writing memory vectors to Chroma failed, will retry: %s", exc)
                await asyncio.sleep(RETRY_PAUSE)

    async def flush(self) -> None:
        """Write every queued vector, one Chroma call per owner."""
        import numpy as np

        async with self._lock:
            for owner, items in [(o, dict(i)) for o, i in self.pending.items()]:
                ids = list(items)
                metas = [{"owner": owner, "scope": SCOPE, "doc": i} for i in ids]
                await asyncio.to_thread(
                    self.vectors.upsert, owner, SCOPE, ids,
                    np.stack([items[i][0] for i in ids]), [items[i][1] for i in ids], metas,
                )
                left = self.pending.get(owner, {})
                for i in ids:
                    if left.get(i) is items[i]:  # not replaced by a newer wording meanwhile
                        del left[i]
                if not left:
                    self.pending.pop(owner, None)

    async def nearest(self, owner: str, text: str, k: int) -> tuple[Any, list[Hit]]:
        """The embedding of ``text`` and the owner's ``k`` memories closest to it
        (queued ones included), best first; ``score`` is the cosine similarity.

        Searches that arrive while others run are embedded together in one batch (a
        batch of short texts costs a fraction of embedding them one by one) and run in
        one worker thread.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._searches.append((owner, text, k, future))
        if self._searcher is None or self._searcher.done():
            self._searcher = asyncio.create_task(self._search_all())
        vector, hits = await future
        return vector, self.with_queued(owner, vector, hits, k)

    async def _search_all(self) -> None:
        while self._searches:
            batch, self._searches = self._searches[:BATCH], self._searches[BATCH:]
            try:
                found = await asyncio.to_thread(self._search_batch, [b[:3] for b in batch])
            except Exception as exc:
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (*_, future), result in zip(batch, found, strict=True):
                if not future.done():
                    future.set_result(result)

    def _search_batch(self, searches: list[tuple[str, str, int]]) -> list[tuple[Any, list[Hit]]]:
        vectors = self.embedder.embed([text for _owner, text, _k in searches])
        return [(vector, self.vectors.query(owner, {SCOPE: k}, vector, k))
                for (owner, _text, k), vector in zip(searches, vectors, strict=True)]

    def with_queued(self, owner: str, vector: Any, hits: list[Hit], k: int) -> list[Hit]:
        """``hits`` merged with the owner's queued vectors: the best ``k``, best first;
        ``score`` is the cosine similarity."""
        queued = self.pending.get(owner)
        if not queued:
            return hits
        found = {h.id: h for h in hits}
        for memory_id, (queued_vector, text) in list(queued.items()):
            found[memory_id] = Hit(memory_id, text, {"owner": owner, "scope": SCOPE},
                                   float(queued_vector @ vector))
        return sorted(found.values(), key=lambda h: h.score, reverse=True)[:k]

    async def indexed(self, owner: str) -> int:
        """Vectors stored or queued for ``owner``."""
        stored = await asyncio.to_thread(self.vectors.count, owner, SCOPE)
        return stored + len(self.pending.get(owner, {}))

    async def written_ids(self, owner: str) -> set[str]:
        """Ids of the owner's vectors in Chroma."""
        return await asyncio.to_thread(self.vectors.ids, owner, SCOPE)

    async def forget(self, owner: str, memory_id: str) -> None:
        """Remove one memory's vector, queued or written."""
        async with self._lock:
            self.pending.get(owner, {}).pop(memory_id, None)
            await asyncio.to_thread(self.vectors.delete_document, owner, SCOPE, memory_id)

    async def drop(self, owner: str) -> None:
        """Remove every vector of ``owner``."""
        async with self._lock:
            self.pending.pop(owner, None)
            self.checked.discard(owner)
            await asyncio.to_thread(self.vectors.drop, owner, SCOPE)

    async def close(self) -> None:
        """Write what is queued, once (called when the app stops); what cannot be
        written now is re-embedded from SQL on the next start."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self.pending:
            try:
                await self.flush()
            except Exception as exc:
                log.warning("%d memory vectors not written (%s); they are re-indexed on "
                            "next use", sum(map(len, self.pending.values())), exc)
