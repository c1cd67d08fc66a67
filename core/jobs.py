"""The image job queue: rows of ``image_jobs`` claimed atomically by workers.

A job is ``queued`` until a worker claims it (``running``, with a lease that the worker
renews while it works), then ends ``succeeded``, ``placeholder`` (the generator could
not make the image and returned a placeholder saying why) or ``failed``. A worker that
dies leaves its lease to expire; the job is then claimed again, up to ``max_attempts``
claims. Completing is conditional on still holding the lease, so a job is completed
once even when two workers end up working on it. A generator that gives no result
within ``[core] image_deadline`` seconds is abandoned: the job ends ``failed``, its lease
is no longer renewed and the worker takes the next job.

Completion callbacks (``add_image_callback``) and ``image_finished`` subscribers run
after the job is final, each isolated with a timeout; their errors are recorded in
``callback_errors`` and never touch the job's state or the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import inspect
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlmodel import col

from core.config import Config
from core.db import Database
from core.events import ImageFinished
from core.image_store import DirectoryStore, ImageStore, open_image_store
from core.models import ImageJob, trusted, utcnow
from core.plugins import contained, describe, within
from core.protocols import ImageRequest
from core.runtime import Runtime

log = logging.getLogger("mami.jobs")

FINAL_STATES = frozenset({"succeeded", "placeholder", "failed"})
JobCallback = Callable[[ImageJob], Awaitable[None] | None]
CALLBACKS_KEY = "image_job_callbacks"
WAKEUP_KEY = "image_job_wakeup"
STORE_KEY = "image_store"
_jobs = ImageJob.__table__  # type: ignore[attr-defined]


def image_file(config: Config, job: ImageJob) -> Path | None:
    """The local file of a finished job's PNG when images are kept in a directory;
    ``None`` with an S3 store or for a job without a result."""
    store = open_image_store(config)
    if job.result_path is None or not isinstance(store, DirectoryStore):
        return None
    return store.folder / job.result_path


def image_store(runtime: Runtime) -> ImageStore:
    """The runtime's image store (``[core] image_store``), made once."""
    store = runtime.state.get(STORE_KEY)
    if store is None:
        store = runtime.state[STORE_KEY] = open_image_store(runtime.config)
    return store  # type: ignore[no-any-return]


def add_image_callback(runtime: Runtime, callback: JobCallback) -> None:
    """Call ``callback(job)`` in this process for every job a worker here finishes."""
    runtime.state.setdefault(CALLBACKS_KEY, []).append(callback)


async def enqueue(
    runtime: Runtime,
    owner: str,
    request: ImageRequest,
    *,
    conversation_id: str | None = None,
    max_attempts: int = 3,
) -> ImageJob:
    """Store a new queued job and wake an in-process worker."""
    now = utcnow()
    job = trusted(ImageJob, {
        "id": uuid.uuid4().hex, "owner_id": owner, "conversation_id": conversation_id,
        "request": dataclasses.asdict(request), "max_attempts": max_attempts,
        "created_at": now, "updated_at": now,
    })
    values = job.model_dump()
    await runtime.db.execute(_INSERT, values)
    wakeup = runtime.state.get(WAKEUP_KEY)
    if wakeup is not None:
        wakeup.set()
    return job


async def get_job(db: Database, job_id: str, owner: str | None = None) -> ImageJob | None:
    """A job by id; with ``owner``, only if it belongs to that owner."""
    async with db.session() as session:
        job = await session.get(ImageJob, job_id)
    if job is None or (owner is not None and job.owner_id != owner):
        return None
    return job


async def list_jobs(db: Database, owner: str, limit: int, offset: int = 0) -> list[ImageJob]:
    """The owner's jobs, newest first."""
    async with db.session() as session:
        result = await session.execute(
            select(ImageJob).where(col(ImageJob.owner_id) == owner)
            .order_by(col(ImageJob.created_at).desc())
            .offset(offset).limit(limit)
        )
        return list(result.scalars().all())


