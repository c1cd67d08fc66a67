"""``/api/images``: create image jobs, follow them, fetch their PNGs. Owner-scoped: a job
of another owner does not exist for the caller (404)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Response, get, post

from core import jobs
from core.errors import BadRequest, NotFound
from core.models import Conversation, ImageJob
from core.protocols import ImageRequest, Principal
from core.runtime import Runtime

MAX_PROMPT = 2000
MAX_SIDE = 2048


@dataclass
class ImageJobCreate:
    """A text-to-image request. Sizes are multiples of 8 from 64 to 2048 pixels."""

    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 20
    seed: int = -1
    sampler: str | None = None
    checkpoint: str | None = None
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
        raise BadRequest("prompt: must not be empty")
    if len(prompt) > MAX_PROMPT or len(data.negative_prompt) > MAX_PROMPT:
        raise BadRequest(f"prompt: at most {MAX_PROMPT} characters")
    for name in ("width", "height"):
        value = getattr(data, name)
        if not 64 <= value <= MAX_SIDE or value % 8:
            raise BadRequest(f"{name}: must be a multiple of 8 from 64 to {MAX_SIDE}, got {value}")
    if not 1 <= data.steps <= 150:
        raise BadRequest(f"steps: must be from 1 to 150, got {data.steps}")
    return ImageRequest(
        prompt=prompt, negative_prompt=data.negative_prompt, width=data.width,
        height=data.height, steps=data.steps, seed=data.seed, sampler=data.sampler or None,
        checkpoint=data.checkpoint or None,
    )


@post("/api/images", summary="Queue an image job", status_code=202)
async def create_image(
    data: ImageJobCreate, principal: Principal, runtime: Runtime
) -> dict[str, Any]:
    """Answers 202 at once with the job; follow it at ``url``. 503 when no image
    generator plugin runs."""
    request = image_request(data)
    runtime.require("images")
    if data.conversation_id is not None:
        async with runtime.db.session() as session:
            conversation = await session.get(Conversation, data.conversation_id)
        if conversation is None or conversation.owner_id != principal.owner:
            raise NotFound("conversation not found")
    job = await jobs.enqueue(runtime, principal.owner, request,
                             conversation_id=data.conversation_id)
    return job_view(job)


@get("/api/images/{ref:str}", summary="An image job's status, or its PNG with .png")
async def read_image(ref: str, principal: Principal, runtime: Runtime) -> Response[Any]:
    """``/api/images/{id}``: state, progress, placeholder reason. ``/api/images/{id}.png``:
    the image (or the placeholder, marked by the ``X-Mami-Placeholder`` header); 409
    while the job is not finished."""
    job_id, wants_png = (ref[:-4], True) if ref.endswith(".png") else (ref, False)
    job = await jobs.get_job(runtime.db, job_id, owner=principal.owner)
    if job is None:
        raise NotFound("image job not found")
    if not wants_png:
        return Response(job_view(job))
    path = jobs.image_file(runtime.config, job)
    if job.state not in ("succeeded", "placeholder") or path is None:
        raise BadRequest(f"image job is {job.state}: no image", status_code=409)
    try:
        content = path.read_bytes()
    except FileNotFoundError as exc:
        raise NotFound("image file is missing from storage") from exc
    headers = {"Cache-Control": "private, max-age=86400"}
    if job.state == "placeholder":
        headers["X-Mami-Placeholder"] = job.placeholder_reason or "unknown"
    return Response(content, media_type="image/png", headers=headers)


routes = [create_image, read_image]
