"""Chroma access: the client, and vectors kept in one collection per (owner, scope).

Isolation is structural: a collection only ever holds one owner's chunks of one
scope, so a query of that collection cannot return anyone else's. It is also fast:
Chroma's filtered queries cost ~100 ms at 100k chunks (DESIGN.md, bench/rag_filter.py)
while an unfiltered query of a small collection takes ~1-2 ms. :meth:`VectorStore.query`
is the only function that runs a vector query, and it requires the owner.
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

__all__ = ["Hit", "IsolationError", "VectorStore", "collection_name", "open_client"]


_opening = threading.Lock()


def open_client(url: str = "", path: str | Path = "", token: str = "") -> Any:
    """A Chroma client: ``HttpClient`` for ``url`` (``http[s]://host:port``), otherwise
    an embedded ``PersistentClient`` at ``path`` (one process per path). ``token`` is
    sent as ``X-Chroma-Token``. Telemetry is off."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    settings = ChromaSettings(anonymized_telemetry=False)
    if not url:
        private_dir(Path(path))
        # Chroma shares one system per path in a process, but two threads creating it at
        # once break it ("no attribute 'bindings'"): memory and retrieval start together.
        with _opening:
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
    digest = hashlib.sha256(f"{owner}\x1f{scope}".encode()).hexdigest()[:32]
    return f"{prefix}-{digest}"


class IsolationError(RuntimeError):
    """A collection returned a chunk of another owner or scope: a bug, never filtered."""


@dataclass(frozen=True, slots=True)
class Hit:
    """One vector-query result; ``score`` is the cosine similarity."""

    id: str
    text: str
    metadata: Mapping[str, Any]
    score: float


class VectorStore:
    """Chunks of one owner and scope live in their own collection.

    Every method is synchronous (call it in a worker thread). The client is opened on
    first use by ``connect``, a zero-argument callable.
    """

    def __init__(self, connect: Any, prefix: str = "mami-rag", ef_search: int = 200) -> None:
        self._connect = connect
        self.prefix = prefix
        self.ef_search = ef_search
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

    def _collection(self, owner: str, scope: str, create: bool = False) -> Any | None:
        from chromadb.errors import NotFoundError

        name = collection_name(self.prefix, owner, scope)
        cached = self._collections.get(name)
        if cached is not None:
            return cached
        try:
            if create:
                found = self.client.get_or_create_collection(
                    name, configuration={"hnsw": {"space": "cosine", "ef_search": self.ef_search}},
                    metadata={"owner": owner, "scope": scope}, embedding_function=None,
                )
            else:
                found = self.client.get_collection(name, embedding_function=None)
        except NotFoundError:
            self._collections.pop(name, None)
            return None
        self._collections[name] = found
        return found

    def _retrying(self, owner: str, scope: str, action: Any, create: bool = False) -> Any:
        """Run ``action(collection)``; once more with a fresh handle if another process
        dropped and re-created the collection meanwhile. ``None`` if it does not exist."""
        from chromadb.errors import NotFoundError

        for attempt in range(2):
            collection = self._collection(owner, scope, create=create)
            if collection is None:
                return None
            try:
                return action(collection)
            except NotFoundError:
                self._collections.pop(collection.name, None)
                if attempt:
                    raise
        return None

    def upsert(
        self, owner: str, scope: str, ids: Sequence[str], vectors: Any,
        texts: Sequence[str], metadatas: Sequence[Mapping[str, Any]],
    ) -> None:
        """Insert or replace chunks, in as few calls as Chroma's batch limit allows."""
        batch = self.client.get_max_batch_size()

        def write(collection: Any) -> None:
            for i in range(0, len(ids), batch):
                collection.upsert(
                    ids=list(ids[i : i + batch]), embeddings=vectors[i : i + batch],
                    documents=list(texts[i : i + batch]),
                    metadatas=[dict(m) for m in metadatas[i : i + batch]],
                )

        self._retrying(owner, scope, write, create=True)

    def delete_document(self, owner: str, scope: str, document_id: str, keep: int = 0) -> None:
        """Delete a document's chunks whose index is ``keep`` or more (all by default)."""
        where: dict[str, Any] = {"doc": document_id}
        if keep:
            where = {"$and": [where, {"chunk": {"$gte": keep}}]}
        self._retrying(owner, scope, lambda c: c.delete(where=where))

    def drop(self, owner: str, scope: str) -> bool:
        """Delete the whole collection of ``owner``'s ``scope``; False if there was none."""
        from chromadb.errors import NotFoundError

        name = collection_name(self.prefix, owner, scope)
        self._collections.pop(name, None)
        try:
            self.client.delete_collection(name)
        except NotFoundError:
            return False
        return True

    def count(self, owner: str, scope: str) -> int:
        """Chunks stored for ``owner``'s ``scope``."""
        return int(self._retrying(owner, scope, lambda c: c.count()) or 0)

    def query(self, owner: str, scopes: Mapping[str, int], vector: Any, k: int) -> list[Hit]:
        """The ``k`` chunks nearest to ``vector`` among ``owner``'s chunks in ``scopes``
        (scope -> number of chunks stored, from the documents table), best first.

        The only vector query in mami's RAG. It queries each (owner, scope) collection
        and merges; a result carrying another owner or scope raises IsolationError.
        """
        if not owner:
            raise ValueError("a vector query needs an owner")
        hits: list[Hit] = []
        for scope, stored in scopes.items():
            if stored <= 0 or k <= 0:
                continue

            def run(collection: Any, n: int = min(k, stored)) -> Any:
                return collection.query(
                    query_embeddings=[vector], n_results=n,
                    include=["documents", "metadatas", "distances"],
                )

            found = self._retrying(owner, scope, run)
            if found is None:
                continue
            for id_, text, meta, distance in zip(
                found["ids"][0], found["documents"][0], found["metadatas"][0],
                found["distances"][0], strict=True,
            ):
                if meta.get("owner") != owner or meta.get("scope") != scope:
                    raise IsolationError(f"collection for {owner!r}/{scope!r} returned {id_!r}")
                hits.append(Hit(id_, text, meta, 1.0 - float(distance)))
        hits.sort(key=lambda h: h.score, reverse=True)
        return hits[:k]
