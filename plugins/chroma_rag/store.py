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
import contextlib
import functools
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from core.db import private_dir
from core.errors import ConfigError, PluginUnavailable
from core.protocols import Check

log = logging.getLogger("mami.rag")

__all__ = ["Hit", "IsolationError", "StoreHeld", "StoreUnavailable", "VectorStore",
           "collection_name", "open_client", "shared_key"]

T = TypeVar("T")
HTTP_TIMEOUT = 30.0
"""Seconds a Chroma server has to answer each request (chromadb's own client waits
forever: a server that is stopped or hung would hold every chat turn, never answered)."""


_opening = threading.Lock()
_clients: dict[tuple[str, str, str], Any] = {}

SYNC_THRESHOLD = 1
"""Records after which an own collection's HNSW index is written to disk. Chroma keeps a
bounded number of indexes loaded (descriptor limit / 5) and cannot reload an evicted
index that was never written ("Nothing found on disk"; its default waits for 1,000
records), so every write of an own collection is persisted."""


_held: dict[str, Any] = {}
LOCK_FILE = "mami.lock"


def hold_store(path: str | Path, holder: str = "") -> None:
    """Make this process the one owner of the embedded Chroma at ``path``: an exclusive
    lock on ``<path>/mami.lock`` (released when the process ends, however it ends),
    naming ``holder`` (``mami serve at http://...``) for whoever comes second. A store
    held by another process raises StoreUnavailable naming it: embedded Chroma is one
    process only, and a second one writes what the first never sees."""
    import fcntl
    import json

    key = str(Path(path).resolve())
    lock = Path(key) / LOCK_FILE
    held = _held.get(key)
    if held is not None and lock.exists() and os.fstat(held.fileno()).st_ino == lock.stat().st_ino:
        return
    private_dir(Path(key))
    handle = open(lock, "a+", encoding="utf-8")  # noqa: SIM115 (kept open: it is the lock)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        try:
            info = json.loads(handle.read() or "{}")
        except ValueError:
            info = {}
        handle.close()
        raise StoreHeld(key, info) from None
    handle.seek(0)
    handle.truncate()
    url = holder.split(" at ", 1)[1] if " at " in holder else ""
    handle.write(json.dumps({"pid": os.getpid(), "holder": holder or _command(), "url": url}))
    handle.flush()
    _held[key] = handle


def _command() -> str:
    import sys

    return " ".join(["mami", *sys.argv[1:2]]) if sys.argv[0].endswith("mami") else \
        Path(sys.argv[0]).name


def _held_message(path: str, info: Mapping[str, Any], doing: str) -> str:
    who = f"{info.get('holder') or 'another process'} (pid {info.get('pid', '?')})"
    url = info.get("url")
    outcome, through = HELD_ADVICE.get(doing, HELD_ADVICE[""])
    if doing == "repair":
        instead = through
    elif url:
        instead = f"{through.format(url=url)}, or stop it first"
    else:
        instead = "wait for it to finish or stop it"
    return (f"the embedded Chroma at {path} is in use by {who}, and embedded Chroma serves "
            f"one process only: {outcome}. {instead[0].upper()}{instead[1:]}; for several "
            "processes, run a Chroma server (`chroma run`) and set chroma_url.")


HELD_ADVICE = {
    "": ("nothing was read or written",
         "use that server instead (its API at {url}, or its web page)"),
    "ingest": ("nothing was written", "send the documents through that server instead "
               "(POST {url}/api/documents, or its web page)"),
    "search": ("nothing was searched", "search through that server instead "
               "(POST {url}/api/search, a chat turn there, or its web page)"),
    "delete": ("nothing was deleted", "delete through that server instead "
               "(DELETE {url}/api/documents/{{id}}, or its web page)"),
    "repair": ("nothing was repaired", "stop it, then run `mami db repair` again (a "
               "starting `mami serve` also removes what a stopped ingest left)"),
}
"""Per operation on a store another process holds: what was not done, and what to do
instead (``{url}``: the holding server's address)."""