# The queue's statements are built once: building and hashing them cost more than running
# them on SQLite. Values come as bound parameters.
_INSERT = insert(_jobs)
_NOW = bindparam("now", type_=_jobs.c.updated_at.type)
_CLAIMABLE = or_(
    _jobs.c.state == "queued",
    and_(_jobs.c.state == "running", _jobs.c.lease_until < _NOW),
)
_ANY_CLAIMABLE = select(_jobs.c.id).where(_CLAIMABLE).limit(1)
_HELD = and_(_jobs.c.id == bindparam("job_id"), _jobs.c.state == "running",
             _jobs.c.lease_owner == bindparam("worker"))
_RENEW = update(_jobs).where(_HELD).values(
    lease_until=bindparam("lease_until"), progress=bindparam("new_progress"), updated_at=_NOW)
_COMPLETE = update(_jobs).where(_HELD).values(
    state=bindparam("new_state"), result_path=bindparam("new_result_path"),
    placeholder_reason=bindparam("new_reason"), error=bindparam("new_error"),
    progress=func.coalesce(bindparam("new_progress", type_=_jobs.c.progress.type),
                           _jobs.c.progress),
    lease_until=None, finished_at=_NOW, updated_at=_NOW,
).returning(*_jobs.c)


@functools.cache
def _claim_statement(skip_locked: bool) -> Any:
    """``UPDATE ... WHERE id = (the oldest claimable job)``; on PostgreSQL that row is
    locked ``FOR UPDATE SKIP LOCKED`` so concurrent claimers take different jobs."""
    oldest = select(_jobs.c.id).where(_CLAIMABLE).order_by(_jobs.c.created_at).limit(1)
    if skip_locked:
        oldest = oldest.with_for_update(skip_locked=True)
    return (
        update(_jobs)
        .where(_jobs.c.id == oldest.scalar_subquery(), _CLAIMABLE)
        .values(
            state="running",
            lease_owner=bindparam("worker"),
            lease_until=bindparam("lease_until"),
            attempts=_jobs.c.attempts + 1,
            progress=0.0,
            started_at=func.coalesce(_jobs.c.started_at, _NOW),
            updated_at=_NOW,
        )
        .returning(*_jobs.c)
    )


def _row_job(result: Any) -> ImageJob | None:
    """The job in a ``RETURNING`` row (trusted: not validated again, which costs more
    than the statement on SQLite)."""
    row = result.mappings().first()
    return trusted(ImageJob, row) if row is not None else None


async def claim(
    db: Database, worker_id: str, lease_seconds: float, *, look_first: bool = True
) -> ImageJob | None:
    """Atomically take the oldest queued job, or a running one whose lease expired.

    One statement: ``UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED)`` on
    PostgreSQL; on SQLite the same UPDATE runs under SQLite's single-writer lock.
    ``look_first`` reads before writing, so an idle poll never takes SQLite's write
    lock from an enqueuer; skip it when a job is known to be waiting.
    """
    now = utcnow()
    params = {"now": now, "worker": worker_id,
              "lease_until": now + timedelta(seconds=lease_seconds)}
    statement = _claim_statement(skip_locked=not db.is_sqlite)

    def work(conn: Connection) -> ImageJob | None:
        if look_first and conn.execute(_ANY_CLAIMABLE, params).first() is None:
            return None
        return _row_job(conn.execute(statement, params))

    return await db.run(work)


async def renew(
    db: Database, job_id: str, worker_id: str, lease_seconds: float, progress: float
) -> bool:
    """Extend our lease and store progress; False when the lease is no longer ours."""
    now = utcnow()
    params = {"job_id": job_id, "worker": worker_id, "now": now, "new_progress": progress,
              "lease_until": now + timedelta(seconds=lease_seconds)}
    result = await db.execute(_RENEW, params)
    return result.rowcount == 1


