"""OpenAI-compatible endpoints: ``GET /v1/models`` and ``POST /v1/chat/completions``.

Without a conversation id a request is stateless, as with OpenAI: the client sends the
whole history, mami fits it into the token budget (oldest turns dropped) and stores
nothing. With a conversation id (header ``X-Mami-Conversation`` or
``metadata.conversation_id``; ``new`` starts one) only the last user message is taken
from the request and the stored history is used; the answer is stored and the
response carries the conversation id in the ``X-Mami-Conversation`` header.
``metadata.client_message_id`` (or header ``X-Mami-Client-Message-Id``) makes a
retried stored request idempotent.

``stream: true`` answers with server-sent events: ``data: <chunk JSON>`` lines ending
with ``data: [DONE]``; a stream that breaks after it started ends with a
``data: {"error": ...}`` event. Errors before the first token are ordinary JSON errors
with their HTTP status.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, get, post
from litestar.response import Stream

from core.chat import ChatRequest, Finished, start_turn
from core.errors import BadRequest, ProviderError
from core.protocols import ChatMessage, GenerationParams, Principal
from core.runtime import Runtime

CONVERSATION_HEADER = "X-Mami-Conversation"
CLIENT_ID_HEADER = "X-Mami-Client-Message-Id"
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@get("/v1/models", summary="List the chat models (OpenAI-compatible)")
async def list_models(runtime: Runtime, principal: Principal) -> dict[str, Any]:
    """Every registered LLM provider, by the name to pass as ``model``."""
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "mami"}
            for name in runtime.providers["llm"]
        ],
    }


def _text(content: Any, index: int) -> str:
    """A message's text: a string or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise BadRequest(f"messages[{index}].content: only text parts are supported")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    if content is None:
        return ""
    raise BadRequest(f"messages[{index}].content must be a string or a list of text parts")


def parse_messages(raw: Any) -> list[ChatMessage]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest("messages must be a non-empty list")
    parsed = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise BadRequest(f"messages[{i}] must be an object")
        role = ROLES.get(item.get("role", ""))
        if role is None:
            raise BadRequest(f"messages[{i}].role {item.get('role')!r} is not supported "
                             f"(use one of {', '.join(ROLES)})")
        parsed.append(ChatMessage(role, _text(item.get("content"), i)))  # type: ignore[arg-type]
    if parsed[-1].role != "user":
        raise BadRequest("the last message must have role 'user'")
    return parsed


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise BadRequest(f"{key} must be a number from {low:g} to {high:g}")
    return float(value)


def parse_params(body: dict[str, Any], default_max_tokens: int) -> GenerationParams:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise BadRequest("max_tokens must be a positive integer")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise BadRequest("stop must be a string or a list of strings")
    if body.get("n", 1) != 1:
        raise BadRequest("only n = 1 is supported")
    return GenerationParams(
        max_tokens=max_tokens or default_max_tokens,
        temperature=_number(body, "temperature", 0.7, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        stop=tuple(stop or ()),
    )


def parse_request(body: dict[str, Any], headers: Any, default_max_tokens: int) -> ChatRequest:
    """The chat request an OpenAI body (plus mami's headers) describes; without
    ``max_tokens`` the reply may take ``default_max_tokens``."""
    messages = parse_messages(body.get("messages"))
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise BadRequest("metadata must be an object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("model must be a string")
    conversation = headers.get(CONVERSATION_HEADER.lower()) or metadata.get("conversation_id")
    client_id = headers.get(CLIENT_ID_HEADER.lower()) or metadata.get("client_message_id")
    for name, value in (("conversation_id", conversation), ("client_message_id", client_id)):
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"metadata.{name} must be a string")
    params = parse_params(body, default_max_tokens)
    common: dict[str, Any] = {"model": model or None, "params": params}
    if conversation:
        return ChatRequest(
            messages[-1].content,
            conversation_id=None if conversation == "new" else conversation,
            client_message_id=client_id,
            **common,
        )
    system = [m.content for m in messages if m.role == "system"]
    return ChatRequest(
        messages[-1].content,
        history=[m for m in messages[:-1] if m.role != "system"],
        system_prompt="\n\n".join(system) if system else None,
        **common,
    )


def _fail(finished: Finished) -> ProviderError:
    message = finished.error or "the reply failed"
    if finished.status == "interrupted":
        message = f"the reply was interrupted: {message}"
    return ProviderError(message, status_code=finished.error_code or 502)


@post("/v1/chat/completions", status_code=200, summary="Chat (OpenAI-compatible)")
async def chat_completions(
    request: Request[Any, Any, Any], runtime: Runtime, principal: Principal
) -> Response[Any] | Stream:
    """Answer with one ``chat.completion`` or, with ``stream: true``, a stream of
    ``chat.completion.chunk`` server-sent events."""
    try:
        body = await request.json()
    except Exception:
        raise BadRequest("the body must be JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    chat = parse_request(body, request.headers, runtime.config.budget.reply_tokens)
    if body.get("stream") and runtime.serverless:
        raise BadRequest("streaming needs the server deployment (mami serve); "
                         "on AWS Lambda send stream: false")
    turn = await start_turn(runtime, principal, chat)
    headers = {CONVERSATION_HEADER: turn.conversation_id} if turn.conversation_id else {}
    meta = {
        "id": f"chatcmpl-{turn.message_id or uuid.uuid4().hex}",
        "created": int(time.time()),
        "model": turn.llm.name,
    }
    items = turn.run()
    first = await anext(items)
    if isinstance(first, Finished) and first.status != "complete":
        raise _fail(first)
    if body.get("stream"):
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return Stream(_sse(items, first, meta, usage), media_type="text/event-stream",
                      headers={**headers, "Cache-Control": "no-cache"})
    text = [] if isinstance(first, Finished) else [first]
    finished = first if isinstance(first, Finished) else None
    async for item in items:
        if isinstance(item, Finished):
            finished = item
        else:
            text.append(item)
    assert finished is not None
    if finished.status != "complete":
        raise _fail(finished)
    return Response(
        {
            **meta,
            "object": "chat.completion",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": finished.text},
                "finish_reason": finished.finish_reason or "stop",
                "logprobs": None,
            }],
            "usage": finished.usage.as_dict(),
        },
        headers=headers,
    )


def _chunk(meta: dict[str, Any], delta: dict[str, Any], finish: str | None = None) -> bytes:
    payload = {**meta, "object": "chat.completion.chunk",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def _sse(
    items: AsyncIterator[str | Finished], first: str | Finished,
    meta: dict[str, Any], include_usage: bool,
) -> AsyncIterator[bytes]:
    async with contextlib.aclosing(items):  # type: ignore[type-var]
        yield _chunk(meta, {"role": "assistant", "content": ""})
        pending: list[str | Finished] = [first]
        while True:
            item = pending.pop() if pending else await anext(items, None)
            if item is None:
                break
            if isinstance(item, str):
                yield _chunk(meta, {"content": item})
                continue
            if item.status != "complete":
                error = _fail(item)
                body = {"error": {"message": error.message, "type": "server_error",
                                  "code": error.status_code}}
                yield b"data: " + json.dumps(body).encode() + b"\n\n"
                break
            yield _chunk(meta, {}, item.finish_reason or "stop")
            if include_usage:
                payload = {**meta, "object": "chat.completion.chunk", "choices": [],
                           "usage": item.usage.as_dict()}
                yield b"data: " + json.dumps(payload).encode() + b"\n\n"
            break
        yield b"data: [DONE]\n\n"
        async for _ in items:  # the turn's after-completion events run after [DONE]
            pass


routes = [list_models, chat_completions]