def open_client(url: str = "", path: str | Path = "", token: str = "", holder: str = "") -> Any:
    """The process's Chroma client for this location, opened once and shared by every
    plugin that asks for it (memory and retrieval): ``HttpClient`` for ``url``
    (``http[s]://host:port``), otherwise an embedded ``PersistentClient`` at ``path``,
    held by this process (:func:`hold_store`, described as ``holder``). ``token`` is
    sent as ``X-Chroma-Token``. Telemetry is off."""
    key = (url, "" if url else str(Path(path).resolve()), token)
    with _opening:
        client = _clients.get(key)
        if client is None:
            if not url:
                hold_store(path, holder)
            # Two threads creating the embedded system at once break it ("no attribute
            # 'bindings'"): memory and retrieval start together.
            client = _clients[key] = _new_client(url, path, token)
        return client


def close_client(url: str = "", path: str | Path = "", token: str = "") -> None:
    """Close the process's client for this location (the next :func:`open_client` opens
    a new one): after a storage fault, so a repaired directory is opened afresh."""
    key = (url, "" if url else str(Path(path).resolve()), token)
    with _opening:
        if _clients.pop(key, None) is not None and not url:
            _drop_system(Path(key[1]))


def _drop_system(path: Path) -> None:
    """Forget Chroma's shared system for ``path`` (a failed start leaves a broken one
    behind that every later client would get)."""
    from chromadb.api.shared_system_client import SharedSystemClient

    for identifier in list(SharedSystemClient._identifier_to_system):
        if Path(identifier).resolve() == path:
            system = SharedSystemClient._identifier_to_system.pop(identifier)
            SharedSystemClient._identifier_to_refcount.pop(identifier, None)
            with contextlib.suppress(Exception):  # a broken one may not stop cleanly
                system.stop()


def _new_client(url: str, path: str | Path, token: str) -> Any:
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    settings = ChromaSettings(anonymized_telemetry=False)
    if not url:
        private_dir(Path(path))
        try:
            return chromadb.PersistentClient(path=str(path), settings=settings)
        except BaseException:
            _drop_system(Path(path).resolve())
            raise
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"chroma_url {url!r}: expected http://host:port or https://host:port")
    ssl = parts.scheme == "https"
    headers = {"X-Chroma-Token": token} if token else None
    import httpx

    # Opening asks the server already, without a deadline: ask once with one first.
    heartbeat = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], "/api/v2/heartbeat",
                            "", ""))
    httpx.get(heartbeat, headers=headers, timeout=HTTP_TIMEOUT)
    client = chromadb.HttpClient(
        host=parts.hostname, port=parts.port or (443 if ssl else 80), ssl=ssl,
        headers=headers, settings=settings,
    )
    session = getattr(getattr(client, "_server", None), "_session", None)
    if isinstance(session, httpx.Client):
        session.timeout = httpx.Timeout(HTTP_TIMEOUT)
    else:
        log.warning("chromadb's HTTP client changed: requests to %s have no deadline",
                    shown_location(url, ""))
    return client


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


class StoreUnavailable(PluginUnavailable):
    """Chroma cannot be used right now (its directory is missing or not writable, or the
    server does not answer): a 503 whose message names the place and the fix."""


class StoreHeld(StoreUnavailable):
    """The embedded store belongs to another running process (see :func:`hold_store`).
    The message fits the operation (:meth:`doing`): what was not done, and the way
    round it (through that server, or after stopping it)."""

    def __init__(self, path: str, info: Mapping[str, Any], doing: str = "") -> None:
        super().__init__(_held_message(path, info, doing))
        self.path, self.info = path, dict(info)
        self.situation = self.message.partition(": nothing was")[0]
        """Who holds the store, without the advice (for ``mami doctor``)."""

    def doing(self, operation: str) -> StoreHeld:
        """The same refusal, its advice fit for ``operation`` (``ingest``, ``search``,
        ``delete`` or ``repair``)."""
        return StoreHeld(self.path, self.info, operation)


