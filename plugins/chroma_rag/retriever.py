"""The chroma-rag retriever: documents in SQL, their chunks' vectors in Chroma.

The ``documents`` table is the index of what each owner has (scope, source, chunk
count); it makes listing cheap and tells a search which collections to query. Chunk
vectors live in one Chroma collection per (owner, scope) (see :mod:`.store`).

Crash consistency: an ingest first records its row as *pending* (``chunks = 0``), then
writes the vectors, then commits the chunk count; only then is the document listed
and found. A search keeps only passages of listed documents (asking for more when it
had to drop some, so none is lost to the filter). A process killed mid-ingest leaves a
pending row; :meth:`ChromaRetriever.repair` removes it with its vectors, at start-up
(pending rows of an embedded Chroma, which one process owns; with a Chroma server, those
older than :data:`PENDING_GRACE`) and with ``mami db repair``, which also removes
vectors of documents no row lists (``mami doctor`` reports them).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, func, select

from core.errors import AuthError, BadRequest, PayloadTooLarge
from core.formats import page_of
from core.models import utcnow
from core.protocols import Check, DocumentInfo, Passage
from core.runtime import Runtime
from plugins.chroma_rag import GLOBAL_OWNER, GLOBAL_SCOPE, Settings
from plugins.chroma_rag.chunking import chunk_pages, chunk_text
from plugins.chroma_rag.embeddings import Embedder, aembed, get_embedder
from plugins.chroma_rag.models import Document
from plugins.chroma_rag.store import (
    StoreHeld,
    VectorStore,
    close_client,
    hold_store,
    open_client,
    shown_location,
    store_health,
)

log = logging.getLogger("mami.rag")

PENDING_GRACE = timedelta(minutes=15)
"""With a Chroma server (shared by processes), how old a pending document must be
before it counts as abandoned by a stopped ingest."""
MAX_EXTRA = 10_000
"""Most extra results a search asks for to make up for passages it drops."""
SCAN_PAGE = 1000


P = ParamSpec("P")
R = TypeVar("R")


Method = Callable[P, Coroutine[Any, Any, R]]


def _while(operation: str) -> Callable[[Method[P, R]], Method[P, R]]:
    """A store another process holds refuses ``operation`` with advice that fits it
    (search through that server, stop it before a repair, ...)."""

    def wrap(method: Method[P, R]) -> Method[P, R]:
        @functools.wraps(method)
        async def run(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await method(*args, **kwargs)
            except StoreHeld as exc:
                raise exc.doing(operation) from exc

        return run

    return wrap


def document_id(owner: str, scope: str, source: str) -> str:
    """Deterministic: the same owner, scope and source always give the same id."""
    return hashlib.sha256(f"{owner}\x1f{scope}\x1f{source}".encode()).hexdigest()[:32]


def _info(row: Document) -> DocumentInfo:
    return DocumentInfo(row.id, row.owner_id, row.scope, row.source, row.chunks, row.created_at)


class ChromaRetriever:
    """The :class:`core.protocols.Retriever` of chroma-rag."""

    name = "chroma-rag"

    def __init__(self, settings: Settings, runtime: Runtime, embedder: Embedder | None = None):
        self.settings = settings
        self.db = runtime.db
        path = settings.path or str(Path(runtime.config.data_dir) / "chroma")
        where = (settings.chroma_url, path, settings.chroma_token)
        served = runtime.state.get("public_url", "")
        holder = f"mami serve at {served}" if served else ""
        self.store = VectorStore(
            lambda: open_client(*where, holder=holder), settings.collection_prefix,
            settings.hnsw_ef_search,
            settings.shared_max_chunks, url=settings.chroma_url, path=path,
            close=lambda: close_client(*where),
        )
        self.embedder = embedder or get_embedder(settings.embedder, settings.model_dir)
        self.location = shown_location(settings.chroma_url, path)
        self.embedded = not settings.chroma_url
        self.removed_at_start: list[str] = []  # sources of pending documents removed
        if served and not settings.chroma_url:
            # The server owns its embedded store from the start, not from its first
            # search: a `mami ingest` meanwhile would write behind its back.
            try:
                hold_store(path, holder)
            except StoreHeld as exc:
                log.warning("%s", exc.message)
                self.store.held_elsewhere(exc)

    async def doctor(self) -> list[Check]:
        """The embedding model's files, Chroma, and documents whose vectors are gone
        (see ``mami doctor``)."""
        checks = [self.embedder.check()] if hasattr(self.embedder, "check") else []
        reached = await self.store.check("retrieval store", self.location)
        if reached.status != "ok":
            return [*checks, reached]
        return [*checks, reached, *await self.repair(apply=False),
                await self.vanished_vectors()]

    async def vanished_vectors(self) -> Check:
        """Listed documents with chunks missing from the vector store (a deleted or
        restored-from-an-old-backup Chroma directory): search can never find them."""
        async with self.db.session() as session:
            rows = (await session.exec(select(Document))).all()
        scopes: dict[tuple[str, str], list[Document]] = {}
        for row in rows:
            scopes.setdefault((row.owner_id, row.scope), []).append(row)
        lost: list[str] = []
        for (owner, scope), documents in scopes.items():
            held = await asyncio.to_thread(self.store.ids, owner, scope)
            lost += [f"{owner}/{d.source}" for d in documents
                     if any(f"{d.id}:{i}" not in held for i in range(d.chunks))]
        if not lost:
            return Check("document vectors", "ok",
                         f"every chunk of the {len(rows)} documents is in the vector store")
        return Check("document vectors", "fail",
                     f"{len(lost)} of {len(rows)} documents have lost their vectors and are "
                     f"never found by search: {', '.join(sorted(lost)[:5])}"
                     + (" ..." if len(lost) > 5 else ""),
                     "upload them again (`mami ingest` or POST /api/documents), or delete "
                     "them (DELETE /api/documents/{id})")

    async def health(self) -> dict[str, Any]:
        """``degraded`` (with the reason and fix) when the embedding model is missing or
        while the vector store is missing, not writable or unreachable."""
        return await store_health(self.embedder, self.store)

    def check_scope(self, scope: str) -> str:
        """``scope`` if it is ``global`` or configured; else a 400 naming the choices."""
        if scope == GLOBAL_SCOPE or scope in self.settings.scopes:
            return scope
        allowed = ", ".join([*self.settings.scopes, GLOBAL_SCOPE])
        raise BadRequest(f"unknown scope {scope!r} (allowed: {allowed})")

    def validate(self, owner: str, source: str, text: str, scope: str) -> int:
        """Raise what :meth:`ingest` would raise for this input (400, 403 or 413), before
        anything is written; returns the size in bytes. Callers storing several
        documents check them all first."""
        self.check_scope(scope)
        if not owner:
            raise AuthError("no owner")
        if scope == GLOBAL_SCOPE and owner not in self.settings.global_writers:
            raise AuthError(
                f"only {', '.join(self.settings.global_writers) or 'nobody'} may write the "
                "shared 'global' scope ([plugins.chroma-rag] global_writers)", status_code=403
            )
        if not source.strip() or len(source) > 1024:
            raise BadRequest("source must be 1 to 1024 characters")
        size = len(text.encode("utf-8"))
        if size > self.settings.max_bytes:
            raise PayloadTooLarge(
                f"{source}: {size} bytes is more than the limit of {self.settings.max_bytes}"
            )
        if not text.strip():
            raise BadRequest(f"{source}: the document is empty")
        return size

    @_while("ingest")
    async def ingest(
        self, owner: str, source: str, text: str, scope: str = "default",
        pages: Sequence[int] = (),
    ) -> DocumentInfo:
        """Chunk, embed and store ``text``, replacing the owner's document with the same
        scope and source. Scope ``global`` (for ``global_writers`` only) stores it under
        the shared sentinel owner. ``pages``: where each page starts in ``text`` (PDF);
        chunks then stay within a page and keep its number.
        Everything is checked and embedded before the first write; if a write fails,
        the document is removed entirely rather than left half-replaced."""
        size = self.validate(owner, source, text, scope)
        owner = GLOBAL_OWNER if scope == GLOBAL_SCOPE else owner
        doc_id = document_id(owner, scope, source)
        tokens = min(self.settings.chunk_tokens, self.embedder.max_tokens - 2)
        overlap = min(self.settings.chunk_overlap, tokens - 1)
        if pages:
            chunks = await asyncio.to_thread(
                chunk_pages, text, pages, self.embedder.token_spans, tokens, overlap)
        else:
            chunks = await asyncio.to_thread(
                chunk_text, text, self.embedder.token_spans, tokens, overlap)
        if not chunks:
            raise BadRequest(f"{source}: no text to index")
        vectors = await aembed(self.embedder, [c.text for c in chunks])
        ids = [f"{doc_id}:{c.index}" for c in chunks]
        metas: list[dict[str, Any]] = [
            {"owner": owner, "scope": scope, "doc": doc_id, "source": source, "chunk": c.index}
            for c in chunks
        ]
        if pages:  # Chroma rejects None values: unpaged chunks have no "page" key
            for meta, c in zip(metas, chunks, strict=True):
                meta["page"] = page_of(pages, c.start)
        await asyncio.to_thread(self.store.open)  # held elsewhere: the old copy stays
        try:
            # Pending (unlisted, never found) until every vector is written.
            await self._record(doc_id, owner, scope, source, text, 0, size)
            await asyncio.to_thread(
                self.store.upsert, owner, scope, ids, vectors, [c.text for c in chunks], metas
            )
            await asyncio.to_thread(self.store.delete_document, owner, scope, doc_id, len(chunks))
            row = await self._record(doc_id, owner, scope, source, text, len(chunks), size)
        except BaseException:
            with contextlib.suppress(Exception):  # keep the original error
                await self._forget(owner, scope, doc_id)
            raise
        return _info(row)

    async def _record(
        self, doc_id: str, owner: str, scope: str, source: str, text: str, chunks: int, size: int
    ) -> Document:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        for _attempt in range(2):
            try:
                async with self.db.session() as session:
                    row = await session.get(Document, doc_id)
                    if row is None:
                        row = Document(id=doc_id, owner_id=owner, scope=scope, source=source,
                                       sha256=digest)
                    row.sha256, row.chunks, row.bytes = digest, chunks, size
                    row.created_at = utcnow()
                    session.add(row)
                    await session.commit()
                    return row
            except IntegrityError:  # a concurrent ingest of the same document won the insert
                continue
        raise BadRequest(f"{source}: concurrent updates, try again")

    async def _forget(self, owner: str, scope: str, doc_id: str) -> None:
        """Best-effort removal of a document whose write failed part-way."""
        try:
            await asyncio.to_thread(self.store.delete_document, owner, scope, doc_id)
        finally:
            async with self.db.session() as session:
                await session.execute(delete(Document).where(col(Document.id) == doc_id))
                await session.commit()

    @_while("search")
    async def search(
        self, owner: str, query: str, k: int = 5, scopes: Sequence[str] | None = None
    ) -> list[Passage]:
        """The ``k`` passages most similar to ``query`` among ``owner``'s documents in
        ``scopes`` (default: all of the owner's, plus ``global`` when ``search_global``).
        ``global`` in ``scopes`` reads the shared documents."""
        if not query.strip():
            raise BadRequest("the query is empty")
        own, shared = await self._stored(owner, k, scopes)
        if not own and not shared:
            return []  # nothing to read: skip embedding the query
        vector = (await aembed(self.embedder, [query]))[0]
        return await self._listed_nearest(owner, own, shared, vector, k)

    @_while("search")
    async def search_vector(
        self, owner: str, vector: Any, k: int = 5, scopes: Sequence[str] | None = None
    ) -> list[Passage]:
        """:meth:`search` for an already embedded query."""
        own, shared = await self._stored(owner, k, scopes)
        return await self._listed_nearest(owner, own, shared, vector, k)

    async def _listed_nearest(
        self, owner: str, own: dict[str, int], shared: dict[str, int], vector: Any, k: int
    ) -> list[Passage]:
        """The ``k`` nearest passages of listed documents. Chunks of a document being
        written (or left by a stopped ingest) are dropped, and as many more are asked
        for, so the filter never costs a listed document its place."""
        extra = 0
        while True:
            wanted = k + extra
            grown_own = {scope: count + extra for scope, count in own.items() if count > 0}
            grown_shared = {scope: count + extra for scope, count in shared.items() if count > 0}
            found = await asyncio.to_thread(self._nearest, owner, grown_own, grown_shared,
                                            vector, wanted)
            listed = await self._listed({p.document_id for p in found})
            kept = [p for p in found if p.document_id in listed]
            if len(kept) == len(found) or len(kept) >= k or len(found) < wanted \
                    or extra >= MAX_EXTRA:
                return kept[:k]
            extra = min(MAX_EXTRA, max(2 * extra, wanted - len(kept)))

    async def _listed(self, document_ids: set[str]) -> set[str]:
        """Which of ``document_ids`` are listed (complete) documents."""
        if not document_ids:
            return set()
        async with self.db.session() as session:
            return set((await session.exec(select(Document.id).where(
                col(Document.id).in_(document_ids), col(Document.chunks) > 0))).all())

    def _nearest(
        self, owner: str, own: dict[str, int], shared: dict[str, int], vector: Any, k: int
    ) -> list[Passage]:
        hits = self.store.query(owner, own, vector, k)
        if shared:
            hits += self.store.query(GLOBAL_OWNER, shared, vector, k)
        hits.sort(key=lambda h: h.score, reverse=True)
        return [
            Passage(h.text, str(h.metadata["doc"]), str(h.metadata["source"]),
                    int(h.metadata["chunk"]), str(h.metadata["scope"]), h.score,
                    int(h.metadata["page"]) if h.metadata.get("page") is not None else None)
            for h in hits[:k]
        ]

    async def _stored(
        self, owner: str, k: int, scopes: Sequence[str] | None
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Check a search's arguments; return the chunks stored per scope: the owner's
        (in ``scopes``) and the shared ones."""
        if not owner:
            raise AuthError("no owner")
        if not 1 <= k <= self.settings.max_k:
            raise BadRequest(f"k must be between 1 and {self.settings.max_k}")
        if scopes is not None:
            scopes = [self.check_scope(s) for s in scopes]
        read_global = GLOBAL_SCOPE in scopes if scopes is not None else self.settings.search_global
        # The shared owner only has the global scope and no owner has it, so one IN per
        # column says it all (and stays an index-only scan).
        owners = [owner, GLOBAL_OWNER] if read_global else [owner]
        statement = (
            select(Document.owner_id, Document.scope, func.sum(Document.chunks))
            .where(col(Document.owner_id).in_(owners))
            .group_by(col(Document.owner_id), col(Document.scope))
        )
        if scopes is not None:
            statement = statement.where(col(Document.scope).in_(scopes))
        own: dict[str, int] = {}
        shared_counts: dict[str, int] = {}
        async with self.db.session() as session:
            for row_owner, scope, chunks in (await session.exec(statement)).all():
                target = shared_counts if row_owner == GLOBAL_OWNER else own
                target[scope] = int(chunks or 0)
        if owner == GLOBAL_OWNER:
            own.update(shared_counts)
            shared_counts = {}
        return own, shared_counts

    async def list_documents(self, owner: str) -> list[DocumentInfo]:
        """The owner's documents, newest first; a global writer also sees the shared ones."""
        statement = (
            select(Document).where(col(Document.owner_id).in_(self._writable_owners(owner)),
                                   col(Document.chunks) > 0)
            .order_by(col(Document.created_at).desc(), col(Document.source))
        )
        async with self.db.session() as session:
            return [_info(row) for row in (await session.exec(statement)).all()]

    def _writable_owners(self, owner: str) -> list[str]:
        shared = owner in self.settings.global_writers
        return [owner, GLOBAL_OWNER] if shared else [owner]

    @_while("delete")
    async def delete_document(self, owner: str, document_id: str) -> bool:
        """Delete one of the owner's documents; False if the owner has no such document."""
        async with self.db.session() as session:
            row = await session.get(Document, document_id)
        if row is None or row.owner_id not in self._writable_owners(owner):
            return False
        await asyncio.to_thread(self.store.open)
        await self._forget(row.owner_id, row.scope, row.id)
        return True

    @_while("delete")
    async def erase_owner(self, owner: str) -> int:
        """Remove everything of ``owner`` (every collection of theirs, then the rows);
        returns the number of documents that were recorded."""
        if not owner:
            raise AuthError("no owner")
        async with self.db.session() as session:
            rows = (await session.exec(
                select(Document.scope).where(col(Document.owner_id) == owner)
            )).all()
        scopes = {*rows, *self.settings.scopes, GLOBAL_SCOPE}
        await asyncio.to_thread(self.store.open)
        for scope in sorted(scopes):
            await asyncio.to_thread(self.store.drop, owner, scope)
        async with self.db.session() as session:
            await session.execute(delete(Document).where(col(Document.owner_id) == owner))
            await session.commit()
        return len(rows)

    @_while("repair")
    async def repair(self, apply: bool = True) -> list[Check]:
        """Find (and with ``apply``, remove) what a stopped ingest left: pending documents
        (see the module's docstring) with their vectors, and vectors of chunks that no
        listed document has. One :class:`Check` per kind, for ``mami db repair`` and
        ``mami doctor`` (which passes ``apply=False``)."""
        pending, in_flight = await self._pending()
        sources = [row.source for row in pending]
        if apply:
            for row in pending:
                await self._forget(row.owner_id, row.scope, row.id)
            sources += self.removed_at_start  # by this process's start, just before
            self.removed_at_start = []
        async with self.db.session() as session:
            rows = (await session.exec(
                select(Document.owner_id, Document.scope, Document.id, Document.chunks)
                .where(col(Document.chunks) > 0))).all()
        keep: dict[tuple[str, str], dict[str, int]] = {}
        for row_owner, scope, doc_id, chunks in rows:
            keep.setdefault((row_owner, scope), {})[doc_id] = int(chunks)
        for row in in_flight:  # an ingest still running: its chunks are not orphans
            keep.setdefault((row.owner_id, row.scope), {})[row.id] = 1 << 30
        orphans, collections = await asyncio.to_thread(self._orphan_chunks, keep, apply)
        done = "removed" if apply else "found"
        names = ", ".join(sorted(sources)[:5]) + (", ..." if len(sources) > 5 else "")
        checks = [
            Check("retrieval documents", "ok", f"{done} {len(sources)} unfinished "
                  f"document(s) of a stopped ingest ({names}); ingest them again")
            if sources and apply else
            Check("retrieval documents", "warn", f"{len(sources)} unfinished document(s) "
                  f"of a stopped ingest ({names})", "run `mami db repair` (it removes them; "
                  "ingest them again)")
            if sources else
            Check("retrieval documents", "ok", "no unfinished documents"),
            Check("retrieval vectors", "ok", f"{done} {orphans} orphan vector(s) (chunks of no "
                  f"listed document) in {collections} collection(s)")
            if orphans and apply else
            Check("retrieval vectors", "warn", f"{orphans} orphan vector(s) (chunks of no "
                  f"listed document) in {collections} collection(s)", "run `mami db repair`")
            if orphans else
            Check("retrieval vectors", "ok", f"every vector belongs to a listed document "
                  f"({collections} collection(s) read)"),
        ]
        return checks

    async def repair_pending(self) -> int:
        """At start-up: remove the pending documents a stopped ingest left (not the
        vectors of unlisted documents: that scan reads every collection, so it is left
        to ``mami db repair``). Returns how many; Chroma is not opened when none."""
        pending, _in_flight = await self._pending()
        for row in pending:
            await self._forget(row.owner_id, row.scope, row.id)
        self.removed_at_start += [row.source for row in pending]
        if pending:
            log.warning("removed %d document(s) left unfinished by a stopped ingest: %s",
                        len(pending), ", ".join(row.source for row in pending[:5]))
        return len(pending)

    async def _pending(self) -> tuple[list[Document], list[Document]]:
        """Pending rows: (abandoned, possibly still being written). An embedded Chroma
        belongs to this process, so none of its pending rows is being written."""
        async with self.db.session() as session:
            rows = list((await session.exec(
                select(Document).where(col(Document.chunks) == 0))).all())
        if self.embedded:
            return rows, []
        cutoff = utcnow() - PENDING_GRACE
        old = [r for r in rows if _aware(r.created_at) < cutoff]
        return old, [r for r in rows if _aware(r.created_at) >= cutoff]

    def _orphan_chunks(self, keep: dict[tuple[str, str], dict[str, int]], apply: bool
                       ) -> tuple[int, int]:
        """Chunks in this retriever's collections that no entry of ``keep`` ((owner,
        scope) -> document -> chunk count) covers; deleted with ``apply``. Returns
        (orphans, collections read)."""
        prefix = f"{self.store.prefix}-"
        orphans = read = 0
        for collection in self.store.client.list_collections():
            if not collection.name.startswith(prefix):
                continue
            meta = collection.metadata or {}
            owner, scope = meta.get("owner"), meta.get("scope")
            shared = collection.name == self.store.shared_name
            if not shared and (owner is None or scope is None):
                continue
            read += 1
            bad: list[str] = []
            offset = 0
            while True:
                page = collection.get(include=["metadatas"], limit=SCAN_PAGE, offset=offset)
                for chunk_id, chunk in zip(page["ids"], page["metadatas"], strict=True):
                    chunk = chunk or {}
                    # the shared collection holds many owners' scopes: each record says whose
                    whose = ((chunk.get("owner"), chunk.get("scope")) if shared
                             else (owner, scope))
                    documents = keep.get((str(whose[0]), str(whose[1])), {})
                    if int(chunk.get("chunk", 0)) >= documents.get(str(chunk.get("doc")), 0):
                        bad.append(chunk_id)
                if len(page["ids"]) < SCAN_PAGE:
                    break
                offset += SCAN_PAGE
            orphans += len(bad)
            if apply and bad:
                for i in range(0, len(bad), SCAN_PAGE):
                    collection.delete(ids=bad[i : i + SCAN_PAGE])
        return orphans, read


def _aware(moment: Any) -> Any:
    from datetime import UTC

    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