async def complete(
    db: Database,
    job_id: str,
    worker_id: str,
    state: str,
    *,
    result_path: str | None = None,
    placeholder_reason: str | None = None,
    error: str | None = None,
) -> ImageJob | None:
    """Move a job we hold to a final state; ``None`` if the lease is no longer ours."""
    params = _completion(job_id, worker_id, state, result_path, placeholder_reason, error)
    return await db.run(lambda conn: _row_job(conn.execute(_COMPLETE, params)))


def _completion(job_id: str, worker_id: str, state: str, result_path: str | None,
                placeholder_reason: str | None, error: str | None) -> dict[str, Any]:
    """The parameters of ``_COMPLETE``."""
    assert state in FINAL_STATES, state
    return {"job_id": job_id, "worker": worker_id, "now": utcnow(), "new_state": state,
            "new_result_path": result_path, "new_reason": placeholder_reason,
            "new_error": error, "new_progress": None if state == "failed" else 1.0}


async def delete_conversation_jobs(runtime: Runtime, owner: str, conversation_id: str) -> int:
    """Delete the image jobs of one conversation and their stored images; how many jobs.
    Placeholder images are shared (stored once per content) and stay. A worker running
    one of these jobs finds its lease gone when it completes and drops its image."""
    where = and_(_jobs.c.owner_id == owner, _jobs.c.conversation_id == conversation_id)
    async with runtime.db.engine.begin() as conn:
        found = (await conn.execute(
            select(_jobs.c.state, _jobs.c.result_path).where(where))).all()
        await conn.execute(delete(_jobs).where(where))
    store = image_store(runtime)
    for state, result_path in found:
        if state == "succeeded" and result_path:
            try:
                await store.delete(result_path)
            except Exception as exc:  # the rows are gone; a stray file is only disk space
                log.warning("image %s of a deleted conversation stays: %s", result_path, exc)
    return len(found)


async def record_callback_errors(db: Database, job_id: str, errors: list[dict[str, str]]) -> None:
    """Append callback errors to a job (the job's state is left alone)."""
    async with db.session() as session:
        job = await session.get(ImageJob, job_id, with_for_update=not db.is_sqlite)
        if job is None:
            return
        job.callback_errors = [*job.callback_errors, *errors]
        session.add(job)
        await session.commit()