FAULT_SIGNS = ("readonly", "read-only", "permission denied", "disk i/o", "unable to open",
               "no space left", "disk is full", "no such file", "nothing found on disk",
               "code: 1032", "code: 8", "code: 10", "code: 14")


def _guarded(method: Callable[..., T]) -> Callable[..., T]:
    """Turn a storage fault inside ``method`` into :class:`StoreUnavailable` (and close
    the client, so the next call reopens Chroma: a repaired store works again)."""

    @functools.wraps(method)
    def wrapper(self: VectorStore, *args: Any, **kwargs: Any) -> T:
        self.ensure_present()
        try:
            result = method(self, *args, **kwargs)
        except (IsolationError, StoreUnavailable, ValueError):
            raise
        except Exception as exc:
            raise self.fault(exc) from exc
        self.last_fault = None
        return result

    return wrapper


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
                 shared_max: int = 256, *, url: str = "", path: str | Path = "",
                 close: Callable[[], None] | None = None) -> None:
        self._connect = connect
        self.prefix = prefix
        self.ef_search = ef_search
        self.shared_max = shared_max
        self.url = url
        self.path = Path(path) if path and not url else None
        self._close = close
        self._client: Any = None
        self._collections: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.last_fault: str | None = None
        self._stripes = [threading.Lock() for _ in range(64)]
        self._settled: set[str] = set()  # own collections checked for the old layout
        self._small_checked: set[str] = set()  # ... and for being small enough to share
        self._opened = False  # an embedded store existed: its vanishing is a fault
        self._held_elsewhere = False  # another process holds the embedded store

    @property
    def client(self) -> Any:
        try:
            client = self._connect()
        except StoreHeld as exc:
            self.held_elsewhere(exc)
            raise
        except (ConfigError, StoreUnavailable):
            raise
        except Exception as exc:
            if self.url:
                self.last_fault = (f"the Chroma server at {self.where} does not answer ({exc}): "
                                   "start it (`chroma run`) or fix chroma_url")
            else:
                self.last_fault = (f"Chroma at {self.path} cannot be opened ("
                                   f"{type(exc).__name__}: {exc}): make the directory and its "
                                   "files writable by the user running mami (and check the "
                                   "disk), then retry")
            raise StoreUnavailable(self.last_fault) from exc
        self._opened = True
        if self._held_elsewhere:  # the other process stopped: the store is ours now
            self._held_elsewhere = False
            self.last_fault = None
        with self._lock:
            if client is not self._client:  # reopened after a fault: old handles are dead
                self._client = client
                self._collections.clear()
            return client

    def open(self) -> None:
        """Open the store now: :class:`StoreHeld` or :class:`StoreUnavailable` before a
        caller changes anything else (a document's row), not half-way through."""
        self.ensure_present()
        _ = self.client

    def held_elsewhere(self, exc: StoreHeld) -> None:
        """Another process holds the embedded store: ``degraded`` in :meth:`health`
        (naming it) until this process can open the store."""
        self._held_elsewhere = True
        self.last_fault = exc.message

    @property
    def where(self) -> str:
        return self.url or str(self.path or "")

    def ensure_present(self) -> None:
        """503 when the embedded store's directory has vanished (Chroma would go on
        reading a deleted file and silently lose every write)."""
        if self.path is None or not self._opened or (self.path / "chroma.sqlite3").exists():
            return  # (the first open creates it)
        self._reset()
        self.last_fault = (f"the Chroma directory {self.path} is missing: restore it from a "
                           "backup (then retry), or restart mami to start an empty one "
                           "and upload the documents again")
        raise StoreUnavailable(self.last_fault)

    def fault(self, exc: BaseException) -> BaseException:
        """``exc`` as the 503 to answer with if it is a storage fault, else ``exc``."""
        text = f"{type(exc).__name__}: {exc}".lower()
        if self.url:
            if not any(n in type(exc).__name__ for n in ("Connect", "Timeout", "Network")) \
                    and "could not connect" not in text:
                return exc
            self.last_fault = (f"the Chroma server at {self.where} does not answer: start it "
                               "(`chroma run`) or fix chroma_url")
        elif any(sign in text for sign in FAULT_SIGNS) or isinstance(exc, OSError):
            self._reset()
            self.last_fault = (f"Chroma at {self.where} cannot be written or read ({exc}): "
                               "make the directory and its files writable by the user "
                               "running mami (and check the disk), then retry")
        else:
            return exc
        return StoreUnavailable(self.last_fault)

    def _reset(self) -> None:
        with self._lock:
            self._client = None
            self._collections.clear()
        if self._close is not None:
            self._close()

    def health(self) -> dict[str, Any]:
        """``{"status": "ok"}``, or ``degraded`` with the reason: the directory is missing
        or not writable, the server does not answer, or the last call hit a fault."""
        reason = None
        if self.path is not None and self._opened:
            files = (self.path, self.path / "chroma.sqlite3")
            if not files[1].exists():
                reason = f"the Chroma directory {self.path} is missing"
            elif not all(os.access(f, os.W_OK) for f in files):
                reason = f"Chroma at {self.path} is not writable"
        if reason is None and self._held_elsewhere:
            with contextlib.suppress(StoreUnavailable):  # taken over once it is free
                _ = self.client
        if reason is None and self.last_fault and self.url:
            try:  # the server may be back: a heartbeat says so without waiting for a call
                self.client.heartbeat()
                self.last_fault = None
            except Exception:
                pass
        reason = reason or self.last_fault
        return {"status": "degraded", "reason": reason} if reason else {"status": "ok"}

    async def check(self, what: str, where: str) -> Check:
        """Whether Chroma opens and answers (for ``mami doctor``)."""
        try:
            await asyncio.to_thread(lambda: self.client.heartbeat())
        except StoreHeld as exc:
            return Check(what, "warn", exc.situation,
                         "the checks of its contents run when no other mami process holds "
                         "it (stop that one first)")
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
        found = self._named(collection_name(self.prefix, owner, scope), create,
                            {"owner": owner, "scope": scope})
        if found is not None and found.name not in self._settled:
            self._settled.add(found.name)
            self._persist_always(found)
        return found

    def _persist_always(self, collection: Any) -> None:
        """Make a collection of the old layout write its index on every change (and once
        now), so that Chroma can reload it after evicting it."""
        hnsw = (getattr(collection, "configuration", None) or {}).get("hnsw") or {}
        if hnsw.get("sync_threshold", SYNC_THRESHOLD) == SYNC_THRESHOLD:
            return
        try:
            collection.modify(configuration={"hnsw": {"sync_threshold": SYNC_THRESHOLD,
                                                      "batch_size": SYNC_THRESHOLD}})
            one = collection.get(limit=1, include=["embeddings", "documents", "metadatas"])
            if one["ids"]:
                collection.upsert(ids=one["ids"], embeddings=one["embeddings"],
                                  documents=one["documents"], metadatas=one["metadatas"])
        except Exception as exc:  # still searchable; only eviction stays unsafe
            log.warning("could not make %s persist its index: %s", collection.name, exc)

    def _key_lock(self, owner: str, scope: str) -> threading.Lock:
        """One of a few locks, by (owner, scope): moves between the shared and an own
        collection never interleave with this process's writes of the same scope."""
        return self._stripes[int(shared_key(owner, scope)[:8], 16) % len(self._stripes)]

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

    @_guarded
    def upsert(
        self, owner: str, scope: str, ids: Sequence[str], vectors: Any,
        texts: Sequence[str], metadatas: Sequence[Mapping[str, Any]],
    ) -> None:
        """Insert or replace chunks, in as few calls as Chroma's batch limit allows: in
        the shared collection while the scope stays within ``shared_max`` records, else
        in its own collection (moving the shared ones there first)."""
        key = shared_key(owner, scope)
        tagged = [{**m, "owner": owner, "scope": scope, "key": key} for m in metadatas]
        with self._key_lock(owner, scope):
            if self._collection(owner, scope) is None:
                held = self._shared_rows(owner, scope, ["metadatas"])["ids"]
                if len(set(held) | set(ids)) <= self.shared_max:
                    self._in_shared(lambda c: self._write(c, ids, vectors, texts, tagged))
                    return
                self._promote(owner, scope)
            self._own(owner, scope, lambda c: self._write(c, ids, vectors, texts, tagged),
                      create=True)

    def _demote(self, owner: str, scope: str) -> None:
        """Move a small scope's own collection (the old layout kept every scope in one)
        into the shared collection, then drop it. Embedded only: this process is the only
        writer (mami.lock) and holds the scope's lock; with a Chroma server another
        process could write to the collection being dropped."""
        name = collection_name(self.prefix, owner, scope)
        with self._key_lock(owner, scope):
            own = self._collection(owner, scope)
            if own is None or own.count() > self.shared_max:
                return
            rows = own.get(include=["embeddings", "documents", "metadatas"])
            for id_, meta in zip(rows["ids"], rows["metadatas"], strict=True):
                if meta.get("owner") != owner or meta.get("scope") != scope:
                    raise IsolationError(f"collection for {owner!r}/{scope!r} holds {id_!r}")
            if rows["ids"]:
                key = shared_key(owner, scope)
                self._in_shared(lambda c: self._write(
                    c, rows["ids"], rows["embeddings"], rows["documents"],
                    [{**m, "key": key} for m in rows["metadatas"]]))
            self._collections.pop(name, None)
            self.client.delete_collection(name)

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

    @_guarded
    def delete_document(self, owner: str, scope: str, document_id: str, keep: int = 0) -> None:
        """Delete a document's chunks whose index is ``keep`` or more (all by default)."""
        where: dict[str, Any] = {"doc": document_id}
        if keep:
            where = {"$and": [where, {"chunk": {"$gte": keep}}]}
        shared = [{"key": shared_key(owner, scope)},
                  *(where["$and"] if keep else [where])]
        with self._key_lock(owner, scope):
            self._own(owner, scope, lambda c: c.delete(where=where))
            self._in_shared(lambda c: c.delete(where={"$and": shared}))

    @_guarded
    def drop(self, owner: str, scope: str) -> bool:
        """Delete every record of ``owner``'s ``scope``; False if there was none."""
        with self._key_lock(owner, scope):
            return self._drop(owner, scope)

    def _drop(self, owner: str, scope: str) -> bool:
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

    @_guarded
    def ids(self, owner: str, scope: str) -> set[str]:
        """Ids of every record stored for ``owner``'s ``scope``."""
        found = set(self._shared_rows(owner, scope, ["metadatas"])["ids"])
        return found | set(self._own(owner, scope, lambda c: c.get(include=[])["ids"]) or [])

    def count(self, owner: str, scope: str) -> int:
        """Chunks stored for ``owner``'s ``scope``."""
        return len(self.ids(owner, scope))

    @_guarded
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
        if self.path is not None and stored <= self.shared_max \
                and collection_name(self.prefix, owner, scope) not in self._small_checked:
            self._small_checked.add(collection_name(self.prefix, owner, scope))
            self._demote(owner, scope)
        for id_, text, meta, distance in zip(
            found["ids"][0], found["documents"][0], found["metadatas"][0],
            found["distances"][0], strict=True,
        ):
            if meta.get("owner") != owner or meta.get("scope") != scope:
                raise IsolationError(f"collection for {owner!r}/{scope!r} returned {id_!r}")
            hits.append(Hit(id_, text, meta, 1.0 - float(distance)))
        return hits


async def store_health(embedder: object, store: VectorStore) -> dict[str, Any]:
    """The ``health()`` of a provider that embeds with ``embedder`` into ``store``:
    ``degraded`` with the fix when the model's files are missing, else the store's."""
    from plugins.chroma_rag.embeddings import embedder_health

    model = embedder_health(embedder)
    if model["status"] != "ok":
        return model
    return {**model, **await asyncio.to_thread(store.health)}
