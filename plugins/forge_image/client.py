"""The image generator for a Stable Diffusion WebUI Forge / AUTOMATIC1111 server."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import stamina

from core.protocols import ImageRequest, ImageResult, ProgressCallback
from plugins.forge_image.breaker import BreakerOpen, CircuitBreaker
from plugins.forge_image.catalog import Catalog
from plugins.forge_image.placeholder import placeholder_png

log = logging.getLogger("mami.forge_image")

SEED_MAX = 2**32 - 1
"""A1111 seeds go through numpy, which takes 0 .. 2**32 - 1; -1 means random."""


class ForgeFault(Exception):
    """A failed call. ``reason`` is the placeholder reason code; ``backend_fault`` says
    whether it says the server is unhealthy (only those count in the circuit breaker:
    a fault caused by one request must not refuse everybody's next job)."""

    reason = "server_error"
    backend_fault = False


class TransientFault(ForgeFault):
    """Connection refused or reset, a timeout, or 502/503/504: worth retrying, and a
    sign that the server is unhealthy."""

    backend_fault = True

    def __init__(self, message: str, reason: str = "unavailable") -> None:
        super().__init__(message)
        self.reason = reason


class OutOfMemory(ForgeFault):
    """CUDA ran out of memory for this request (its size or steps), not for all."""

    reason = "out_of_memory"


class Rejected(ForgeFault):
    """A 4xx: our request is wrong; the server itself is fine."""

    reason = "rejected"


class InvalidResponse(ForgeFault):
    reason = "invalid_response"


class Interrupted(ForgeFault):
    """The server stopped this job early: its image is under-sampled, never stored as
    a success."""

    reason = "interrupted"


class UnknownName(ForgeFault):
    """A checkpoint, sampler or scheduler the server does not have."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
        super().__init__(f"{kind} {name!r} is not on the server (it has: {shown or 'none'})")
        self.reason = f"unknown_{kind}"


def is_transient(exc: Exception) -> bool:
    """stamina's retry predicate: only transient faults, never BreakerOpen."""
    return isinstance(exc, TransientFault)


def redact_url(url: str) -> str:
    """``url`` without user, password, query or fragment (what may be shown or logged)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass
class JobState:
    """What one ``generate`` call knows about its current attempt."""

    task_id: str = ""
    in_flight: bool = False
    """An attempt was sent and has no verdict yet (the deadline may cut it)."""
    interrupted_task: str = ""
    """The task the progress watcher saw interrupted while it was current."""
    last_fault: ForgeFault | None = None


class ForgeImageGenerator:
    """:class:`core.protocols.ImageGenerator` over ``/sdapi/v1``.

    Each HTTP attempt has connect/read timeouts; transient faults are retried with
    exponential backoff and jitter; the whole job is bounded by ``deadline``; a
    circuit breaker shared by all jobs of the process fails fast while the server is
    unhealthy (only connection faults, 502/503/504 and timeouts count). ``generate``
    never raises for server faults: it returns a placeholder.

    Interrupts: every attempt carries its own ``force_task_id``. An attempt that timed
    out is *abandoned*: a watcher polls ``/sdapi/v1/progress`` and interrupts it only
    when ``current_task`` is that id (it may still be queued behind other jobs), so a
    timeout never stops somebody else's image. A result that the server interrupted
    is a placeholder (``interrupted``), never a success.
    """

    def __init__(self, settings: Any, name: str = "forge-image") -> None:
        self.name = name
        self.s = settings
        self.base_url = settings.url.rstrip("/")
        self.public_url = redact_url(self.base_url)
        self.breaker = CircuitBreaker(
            settings.breaker_threshold, settings.breaker_cooldown, name=self.public_url
        )
        self.attempts_total = 0
        self.interrupts_sent = 0
        self.last_error: str | None = None
        self.catalog = Catalog(self._get_json)
        self._client: httpx.AsyncClient | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._abandoned: dict[str, float] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._health: tuple[float, dict[str, Any]] | None = None
        self._health_lock = asyncio.Lock()

    @property
    def budget(self) -> float:
        """Seconds for the HTTP work: the deadline minus a reserve for storing the
        result, so a job is final within its deadline."""
        return self.s.deadline - min(0.5, 0.1 * self.s.deadline)

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            auth = httpx.BasicAuth(self.s.username, self.s.password) if self.s.username else None
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                auth=auth,
                timeout=self._timeout(self.s.read_timeout),
                limits=httpx.Limits(max_connections=16, max_keepalive_connections=4),
            )
        return self._client

    def _timeout(self, read: float) -> httpx.Timeout:
        connect = min(self.s.connect_timeout, read)
        return httpx.Timeout(connect=connect, read=read, write=connect, pool=connect)

    def payload(self, request: ImageRequest) -> dict[str, Any]:
        """The ``txt2img`` body (without ``force_task_id``, which each attempt adds).

        A field the request leaves as ``None`` takes the setting's default; an empty
        string means the server's own default (the field is not sent). The checkpoint
        goes through ``override_settings`` and is restored after the request."""
        body: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "width": request.width,
            "height": request.height,
            "steps": request.steps,
            "seed": max(-1, min(SEED_MAX, request.seed)),
            "batch_size": 1,
            "n_iter": 1,
            "send_images": True,
            "save_images": False,
        }
        for field, value in (("sampler_name", self._choice(request.sampler, self.s.sampler)),
                             ("scheduler", self._choice(request.scheduler, self.s.scheduler)),
                             ("cfg_scale", _first(request.cfg_scale, self.s.cfg_scale)),
                             ("distilled_cfg_scale",
                              _first(request.distilled_cfg_scale, self.s.distilled_cfg_scale))):
            if value is not None and value != "":
                body[field] = value
        checkpoint = self._choice(request.checkpoint, self.s.checkpoint)
        if checkpoint:
            body["override_settings"] = {"sd_model_checkpoint": checkpoint}
            body["override_settings_restore_afterwards"] = True
        return body

    @staticmethod
    def _choice(requested: str | None, default: str) -> str:
        return default if requested is None else requested

    async def generate(
        self, request: ImageRequest, progress: ProgressCallback | None = None
    ) -> ImageResult:
        """An image, or a placeholder saying why not, within ``deadline`` seconds."""
        started = time.monotonic()
        try:
            self.breaker.acquire()
            self.breaker.abort()  # only a peek: the attempt itself re-acquires
        except BreakerOpen as exc:
            return self._placeholder(request, "circuit_open", str(exc), started)
        job = JobState()
        watcher = asyncio.create_task(self._watch_progress(job, progress))
        try:
            async with asyncio.timeout(self.budget):
                body = self.payload(request)
                await self._check_names(body)
                png, info = await self._txt2img_with_retries(body, job, started)
        except TimeoutError:
            self._cut(job, counts=True)
            detail = f"no image within the {self.s.deadline:g}s deadline"
            self.last_error = f"timed_out: {detail}"
            return self._placeholder(request, "timed_out", detail, started)
        except BreakerOpen as exc:
            if job.last_fault is not None:  # this job's own attempts opened it: say why
                fault = job.last_fault
                return self._placeholder(request, fault.reason, f"{fault}; then {exc}", started)
            return self._placeholder(request, "circuit_open", str(exc), started)
        except ForgeFault as fault:
            return self._placeholder(request, fault.reason, str(fault), started)
        except asyncio.CancelledError:
            self._cut(job, counts=False)
            raise
        finally:
            watcher.cancel()
        if progress is not None:
            _report(progress, 1.0)
        return ImageResult(png=png, info=info)

    def _cut(self, job: JobState, *, counts: bool) -> None:
        """The attempt in flight was cut (deadline or cancellation): abandon its task;
        a deadline cut counts as a timed-out attempt in the breaker."""
        if not job.in_flight:
            return
        job.in_flight = False
        (self.breaker.failure if counts else self.breaker.abort)()
        self._abandon(job.task_id)

    async def _check_names(self, body: Mapping[str, Any]) -> None:
        """Unknown checkpoint, sampler or scheduler: fail before any generation call."""
        checkpoint = (body.get("override_settings") or {}).get("sd_model_checkpoint")
        for kind, name in (("checkpoint", checkpoint), ("sampler", body.get("sampler_name")),
                           ("scheduler", body.get("scheduler"))):
            if name:
                known = await self.catalog.lookup(kind, name, self.s.health_timeout)
                if known is not None:
                    raise UnknownName(kind, name, known)

    async def _txt2img_with_retries(
        self, body: dict[str, Any], job: JobState, started: float
    ) -> tuple[bytes, dict[str, Any]]:
        async for attempt in stamina.retry_context(
            on=is_transient,
            attempts=self.s.attempts,
            timeout=self.budget,
            wait_initial=self.s.backoff_initial,
            wait_max=self.s.backoff_max,
            wait_jitter=self.s.backoff_jitter,
        ):
            with attempt:
                remaining = self.budget - (time.monotonic() - started)
                return await self._attempt(body, job, max(0.001, remaining))
        raise AssertionError("unreachable: stamina re-raises the last fault")

    async def _attempt(
        self, body: dict[str, Any], job: JobState, remaining: float
    ) -> tuple[bytes, dict[str, Any]]:
        """One HTTP call through the breaker, as a task of its own on the server."""
        self.breaker.acquire()
        self.attempts_total += 1
        task_id = f"mami-{uuid.uuid4().hex}"
        job.task_id, job.in_flight = task_id, True
        try:
            try:
                response = await self.client.post(
                    "/sdapi/v1/txt2img",
                    json={**body, "force_task_id": task_id},
                    timeout=self._timeout(min(self.s.read_timeout, remaining)),
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                job.in_flight = False
                raise TransientFault(f"{type(exc).__name__}: {exc}", "unavailable") from exc
            except httpx.TimeoutException as exc:
                job.in_flight = False
                self._abandon(task_id)  # it may still be queued or running on the server
                raise TransientFault(f"timed out: {exc!r}", "timed_out") from exc
            except httpx.TransportError as exc:
                job.in_flight = False
                self._abandon(task_id)
                raise TransientFault(f"{type(exc).__name__}: {exc}", "unavailable") from exc
            job.in_flight = False
            png, info = parse_txt2img(response, task_id)
            if job.interrupted_task == task_id or await self._was_interrupted(info):
                raise Interrupted("the server interrupted this job: its image is partial")
        except ForgeFault as fault:
            job.last_fault = fault
            self.last_error = f"{fault.reason}: {fault}"
            (self.breaker.failure if fault.backend_fault else self.breaker.abort)()
            log.warning("txt2img attempt failed (%s): %s", fault.reason, fault)
            raise
        except asyncio.CancelledError:
            if not job.in_flight:  # else generate() decides: a deadline cut counts
                self.breaker.abort()
            raise
        except BaseException:
            self.breaker.abort()
            raise
        self.breaker.success()
        return png, {**info, "task_id": task_id}

    async def _was_interrupted(self, info: Mapping[str, Any]) -> bool:
        """Whether the server says the job that made ``info`` was interrupted: its
        ``state`` still describes that job (same ``job_timestamp``) and is interrupted.
        ``False`` when the server cannot say."""
        stamp = info.get("job_timestamp")
        if not stamp:
            return False
        data = await self._progress()
        state = data.get("state") if data else None
        return (isinstance(state, dict) and state.get("job_timestamp") == stamp
                and state.get("interrupted") is True)

    async def _progress(self) -> dict[str, Any] | None:
        try:
            response = await self.client.get(
                "/sdapi/v1/progress", params={"skip_current_image": "true"},
                timeout=self._timeout(self.s.connect_timeout),
            )
            data = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    async def _watch_progress(self, job: JobState, progress: ProgressCallback | None) -> None:
        """Poll progress while the job runs: report ours (not another task's) and note
        when the server interrupts our task."""
        while True:
            await asyncio.sleep(self.s.progress_interval)
            data = await self._progress()
            if data is None or not job.task_id:
                continue
            current = data.get("current_task", job.task_id)  # older servers do not say
            if current != job.task_id:
                continue  # queued behind someone else: their progress is not ours
            state = data.get("state")
            if ("current_task" in data and isinstance(state, dict)
                    and state.get("interrupted") is True):
                job.interrupted_task = job.task_id
            try:
                value = float(data.get("progress", 0.0))
            except (TypeError, ValueError):
                continue
            if progress is not None:
                _report(progress, max(0.0, min(0.99, value)))

    def _abandon(self, task_id: str) -> None:
        """Watch an abandoned task and interrupt it once it is current (not before:
        ``/interrupt`` stops whatever runs now)."""
        self._abandoned[task_id] = time.monotonic() + self.s.orphan_watch
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap())
            self._background.add(self._reaper)
            self._reaper.add_done_callback(self._background.discard)

    async def _reap(self) -> None:
        while self._abandoned:
            now = time.monotonic()
            for task_id, until in list(self._abandoned.items()):
                if until <= now:
                    del self._abandoned[task_id]
            data = await self._progress()
            if data is not None and "current_task" not in data:
                log.warning("the server does not report its current task (A1111 < 1.8?): "
                            "timed-out requests are not interrupted")
                self._abandoned.clear()
                return
            current = data.get("current_task") if data else None
            if isinstance(current, str) and self._abandoned.pop(current, None) is not None:
                await self._interrupt(current)
                continue
            await asyncio.sleep(self.s.progress_interval)

    async def _interrupt(self, task_id: str) -> None:
        """Stop our abandoned task, which the server just reported as current."""
        try:
            await self.client.post(
                "/sdapi/v1/interrupt", timeout=self._timeout(self.s.connect_timeout)
            )
            self.interrupts_sent += 1
            log.info("interrupted abandoned task %s", task_id)
        except httpx.HTTPError as exc:
            log.info("interrupt failed: %s", exc)

    async def _get_json(self, path: str, timeout: float) -> Any:
        """GET ``path`` and decode it; raises ``httpx.HTTPError`` or ``ValueError``."""
        response = await self.client.get(path, timeout=self._timeout(timeout))
        response.raise_for_status()
        return response.json()

    def _placeholder(
        self, request: ImageRequest, reason: str, detail: str, started: float
    ) -> ImageResult:
        # An open circuit is logged once, when it opens; not for every job it refuses.
        level = logging.DEBUG if reason == "circuit_open" else logging.WARNING
        log.log(level, "placeholder image (%s): %s", reason, detail)
        return ImageResult(
            png=placeholder_png(reason, request.width, request.height),
            placeholder=True,
            reason=reason,
            info={"detail": self._public(detail),
                  "elapsed_s": round(time.monotonic() - started, 3),
                  "breaker": self.breaker.state},
        )

    def _public(self, text: str) -> str:
        return text.replace(self.base_url, self.public_url)

    async def health(self) -> Mapping[str, Any]:
        """Breaker state and counters plus a cheap ``sd-models`` probe (short timeout),
        reused for ``health_interval`` seconds: concurrent and repeated health checks
        share one probe. The URL is shown without credentials or query.

        The probe never changes the breaker; while it is open no probe is sent."""
        report: dict[str, Any] = {"url": self.public_url, "breaker": self.breaker.snapshot(),
                                  "attempts": self.attempts_total}
        if self.last_error:
            report["last_error"] = self._public(self.last_error)
        if self.breaker.state == "open":
            report["status"] = "open"
            return report
        async with self._health_lock:
            cached = self._health
            if cached is None or time.monotonic() - cached[0] >= self.s.health_interval:
                cached = (time.monotonic(), await self._probe())
                self._health = cached
        return {**report, **cached[1]}

    async def _probe(self) -> dict[str, Any]:
        try:
            models = await self._get_json("/sdapi/v1/sd-models", self.s.health_timeout)
            return {"status": "ok", "models": len(models)}
        except (httpx.HTTPError, ValueError, TypeError) as exc:
            return {"status": "unreachable",
                    "error": self._public(f"{type(exc).__name__}: {exc}")}

    async def aclose(self) -> None:
        """Give pending interrupts a moment, stop watching, close the client."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=self.s.connect_timeout)
        for task in list(self._background):
            task.cancel()
        self._abandoned.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def parse_txt2img(response: httpx.Response, task_id: str) -> tuple[bytes, dict[str, Any]]:
    """Check a ``txt2img`` response for our task and return (PNG bytes, info), or raise
    the fault."""
    status = response.status_code
    if status in (502, 503, 504):
        raise TransientFault(f"HTTP {status}", "unavailable")
    if status >= 500:
        if "OutOfMemoryError" in response.text:
            raise OutOfMemory(f"HTTP {status}: {response.text[:300]}")
        raise ForgeFault(f"HTTP {status}: {response.text[:300]}")
    if status >= 400:
        raise Rejected(f"HTTP {status}: {response.text[:300]}")
    if status != 200:
        raise InvalidResponse(f"unexpected HTTP {status}")
    try:
        data = response.json()
    except ValueError as exc:
        raise InvalidResponse(f"malformed JSON: {exc}") from exc
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not images or not isinstance(images[0], str):
        raise InvalidResponse("no image in the response")
    parameters = data.get("parameters")
    if isinstance(parameters, dict) and parameters.get("force_task_id") not in (None, task_id):
        raise InvalidResponse("the response is for another task")
    png = decode_image(images[0])
    info: dict[str, Any] = {}
    raw_info = data.get("info")
    if isinstance(raw_info, str):
        try:
            parsed = json.loads(raw_info)
            info = parsed if isinstance(parsed, dict) else {}
        except ValueError:
            info = {}
    keep = ("seed", "sd_model_name", "sampler_name", "job_timestamp")
    return png, {k: info[k] for k in keep if k in info}


def decode_image(encoded: str) -> bytes:
    """Base64 (optionally a ``data:`` URL) to PNG bytes; anything else is invalid."""
    from PIL import Image, UnidentifiedImageError

    if encoded.startswith("data:"):
        encoded = encoded.partition(",")[2]
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidResponse(f"bad base64: {exc}") from exc
    if not raw:
        raise InvalidResponse("empty image")
    try:
        with Image.open(io.BytesIO(raw)) as probe:
            probe.verify()
            kind = probe.format
        if kind == "PNG":
            return raw
        with Image.open(io.BytesIO(raw)) as image:
            out = io.BytesIO()
            image.save(out, format="PNG")
            return out.getvalue()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidResponse(f"not an image: {exc}") from exc


def _report(progress: ProgressCallback, value: float) -> None:
    try:
        progress(value)
    except Exception as exc:
        log.info("progress callback failed: %s", exc)
