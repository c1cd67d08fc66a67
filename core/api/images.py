"""``/api/images``: create image jobs, follow them, fetch their PNGs. Owner-scoped: a job
of another owner does not exist for the caller (404).

Also the chat command ``/image <prompt>`` (registered through the
``register_chat_commands`` hook, as core's own plugin): it queues a job and answers at once; when
the job is final, ``{"type": "image", "job_id", "state", "url", "placeholder_reason"}``
is pushed to the owner's open chat sockets (the worker may run in this process or in
``mami worker`` elsewhere: an in-process completion wakes the watcher at once, otherwise
it notices by polling).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from litestar import Request, Response, get, post
from litestar.response import Redirect

from core import hookimpl, jobs
from core.api.bodies import check_body
from core.api.ws import push_event
from core.chat import ChatCommand
from core.errors import BadRequest, MamiError, NotFound
from core.models import Conversation, ImageJob
from core.protocols import ImageRequest, Principal
from core.runtime import Runtime

MAX_PROMPT = 2000
MAX_SIDE = 2048
MAX_NAME = 200
SEED_MAX = 2**32 - 1
CFG_SCALE = (1.0, 30.0)
DISTILLED_CFG_SCALE = (0.0, 30.0)
WATCH_POLL = 1.0
WATCH_LIMIT = 3600.0
SIGNALS = "images.finished_signals"
WATCHERS = "images.watchers"


@dataclass(frozen=True, slots=True)
class ImageJobCreate(ImageRequest):
    """A text-to-image request. Sizes are multiples of 8 from 64 to 2048 pixels; ``seed``
    is -1 (random) or 0 to 2**32-1. ``sampler``, ``scheduler`` and ``checkpoint`` left
    out take the generator's configured default; an empty string asks for the server's
    own default. ``cfg_scale`` (1-30) and ``distilled_cfg_scale`` (0-30, Forge's Flux
    guidance) left out take the configured default, else the server's. Unknown fields
    are refused. ``conversation_id``: the conversation the finished image is posted to."""

    conversation_id: str | None = None


def job_view(job: ImageJob) -> dict[str, Any]:
    """The public shape of a job (what ``GET /api/images/{id}`` returns)."""
    has_image = job.state in ("succeeded", "placeholder") and job.result_path is not None
    return {
        "id": job.id,
        "state": job.state,
        "progress": job.progress,
        "attempts": job.attempts,
        "placeholder": job.state == "placeholder",
        "placeholder_reason": job.placeholder_reason,
        "error": job.error,
        "prompt": job.request.get("prompt"),
        "conversation_id": job.conversation_id,
        "url": f"/api/images/{job.id}",
        "image_url": f"/api/images/{job.id}.png" if has_image else None,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def image_request(data: ImageJobCreate) -> ImageRequest:
    """Check a request's values; :class:`BadRequest` names the first bad field."""
    prompt = data.prompt.strip()
    if not prompt:
        raise BadRequest("prompt: must not be empty", param="prompt")
    for name in ("prompt", "negative_prompt"):
        if len(getattr(data, name)) > MAX_PROMPT:
            raise BadRequest(f"{name}: at most {MAX_PROMPT} characters", param=name)
    for name in ("width", "height"):
        value = getattr(data, name)
        if not 64 <= value <= MAX_SIDE or value % 8:
            raise BadRequest(f"{name}: must be a multiple of 8 from 64 to {MAX_SIDE}, got {value}",
                             param=name)
    if not 1 <= data.steps <= 150:
        raise BadRequest(f"steps: must be from 1 to 150, got {data.steps}", param="steps")
    if not -1 <= data.seed <= SEED_MAX:
        raise BadRequest(f"seed: must be -1 (random) or from 0 to {SEED_MAX}, got {data.seed}",
                         param="seed")
    names = {}
    for name in ("sampler", "scheduler", "checkpoint"):
        value = getattr(data, name)
        if value is not None and len(value.strip()) > MAX_NAME:
            raise BadRequest(f"{name}: at most {MAX_NAME} characters", param=name)
        names[name] = None if value is None else value.strip()
    for name, (low, high) in (("cfg_scale", CFG_SCALE),
                              ("distilled_cfg_scale", DISTILLED_CFG_SCALE)):
        value = getattr(data, name)
        if value is not None and not low <= value <= high:
            raise BadRequest(f"{name}: must be from {low:g} to {high:g}, got {value:g}", param=name)
    given = {f.name: getattr(data, f.name) for f in dataclasses.fields(ImageRequest)}
    return ImageRequest(**{**given, "prompt": prompt, **names})


@post("/api/images", summary="Queue an image job", status_code=202)
async def create_image(
    data: ImageJobCreate, request: Request[Any, Any, Any], principal: Principal,
    runtime: Runtime,
) -> dict[str, Any]:
    """Answers 202 at once with the job; follow it at ``url``. 400 naming the field for
    a bad value, a wrong type or an unknown field; 503 when no image generator plugin
    runs."""
    check_body(await request.json(), ImageJobCreate)
    image = image_request(data)
    runtime.require("images")
    if data.conversation_id is not None:
        async with runtime.db.session() as session:
            conversation = await session.get(Conversation, data.conversation_id)
        if conversation is None or conversation.owner_id != principal.owner:
            raise NotFound("conversation not found")
    job = await jobs.enqueue(runtime, principal.owner, image,
                             conversation_id=data.conversation_id)
    return job_view(job)


