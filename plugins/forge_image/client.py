"""The image generator for a Stable Diffusion WebUI Forge / AUTOMATIC1111 server."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any

import httpx
import stamina

from core.protocols import ImageRequest, ImageResult, ProgressCallback
from plugins.forge_image.breaker import BreakerOpen, CircuitBreaker
from plugins.forge_image.placeholder import placeholder_png

log = logging.getLogger("mami.forge_image")


class ForgeFault(Exception):
    """A failed call. ``reason`` is the placeholder reason code; ``server_fault`` says
    whether it counts against the server in the circuit breaker."""

    reason = "server_error"
    server_fault = True


class TransientFault(ForgeFault):
    """Connection refused or reset, a timeout, or 502/503/504: worth retrying."""

    def __init__(self, message: str, reason: str = "unavailable") -> None:
        super().__init__(message)
        self.reason = reason


class OutOfMemory(ForgeFault):
    reason = "out_of_memory"


class Rejected(ForgeFault):
    """A 4xx: our request is wrong; the server itself is fine."""

    reason = "rejected"
    server_fault = False


class InvalidResponse(ForgeFault):
    reason = "invalid_response"


def is_transient(exc: Exception) -> bool:
    """stamina's retry predicate: only transient faults, never BreakerOpen."""
    return isinstance(exc, TransientFault)


class ForgeImageGenerator:
    """:class:`core.protocols.ImageGenerator` over ``/sdapi/v1``.

    Each HTTP attempt has connect/read timeouts; transient faults are retried with
    exponential backoff and jitter; the whole job is bounded by ``deadline``; a
    circuit breaker shared by all jobs of the process fails fast while the server is
    down. ``generate`` never raises for server faults: it returns a placeholder.
    """

    def __init__(self, settings: Any, name: str = "forge-image") -> None:
        self.name = name
        self.s = settings
        self.base_url = settings.url.rstrip("/")
        self.breaker = CircuitBreaker(
            settings.breaker_threshold, settings.breaker_cooldown, name=self.base_url
        )
        self.attempts_total = 0
        self._client: httpx.AsyncClient | None = None
        self._background: set[asyncio.Task[Any]] = set()

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
        """The ``txt2img`` body; the checkpoint goes through ``override_settings``."""
        body: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "width": request.width,
            "height": request.height,
            "steps": request.steps,
            "seed": request.seed,
            "batch_size": 1,
            "n_iter": 1,
            "send_images": True,
            "save_images": False,
        }
        sampler = request.sampler or self.s.sampler
        if sampler:
            body["sampler_name"] = sampler
        checkpoint = request.checkpoint or self.s.checkpoint
        if checkpoint:
            body["override_settings"] = {"sd_model_checkpoint": checkpoint}
            body["override_settings_restore_afterwards"] = True
        return body

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
        poller = asyncio.create_task(self._poll_progress(progress)) if progress else None
        try:
            async with asyncio.timeout(self.budget):
                png, info = await self._txt2img_with_retries(request, started)
        except TimeoutError:
            self._spawn(self._interrupt())
            return self._placeholder(
                request, "timed_out", f"no image within the {self.s.deadline:g}s deadline", started
            )
        except BreakerOpen as exc:
            return self._placeholder(request, "circuit_open", str(exc), started)
        except ForgeFault as fault:
            return self._placeholder(request, fault.reason, str(fault), started)
        except asyncio.CancelledError:
            self._spawn(self._interrupt())
            raise
        finally:
            if poller is not None:
                poller.cancel()
        if progress is not None:
            _report(progress, 1.0)
        return ImageResult(png=png, info=info)

    async def _txt2img_with_retries(
        self, request: ImageRequest, started: float
    ) -> tuple[bytes, dict[str, Any]]:
        body = self.payload(request)
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
                return await self._attempt(body, max(0.001, remaining))
        raise AssertionError("unreachable: stamina re-raises the last fault")

    async def _attempt(
        self, body: dict[str, Any], remaining: float
    ) -> tuple[bytes, dict[str, Any]]:
        """One HTTP call through the breaker."""
        self.breaker.acquire()
        self.attempts_total += 1
        try:
            try:
                response = await self.client.post(
                    "/sdapi/v1/txt2img",
                    json=body,
                    timeout=self._timeout(min(self.s.read_timeout, remaining)),
                )
            except httpx.ReadTimeout as exc:
                self._spawn(self._interrupt())  # the server keeps working otherwise
                raise TransientFault(f"read timed out: {exc!r}", "timed_out") from exc
            except httpx.TimeoutException as exc:
                raise TransientFault(f"timed out: {exc!r}", "timed_out") from exc
            except httpx.TransportError as exc:
                raise TransientFault(f"{type(exc).__name__}: {exc}", "unavailable") from exc
            result = parse_txt2img(response)
        except ForgeFault as fault:
            (self.breaker.failure if fault.server_fault else self.breaker.success)()
            log.warning("txt2img attempt failed (%s): %s", fault.reason, fault)
            raise
        except BaseException:
            self.breaker.abort()
            raise
        self.breaker.success()
        return result

    async def _poll_progress(self, progress: ProgressCallback | None) -> None:
        assert progress is not None
        while True:
            await asyncio.sleep(self.s.progress_interval)
            try:
                response = await self.client.get(
                    "/sdapi/v1/progress",
                    params={"skip_current_image": "true"},
                    timeout=self._timeout(self.s.connect_timeout),
                )
                value = float(response.json().get("progress", 0.0))
            except (httpx.HTTPError, ValueError, AttributeError, TypeError):
                continue
            _report(progress, max(0.0, min(0.99, value)))

    async def _interrupt(self) -> None:
        """Ask the server to stop the job we abandoned (best effort, short timeout)."""
        try:
            await self.client.post(
                "/sdapi/v1/interrupt", timeout=self._timeout(self.s.connect_timeout)
            )
        except httpx.HTTPError as exc:
            log.info("interrupt failed: %s", exc)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
            info={"detail": detail, "elapsed_s": round(time.monotonic() - started, 3),
                  "breaker": self.breaker.state},
        )

    async def health(self) -> Mapping[str, Any]:
        """Breaker state and counters plus a cheap ``sd-models`` probe (short timeout).

        The probe never changes the breaker; while it is open no probe is sent."""
        report: dict[str, Any] = {"url": self.base_url, "breaker": self.breaker.snapshot(),
                                  "attempts": self.attempts_total}
        if self.breaker.state == "open":
            report["status"] = "open"
            return report
        try:
            response = await self.client.get(
                "/sdapi/v1/sd-models", timeout=self._timeout(self.s.health_timeout)
            )
            response.raise_for_status()
            report["models"] = len(response.json())
            report["status"] = "ok"
        except (httpx.HTTPError, ValueError, TypeError) as exc:
            report["status"] = "unreachable"
            report["error"] = f"{type(exc).__name__}: {exc}"
        return report

    async def aclose(self) -> None:
        if self._background:
            await asyncio.wait(set(self._background), timeout=self.s.connect_timeout)
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def parse_txt2img(response: httpx.Response) -> tuple[bytes, dict[str, Any]]:
    """Check a ``txt2img`` response and return (PNG bytes, info), or raise the fault."""
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
    png = decode_image(images[0])
    info: dict[str, Any] = {}
    raw_info = data.get("info")
    if isinstance(raw_info, str):
        try:
            parsed = json.loads(raw_info)
            info = parsed if isinstance(parsed, dict) else {}
        except ValueError:
            info = {}
    return png, {k: info[k] for k in ("seed", "sd_model_name", "sampler_name") if k in info}


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