async def wait_final(db: Database, job_id: str, timeout: float, poll: float = 0.2) -> ImageJob:
    """Poll until a job is final (for processes that do not run the worker themselves).

    Raises ``TimeoutError`` after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            job = await get_job(db, job_id)
            if job is not None and job.state in FINAL_STATES:
                return job
            await asyncio.sleep(poll)


class ImageWorker:
    """Claims jobs one at a time and runs them through the active image generator."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        worker_id: str | None = None,
        lease_seconds: float = 30.0,
        poll_interval: float = 0.5,
        callback_timeout: float | None = None,
    ) -> None:
        self.runtime = runtime
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.callback_timeout = (
            callback_timeout if callback_timeout is not None else runtime.config.core.event_timeout
        )
        self.processed = 0
        self.completed: list[str] = []  # ids this worker completed (tests, logs)
        self._stopping = asyncio.Event()
        self._wakeup: asyncio.Event = runtime.state.setdefault(WAKEUP_KEY, asyncio.Event())
        self._notifications: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stored_placeholders: set[str] = set()
        # Whether a claimable job waited when the last job completed (read in the same
        # transaction, so the worker needs no look of its own before waiting).
        self._more_waiting = True

    async def run(self, *, max_jobs: int | None = None, until_idle: bool = False) -> None:
        """Work until :meth:`stop`, or after ``max_jobs``, or (``until_idle``) when the
        queue is empty; then wait for pending callbacks."""
        log.info("image worker %s started", self.worker_id)
        woken = False
        try:
            while not self._stopping.is_set():
                if max_jobs is not None and self.processed >= max_jobs:
                    break
                self._wakeup.clear()
                ran: ImageJob | None = None
                try:
                    ran = await self.run_once(look_first=not woken)
                except Exception as exc:  # e.g. the database restarts: wait, then go on
                    log.error("image worker %s: %s: %s", self.worker_id, type(exc).__name__, exc)
                    if until_idle:
                        raise
                if ran is not None and self._more_waiting:
                    woken = True  # claim the next job now, without looking first
                    continue
                if until_idle:
                    break
                try:
                    await asyncio.wait_for(self._wakeup.wait(), self.poll_interval)
                    woken = True  # an enqueue in this process has committed a job
                except TimeoutError:
                    woken = False
        finally:
            await self.drain()
            log.info("image worker %s stopped after %d job(s)", self.worker_id, self.processed)

    def start(self) -> ImageWorker:
        """Run in the background of the current event loop (``mami serve``)."""
        self._task = asyncio.create_task(self.run(), name=f"image-worker {self.worker_id}")
        return self

    def request_stop(self) -> None:
        """Claim nothing more; :meth:`run` returns after the current job (signal-safe)."""
        self._stopping.set()
        self._wakeup.set()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming; give the current job ``timeout`` seconds, then cancel it (its
        lease expires and another worker takes it)."""
        self.request_stop()
        if self._task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            if not self._task.done():
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    async def drain(self) -> None:
        """Wait for callbacks still running for finished jobs."""
        if self._notifications:
            await asyncio.gather(*self._notifications, return_exceptions=True)

    async def run_once(self, *, look_first: bool = True) -> ImageJob | None:
        """Claim and run one job; returns it in its final state, or None if none was queued."""
        job = await claim(self.runtime.db, self.worker_id, self.lease_seconds,
                          look_first=look_first)
        if job is None:
            return None
        self.processed += 1
        self._more_waiting = True  # until its completion says otherwise
        if job.attempts > job.max_attempts:
            final = await self._complete(
                job.id, "failed",
                error=f"gave up: claimed {job.attempts - 1} times without finishing",
            )
        else:
            final = await self._run_job(job)
        if final is not None:
            self.completed.append(final.id)
            self._notify(final)
        return final or job

    async def _run_job(self, job: ImageJob) -> ImageJob | None:
        progress = [0.0]
        heartbeat = asyncio.create_task(self._heartbeat(job.id, progress))
        try:
            result = await self._generate(job, progress)
        finally:
            heartbeat.cancel()
        if isinstance(result, str):
            return await self._complete(job.id, "failed", error=result)
        name = await self._store(job, result.png, shared=result.placeholder)
        final = await self._complete(
            job.id, "placeholder" if result.placeholder else "succeeded",
            result_path=name,
            placeholder_reason=result.reason if result.placeholder else None,
            error=(result.info.get("detail") if result.placeholder else None),
        )
        if final is None:
            log.warning("job %s: lease lost to another worker; result discarded", job.id)
            if not result.placeholder:
                await image_store(self.runtime).delete(name)
        return final

    async def _complete(self, job_id: str, state: str, *, result_path: str | None = None,
                        placeholder_reason: str | None = None, error: str | None = None
                        ) -> ImageJob | None:
        """:func:`complete`, and in the same transaction whether another job waits."""
        params = _completion(job_id, self.worker_id, state, result_path, placeholder_reason,
                             error)

        def work(conn: Connection) -> ImageJob | None:
            final = _row_job(conn.execute(_COMPLETE, params))
            self._more_waiting = conn.execute(_ANY_CLAIMABLE, params).first() is not None
            return final

        return await self.runtime.db.run(work)

    async def _store(self, job: ImageJob, png: bytes, *, shared: bool) -> str:
        """Write a result; its name. Placeholders are identical per reason and size, so
        they are stored once under their content hash (failing fast stays cheap)."""
        store = image_store(self.runtime)
        if shared:
            name = f"placeholder-{hashlib.sha256(png).hexdigest()[:24]}.png"
            if name not in self._stored_placeholders:
                if not await store.exists(name):
                    await store.put(name, png)
                self._stored_placeholders.add(name)
            return name
        name = f"{job.id}.{job.attempts}.png"
        await store.put(name, png)
        return name

    async def _generate(self, job: ImageJob, progress: list[float]) -> Any:
        """The generator's result, or an error message for a failed job."""
        generator = self.runtime.images
        if generator is None:
            return "no image generator plugin is enabled and running"
        try:
            request = ImageRequest(**job.request)
        except TypeError as exc:
            return f"invalid request: {exc}"
        deadline = self.runtime.config.core.image_deadline
        try:
            return await within(
                generator.generate(request, progress=lambda v: progress.__setitem__(0, v)),
                deadline)
        except TimeoutError:
            log.error("job %s: image generator %s gave no result within %gs",
                      job.id, generator.name, deadline)
            return (f"the image generator {generator.name} gave no result within "
                    f"{deadline:g}s ([core] image_deadline)")
        except BaseException as exc:
            if not contained(exc):
                raise
            log.exception("job %s: image generator %s raised", job.id, generator.name)
            return describe(exc)

    async def _heartbeat(self, job_id: str, progress: list[float]) -> None:
        interval = max(0.05, min(self.lease_seconds / 3, 1.0))
        while True:
            await asyncio.sleep(interval)
            try:
                if not await renew(self.runtime.db, job_id, self.worker_id, self.lease_seconds,
                                   progress[0]):
                    log.warning("job %s: lease lost", job_id)
                    return
            except Exception as exc:  # a database hiccup must not kill the job
                log.warning("job %s: lease renewal failed: %s", job_id, exc)

    def _notify(self, job: ImageJob) -> None:
        task = asyncio.create_task(self._run_callbacks(job))
        self._notifications.add(task)
        task.add_done_callback(self._notifications.discard)

    async def _run_callbacks(self, job: ImageJob) -> None:
        """Callbacks, then ``image_finished`` subscribers, each isolated; errors recorded."""
        errors: list[dict[str, str]] = []
        for callback in self.runtime.state.get(CALLBACKS_KEY, []):
            name = getattr(callback, "__qualname__", repr(callback))
            error = await _call_isolated(callback, job, self.callback_timeout)
            if error is not None:
                log.error("job %s: callback %s failed: %s", job.id, name, error)
                errors.append({"callback": name, "error": error})
        event = ImageFinished(
            owner=job.owner_id, job_id=job.id, state=job.state,
            conversation_id=job.conversation_id, placeholder_reason=job.placeholder_reason,
            error=job.error,
        )
        try:
            failed = await self.runtime.image_finished(event)
        except Exception as exc:
            failed = [("?", describe(exc))]
        errors.extend({"plugin": plugin, "error": error} for plugin, error in failed)
        if errors:
            try:
                await record_callback_errors(self.runtime.db, job.id, errors)
            except Exception as exc:
                log.error("job %s: could not record callback errors: %s", job.id, exc)


async def _call_isolated(callback: JobCallback, job: ImageJob, timeout: float) -> str | None:
    try:
        result = callback(job)
        if inspect.isawaitable(result):
            await asyncio.wait_for(result, timeout)
    except TimeoutError:
        return f"timed out after {timeout:g}s"
    except Exception as exc:
        return describe(exc)
    return None


def start_image_worker(runtime: Runtime) -> ImageWorker | None:
    """The in-process worker of ``mami serve``: on unless ``[core] image_worker`` is
    false, and never on Lambda (nothing may run after a response there)."""
    if runtime.serverless or not runtime.config.core.image_worker:
        return None
    return ImageWorker(runtime).start()