@get("/api/images", summary="The caller's image jobs, newest first")
async def list_images(principal: Principal, runtime: Runtime, limit: int = 50,
                      offset: int = 0) -> list[dict[str, Any]]:
    """Paged with ``limit`` (1 to 200) and ``offset``; 400 outside those bounds."""
    if not 1 <= limit <= 200 or offset < 0:
        raise BadRequest("limit must be 1 to 200 and offset not negative")
    return [job_view(job) for job in await jobs.list_jobs(runtime.db, principal.owner,
                                                          limit, offset)]


@get("/api/images/{ref:str}", summary="An image job's status, or its PNG with .png")
async def read_image(ref: str, principal: Principal, runtime: Runtime) -> Response[Any] | Redirect:
    """``/api/images/{id}``: state, progress, placeholder reason. ``/api/images/{id}.png``:
    the image (or the placeholder, marked by the ``X-Mami-Placeholder`` header), or with
    an S3 image store a 307 redirect to a short-lived presigned URL of it; 409 while the
    job is not finished."""
    job_id, wants_png = (ref[:-4], True) if ref.endswith(".png") else (ref, False)
    job = await jobs.get_job(runtime.db, job_id, owner=principal.owner)
    if job is None:
        raise NotFound("image job not found")
    if not wants_png:
        return Response(job_view(job))
    if job.state not in ("succeeded", "placeholder") or job.result_path is None:
        raise BadRequest(f"image job is {job.state}: no image", status_code=409)
    headers = {"Cache-Control": "private, max-age=86400"}
    if job.state == "placeholder":
        headers["X-Mami-Placeholder"] = job.placeholder_reason or "unknown"
    store = jobs.image_store(runtime)
    link = store.link(job.result_path)
    if link is not None:  # the link expires: so must any cached copy of the redirect
        headers["Cache-Control"] = "private, no-store"
        return Redirect(link, status_code=307, headers=headers)
    try:
        content = await store.read(job.result_path)
    except FileNotFoundError as exc:
        raise NotFound("image file is missing from storage") from exc
    return Response(content, media_type="image/png", headers=headers)


NO_IMAGE_SERVER = ("No image server is configured, so I can't make images "
                   "(see \"Image generation\" in mami's README to set one up).")


def image_event(job: ImageJob) -> dict[str, Any]:
    """The WebSocket event announcing a finished job."""
    view = job_view(job)
    return {"type": "image", "job_id": job.id, "state": job.state, "url": view["image_url"],
            "placeholder_reason": job.placeholder_reason}


async def image_command(runtime: Runtime, principal: Principal, argument: str,
                        conversation_id: str | None) -> str:
    """``/image <prompt>`` in chat: queue a job (for the chat's conversation, if stored)
    and say so at once."""
    if runtime.images is None:
        return NO_IMAGE_SERVER
    try:
        request = image_request(ImageJobCreate(prompt=argument))
    except MamiError as exc:
        return f"I can't make that image: {exc.message}. Usage: /image <prompt>"
    job = await jobs.enqueue(runtime, principal.owner, request, conversation_id=conversation_id)
    if not runtime.serverless:  # nothing may run after a response on Lambda
        _watch(runtime, job)
    return (f"Creating an image of \"{request.prompt}\" (job {job.id}). It will appear here "
            f"when it is ready, and at /api/images/{job.id}.png.")


def _watch(runtime: Runtime, job: ImageJob) -> None:
    if SIGNALS not in runtime.state:
        runtime.state[SIGNALS] = {}
        jobs.add_image_callback(runtime, _signal_finished(runtime))
    runtime.state[SIGNALS][job.id] = asyncio.Event()
    watchers: set[asyncio.Task[None]] = runtime.state.setdefault(WATCHERS, set())
    task = asyncio.create_task(_push_when_final(runtime, job.id, job.owner_id))
    watchers.add(task)
    task.add_done_callback(watchers.discard)


def _signal_finished(runtime: Runtime) -> jobs.JobCallback:
    def signal(job: ImageJob) -> None:
        event = runtime.state[SIGNALS].get(job.id)
        if event is not None:
            event.set()

    return signal


async def _push_when_final(runtime: Runtime, job_id: str, owner: str) -> None:
    signal: asyncio.Event = runtime.state[SIGNALS][job_id]
    try:
        async with asyncio.timeout(WATCH_LIMIT):
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(signal.wait(), WATCH_POLL)
                job = await jobs.get_job(runtime.db, job_id)
                if job is not None and job.state in jobs.FINAL_STATES:
                    push_event(runtime, owner, image_event(job))
                    return
    finally:
        runtime.state[SIGNALS].pop(job_id, None)


@hookimpl
def register_chat_commands(register: Callable[[ChatCommand], None]) -> None:
    register(ChatCommand("image", image_command, "queue an image: /image <prompt>"))

routes = [create_image, list_images, read_image]
