"""Chroma access: one client per process, and vectors kept in a tiered layout.

An owner's scope with few chunks (at most ``shared_max``, the common case) lives in one
shared collection per prefix, every record tagged with a key derived from (owner, scope);
a search reads exactly those records by that key and ranks them exactly (recall 1.0), so
the number of owners adds no collections, no open index and no descriptors. A scope that
outgrows ``shared_max`` moves to a collection of its own, searched with HNSW. Isolation
is structural either way: a search only reads the records carrying the owner's own key,
or the owner's own collection, and a record of anyone else raises IsolationError.
:meth:`VectorStore.query` is the only function that runs a vector query, and it
requires the owner.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from core.db import private_dir
from core.errors import ConfigError
from core.protocols import Check

__all__ = ["Hit", "IsolationError", "VectorStore", "collection_name", "open_client",
           "shared_key"]


_opening = threading.Lock()
_clients: dict[tuple[str, str, str], Any] = {}

SYNC_THRESHOLD = 1
"""Records after which an own collection's HNSW index is written to disk. Chroma keeps a
bounded number of indexes loaded (descriptor limit / 5) and cannot reload an evicted
index that was never written ("Nothing found on disk"; its default waits for 1,000
records), so every write of an own collection is persisted."""


def open_client(url: str = "", path: str | Path = "", token: str = "") -> Any:
    """The process's Chroma client for this location, opened once and shared by every
    plugin that asks for it (memory and retrieval): ``HttpClient`` for ``url``
    (``http[s]://host:port``), otherwise an embedded ``PersistentClient`` at ``path``
    (one process per path). ``token`` is sent as ``X-Chroma-Token``. Telemetry is off."""
    key = (url, "" if url else str(Path(path).resolve()), token)
    with _opening:
        client = _clients.get(key)
        if client is None:
            # Two threads creating the embedded system at once break it ("no attribute
            # 'bindings'"): memory and retrieval start together.
            client = _clients[key] = _new_client(url, path, token)
        return client


def forget_clients() -> None:
    """Drop the shared clients (tests that delete a store's directory call this)."""
    with _opening:
        _clients.clear()


def _new_client(url: str, path: str | Path, token: str) -> Any:
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    settings = ChromaSettings(anonymized_telemetry=False)
    if not url:
        private_dir(Path(path))
        return chromadb.PersistentClient(path=str(path), settings=settings)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"chroma_url {url!r}: expected http://host:port or https://host:port")
    ssl = parts.scheme == "https"
    headers = {"X-Chroma-Token": token} if token else None
    return chromadb.HttpClient(
        host=parts.hostname, port=parts.port or (443 if ssl else 80), ssl=ssl,
        headers=headers, settings=settings,
    )


def shown_location(url: str, path: str | Path) -> str:
    """Where Chroma is, fit to print: a URL without credentials or query, else the path."""
    if not url:
        return str(path)
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def collection_name(prefix: str, owner: str, scope: str) -> str:
    """Deterministic, valid Chroma collection name for one owner's scope."""
    return f"{prefix}-{shared_key(owner, scope)}"


def shared_key(owner: str, scope: str) -> str:
    """The tag of one owner's scope: in the shared collection every record carries it
    (metadata ``key``), and its own collection is named after it."""
    return hashlib.sha256(f"{owner}\x1f{scope}".encode()).hexdigest()[:32]


class IsolationError(RuntimeError):
    """A collection returned a chunk of another owner or scope: a bug, never filtered."""


@dataclass(frozen=True, slots=True)
class Hit:
    """One vector-query result; ``score`` is the cosine similarity."""

    id: str
    text: str
    metadata: Mapping[str, Any]
    score: float


def _cosine(vectors: Any, vector: Any) -> Any:
    import numpy as np

    matrix = np.asarray(vectors, dtype=np.float32)
    query = np.asarray(vector, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1) * float(np.linalg.norm(query))
    return (matrix @ query) / np.where(norms == 0, 1.0, norms)


class VectorStore:
    """The vectors of every owner's scopes under one collection prefix: small scopes in
    the shared collection ``<prefix>-shared``, big ones (more than ``shared_max``
    records) in a collection of their own (see the module docstring).

    Every method is synchronous (call it in a worker thread). The client is opened on
    first use by ``connect``, a zero-argument callable.
    """

    def __init__(self, connect: Any, prefix: str = "mami-rag", ef_search: int = 200,
                 shared_max: int = 256) -> None:
        self._connect = connect
        self.prefix = prefix
        self.ef_search = ef_search
        self.shared_max = shared_max
        self._client: Any = None
        self._collections: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    async def check(self, what: str, where: str) -> Check:
        """Whether Chroma opens and answers (for ``mami doctor``)."""
        try:
            await asyncio.to_thread(lambda: self.client.heartbeat())
        except Exception as exc:
            return Check(what, "fail", f"Chroma at {where} does not open: "
                         f"{type(exc).__name__}: {exc}",
                         "start the Chroma server (`chroma run`) or fix chroma_url / path")
        return Check(what, "ok", f"Chroma at {where} answers")

    @property
    def shared_name(self) -> str:
        return f"{self.prefix}-shared"

    def _named(self, name: str, create: bool, metadata: dict[str, Any] | None = None) -> Any:
        from chromadb.errors import NotFoundError

        cached = self._collections.get(name)
        if cached is not None:
            return cached
        try:
            if create:
                found = self.client.get_or_create_collection(
                    name, configuration={"hnsw": {
                        "space": "cosine", "ef_search": self.ef_search,
                        "sync_threshold": SYNC_THRESHOLD, "batch_size": SYNC_THRESHOLD}},
                    metadata=metadata, embedding_function=None,
                )
            else:
                found = self.client.get_collection(name, embedding_function=None)
        except NotFoundError:
            self._collections.pop(name, None)
            return None
        self._collections[name] = found
        return found

    def _collection(self, owner: str, scope: str, create: bool = False) -> Any | None:
        """The own collection of ``owner``'s ``scope``; None if it has none."""
        return self._named(collection_name(self.prefix, owner, scope), create,
                           {"owner": owner, "scope": scope})

    def _shared(self) -> Any:
        return self._named(self.shared_name, True, {"shared": True})

    def _retrying(self, name: str, find: Any, action: Any) -> Any:
        """Run ``action(find())``; once more with a fresh handle if another process
        dropped and re-created the collection meanwhile. None if it does not exist."""
        from chromadb.errors import NotFoundError

        for attempt in range(2):
            collection = find()
            if collection is None:
                return None
            try:
                return action(collection)
            except NotFoundError:
                self._collections.pop(name, None)
                if attempt:
                    raise
        return None

    def _own(self, owner: str, scope: str, action: Any, create: bool = False) -> Any:
        return self._retrying(collection_name(self.prefix, owner, scope),
                              lambda: self._collection(owner, scope, create), action)

    def _in_shared(self, action: Any) -> Any:
        return self._retrying(self.shared_name, self._shared, action)

    def _shared_rows(self, owner: str, scope: str, include: list[str]) -> dict[str, Any]:
        """The records of ``owner``'s ``scope`` in the shared collection; a record of
        anyone else raises IsolationError."""
        key = shared_key(owner, scope)
        found = self._in_shared(lambda c: c.get(where={"key": key}, include=include))
        for id_, meta in zip(found["ids"], found.get("metadatas") or [], strict=False):
            if meta.get("owner") != owner or meta.get("scope") != scope:
                raise IsolationError(f"shared records of {owner!r}/{scope!r} returned {id_!r}")
        return dict(found)

    def _write(self, collection: Any, ids: Sequence[str], vectors: Any, texts: Sequence[str],
               metadatas: Sequence[Mapping[str, Any]]) -> None:
        batch = self.client.get_max_batch_size()
        for i in range(0, len(ids), batch):
            collection.upsert(
                ids=list(ids[i : i + batch]), embeddings=vectors[i : i + batch],
                documents=list(texts[i : i + batch]),
                metadatas=[dict(m) for m in metadatas[i : i + batch]],
            )

    def upsert(
        self, owner: str, scope: str, ids: Sequence[str], vectors: Any,
        texts: Sequence[str], metadatas: Sequence[Mapping[str, Any]],
    ) -> None:
        """Insert or replace chunks, in as few calls as Chroma's batch limit allows: in
        the shared collection while the scope stays within ``shared_max`` records, else
        in its own collection (moving the shared ones there first)."""
        key = shared_key(owner, scope)
        tagged = [{**m, "owner": owner, "scope": scope, "key": key} for m in metadatas]
        if self._collection(owner, scope) is None:
            held = self._shared_rows(owner, scope, ["metadatas"])["ids"]
            if len(set(held) | set(ids)) <= self.shared_max:
                self._in_shared(lambda c: self._write(c, ids, vectors, texts, tagged))
                return
            self._promote(owner, scope)
        self._own(owner, scope, lambda c: self._write(c, ids, vectors, texts, tagged),
                  create=True)

    def _promote(self, owner: str, scope: str) -> None:
        """Move ``owner``'s ``scope`` from the shared collection to its own. Copy, then
        delete: a search reads both places meanwhile, so nothing is ever missing."""
        rows = self._shared_rows(owner, scope, ["embeddings", "documents", "metadatas"])
        if rows["ids"]:
            self._own(owner, scope, lambda c: self._write(
                c, rows["ids"], rows["embeddings"], rows["documents"], rows["metadatas"]),
                create=True)
            self._in_shared(lambda c: c.delete(ids=list(rows["ids"])))
        else:
            self._collection(owner, scope, create=True)

    def delete_document(self, owner: str, scope: str, document_id: str, keep: int = 0) -> None:
        """Delete a document's chunks whose index is ``keep`` or more (all by default)."""
        where: dict[str, Any] = {"doc": document_id}
        if keep:
            where = {"$and": [where, {"chunk": {"$gte": keep}}]}
        self._own(owner, scope, lambda c: c.delete(where=where))
        shared = [{"key": shared_key(owner, scope)},
                  *(where["$and"] if keep else [where])]
        self._in_shared(lambda c: c.delete(where={"$and": shared}))

    def drop(self, owner: str, scope: str) -> bool:
        """Delete every record of ``owner``'s ``scope``; False if there was none."""
        from chromadb.errors import NotFoundError

        held = self._shared_rows(owner, scope, ["metadatas"])["ids"]
        if held:
            self._in_shared(lambda c: c.delete(ids=list(held)))
        name = collection_name(self.prefix, owner, scope)
        self._collections.pop(name, None)
        try:
            self.client.delete_collection(name)
        except NotFoundError:
            return bool(held)
        return True

    def ids(self, owner: str, scope: str) -> set[str]:
        """Ids of every record stored for ``owner``'s ``scope``."""
        found = set(self._shared_rows(owner, scope, ["metadatas"])["ids"])
        return found | set(self._own(owner, scope, lambda c: c.get(include=[])["ids"]) or [])

    def count(self, owner: str, scope: str) -> int:
        """Chunks stored for ``owner``'s ``scope``."""
        return len(self.ids(owner, scope))

    def query(self, owner: str, scopes: Mapping[str, int], vector: Any, k: int) -> list[Hit]:
        """The ``k`` chunks nearest to ``vector`` among ``owner``'s chunks in ``scopes``
        (scope -> number of chunks stored, from the documents table), best first.

        The only vector query in mami's RAG. For each scope it ranks the owner's shared
        records exactly and, when they are fewer than ``stored``, queries the scope's own
        collection; a result carrying another owner or scope raises IsolationError.
        """
        if not owner:
            raise ValueError("a vector query needs an owner")
        found: dict[str, Hit] = {}
        for scope, stored in scopes.items():
            if stored <= 0 or k <= 0:
                continue
            for hit in self._scope_query(owner, scope, stored, vector, k):
                found[hit.id] = hit
        return sorted(found.values(), key=lambda h: h.score, reverse=True)[:k]

    def _scope_query(self, owner: str, scope: str, stored: int, vector: Any, k: int
                     ) -> list[Hit]:
        rows = self._shared_rows(owner, scope, ["embeddings", "documents", "metadatas"])
        hits: list[Hit] = []
        if rows["ids"]:
            scores = _cosine(rows["embeddings"], vector)
            hits = [Hit(id_, text, meta, float(score)) for id_, text, meta, score in zip(
                rows["ids"], rows["documents"], rows["metadatas"], scores, strict=True)]
        if len(rows["ids"]) >= stored:
            return hits

        def run(collection: Any) -> Any:
            return collection.query(
                query_embeddings=[vector], n_results=min(k, max(stored, 1)),
                include=["documents", "metadatas", "distances"],
            )

        found = self._own(owner, scope, run)
        if found is None:
            return hits
        for id_, text, meta, distance in zip(
            found["ids"][0], found["documents"][0], found["metadatas"][0],
            found["distances"][0], strict=True,
        ):
            if meta.get("owner") != owner or meta.get("scope") != scope:
                raise IsolationError(f"collection for {owner!r}/{scope!r} returned {id_!r}")
            hits.append(Hit(id_, text, meta, 1.0 - float(distance)))
        return hits
