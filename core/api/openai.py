"""OpenAI-compatible endpoints: ``GET /v1/models`` and ``POST /v1/chat/completions``.

Without a conversation id a request is stateless, as with OpenAI: the client sends the
whole history, mami fits it into the token budget (oldest turns dropped) and stores
nothing. With a conversation id (header ``X-Mami-Conversation`` or
``metadata.conversation_id``; ``new`` starts one) only the last user message is taken
from the request and the stored history is used; the answer is stored and the
response carries the conversation id in the ``X-Mami-Conversation`` header.
``metadata.client_message_id`` (or header ``X-Mami-Client-Message-Id``) makes a
retried stored request idempotent. Every response of a stored turn carries its
conversation id, errors included (also as ``error.conversation_id``), so a client can
find the failed turn and retry into it.

The whole body is validated before the model is called or anything is stored (see
:func:`check_fields`); errors are OpenAI's ``{"error": {"message", "type", "param",
"code"}}``. ``GET /v1/models/{id}`` returns one model.

When document passages were used, the answer names them in the extension field
``mami_sources`` (a list of ``Source``, :func:`core.chat.source_of`) at the top level
of the ``chat.completion`` and of the first streamed chunk; OpenAI's SDKs keep unknown
fields (``completion.model_extra["mami_sources"]``).

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
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.background_tasks import BackgroundTask
from litestar.response import Stream

from core.api.openai_schema import ChatOperation
from core.chat import ChatRequest, Finished, TurnRun, start_turn
from core.errors import BadRequest, MamiError, NotFound, ProviderError, error_body
from core.protocols import ChatMessage, GenerationParams, Principal
from core.runtime import Runtime

VALIDITY_POLL = 1.0
"""Seconds between checks that a streaming reply's credential is still valid."""

CONVERSATION_HEADER = "X-Mami-Conversation"
CLIENT_ID_HEADER = "X-Mami-Client-Message-Id"
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "mami"}


@get("/v1/models", summary="List the chat models (OpenAI-compatible)")
async def list_models(runtime: Runtime, principal: Principal) -> dict[str, Any]:
    """Every registered LLM provider, by the name to pass as ``model``."""
    return {"object": "list", "data": [_model(name) for name in runtime.providers["llm"]]}


@get("/v1/models/{model_id:path}", summary="One chat model (OpenAI-compatible)")
async def get_model(runtime: Runtime, principal: Principal, model_id: str) -> dict[str, Any]:
    """The model named ``model_id`` (404 if no LLM provider has that name)."""
    name = model_id.lstrip("/")
    if name not in runtime.providers["llm"]:
        raise NotFound(f"model {name!r} not found", param="model", code="model_not_found")
    return _model(name)


def _text(content: Any, index: int) -> str:
    """A message's text: a string or a list of ``{"type": "text", "text": ...}`` parts."""
    param = f"messages[{index}].content"
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise BadRequest(f"{param}: only text parts are supported", param=param)
            if not isinstance(part.get("text"), str):
                raise BadRequest(f"{param}: a text part needs a string 'text'", param=param)
            texts.append(part["text"])
        return "".join(texts)
    if content is None:
        return ""
    raise BadRequest(f"{param} must be a string or a list of text parts", param=param)


def parse_messages(raw: Any) -> list[ChatMessage]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest("messages must be a non-empty list", param="messages")
    parsed = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise BadRequest(f"messages[{i}] must be an object", param=f"messages[{i}]")
        raw_role = item.get("role")
        role = ROLES.get(raw_role) if isinstance(raw_role, str) else None
        if role is None:
            raise BadRequest(f"messages[{i}].role {item.get('role')!r} is not supported "
                             f"(use one of {', '.join(ROLES)})", param=f"messages[{i}].role")
        if item.get("tool_calls"):
            raise BadRequest(f"messages[{i}].tool_calls: tools are not supported",
                             param=f"messages[{i}].tool_calls")
        name = item.get("name")
        if name is not None and not isinstance(name, str):
            raise BadRequest(f"messages[{i}].name must be a string", param=f"messages[{i}].name")
        parsed.append(ChatMessage(role, _text(item.get("content"), i)))  # type: ignore[arg-type]
    if parsed[-1].role != "user":
        raise BadRequest("the last message must have role 'user'", param="messages")
    return parsed


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise BadRequest(f"{key} must be a number from {low:g} to {high:g}", param=key)
    return float(value)


def _flag(body: dict[str, Any], key: str, where: str = "") -> bool:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"{where}{key} must be true or false", param=f"{where}{key}")
    return bool(value)


def _of_type(body: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = body.get(key)
    if value is not None and ((isinstance(value, bool) and kind is not bool)
                              or not isinstance(value, kind)):
        raise BadRequest(f"{key} must be {what}", param=key)
    return value


# Fields OpenAI clients commonly send that mami accepts (type-checked) and ignores.
IGNORED = {
    "user": (str, "a string"),
    "seed": (int, "an integer"),
    "store": (bool, "true or false"),
    "service_tier": (str, "a string"),
    "parallel_tool_calls": (bool, "true or false"),
    "reasoning_effort": (str, "a string"),
    "prompt_cache_key": (str, "a string"),
    "safety_identifier": (str, "a string"),
    "top_logprobs": (int, "an integer"),
}
UNSUPPORTED = ("tools", "functions", "audio", "prediction", "web_search_options")
KNOWN = {
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "n", "stop", "metadata", "presence_penalty", "frequency_penalty",
    "logit_bias", "logprobs", "response_format", "tool_choice", "function_call", "modalities",
    *IGNORED, *UNSUPPORTED,
}


def check_fields(body: dict[str, Any]) -> None:
    """400 for unknown fields, wrongly typed ignored ones and features mami does not
    have (tools, logprobs, JSON output, audio), each naming the field."""
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}", param=unknown[0])
    for key, (kind, what) in IGNORED.items():
        _of_type(body, key, kind, what)
    for key in ("presence_penalty", "frequency_penalty"):
        _number(body, key, 0.0, -2.0, 2.0)
    for key in UNSUPPORTED:
        if body.get(key):
            raise BadRequest(f"{key} is not supported", param=key)
    if _flag(body, "logprobs"):
        raise BadRequest("logprobs is not supported", param="logprobs")
    if _of_type(body, "logit_bias", dict, "an object"):
        raise BadRequest("logit_bias is not supported", param="logit_bias")
    for key in ("tool_choice", "function_call"):
        if body.get(key) not in (None, "none", "auto"):
            raise BadRequest(f"{key}: tools are not supported", param=key)
    response_format = _of_type(body, "response_format", dict, "an object")
    if response_format is not None and response_format.get("type") != "text":
        raise BadRequest("response_format: only {\"type\": \"text\"} is supported",
                         param="response_format")
    modalities = _of_type(body, "modalities", list, "a list")
    if modalities is not None and modalities != ["text"]:
        raise BadRequest("modalities: only [\"text\"] is supported", param="modalities")


def parse_params(body: dict[str, Any], default_max_tokens: int) -> GenerationParams:
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None \
        else "max_tokens"
    max_tokens = body.get(key)
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise BadRequest(f"{key} must be a positive integer", param=key)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and len(stop) <= 4
                                 and all(isinstance(s, str) for s in stop)):
        raise BadRequest("stop must be a string or a list of up to 4 strings", param="stop")
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise BadRequest("only n = 1 is supported", param="n")
    return GenerationParams(
        max_tokens=max_tokens or default_max_tokens,
        temperature=_number(body, "temperature", 0.7, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        stop=tuple(s for s in stop or () if s),  # an empty stop string would end every reply
    )


def parse_stream(body: dict[str, Any]) -> tuple[bool, bool]:
    """``(stream, include_usage)``; 400 for a non-boolean ``stream`` or malformed
    ``stream_options``."""
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise BadRequest("stream_options must be an object", param="stream_options")
    unknown = sorted(set(options) - {"include_usage", "include_obfuscation"})
    if unknown:
        raise BadRequest(f"stream_options: unknown field(s): {', '.join(unknown)}",
                         param=f"stream_options.{unknown[0]}")
    _flag(options, "include_obfuscation", "stream_options.")
    return stream, _flag(options, "include_usage", "stream_options.")


def parse_request(body: dict[str, Any], headers: Any, default_max_tokens: int) -> ChatRequest:
    """The chat request an OpenAI body (plus mami's headers) describes; without
    ``max_tokens`` the reply may take ``default_max_tokens``. Validates every field
    (see :func:`check_fields`)."""
    check_fields(body)
    messages = parse_messages(body.get("messages"))
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise BadRequest("metadata must be an object", param="metadata")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise BadRequest(f"metadata.{key} must be a string", param=f"metadata.{key}")
    model = _of_type(body, "model", str, "a string")
    conversation = headers.get(CONVERSATION_HEADER.lower()) or metadata.get("conversation_id")
    client_id = headers.get(CLIENT_ID_HEADER.lower()) or metadata.get("client_message_id")
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


async def read_json(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The body as a JSON object; 413 (while reading) over the app's body limit, 400 for
    anything but a JSON object."""
    raw = await request.body()  # raises the 413 itself
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise BadRequest("the body must be JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _error(exc: MamiError, turn: TurnRun) -> Response[Any]:
    """The error response of a turn. A stored turn's carries its conversation id (header
    and ``error.conversation_id``) so the client can look at it or retry into it; without
    a client message id a blind retry would store the message again, so OpenAI's SDKs
    are told not to retry (``x-should-retry: false``)."""
    headers = _conversation(turn)
    conversation_id = headers.get(CONVERSATION_HEADER)
    extra = {"conversation_id": conversation_id} if conversation_id else {}
    if conversation_id and turn.request.client_message_id is None:
        headers["x-should-retry"] = "false"
    return Response(
        error_body(exc.status_code, exc.message, param=exc.param, code=exc.code, **extra),
        status_code=exc.status_code,
        headers=headers,
    )


async def _drain(items: AsyncIterator[str | Finished]) -> None:
    async for _ in items:  # the turn's after-completion events
        pass


@post("/v1/chat/completions", status_code=200, summary="Chat (OpenAI-compatible)",
      operation_class=ChatOperation)
async def chat_completions(
    request: Request[Any, Any, Any], runtime: Runtime, principal: Principal
) -> Response[Any] | Stream:
    """Answer with one ``chat.completion`` or, with ``stream: true``, a stream of
    ``chat.completion.chunk`` server-sent events. A stored turn's response carries its
    conversation id in ``X-Mami-Conversation``, errors after it was stored included."""
    body = await read_json(request)
    chat = parse_request(body, request.headers, runtime.config.budget.reply_tokens)
    stream, include_usage = parse_stream(body)
    if stream and runtime.serverless:
        raise BadRequest("streaming needs the server deployment (mami serve); "
                         "on AWS Lambda send stream: false", param="stream")
    turn = await start_turn(runtime, principal, chat)
    meta = {
        "id": f"chatcmpl-{turn.message_id or uuid.uuid4().hex}",
        "created": int(time.time()),
        "model": turn.llm.name,
    }
    items = turn.run()
    try:
        first = await anext(items)
        if isinstance(first, Finished) and first.status != "complete":
            raise _fail(first)
        if stream:
            return Stream(_sse(items, first, meta, include_usage,
                               _credential_check(runtime, principal), _sources(turn)),
                          media_type="text/event-stream",
                          headers={**_conversation(turn), "Cache-Control": "no-cache"})
        finished = first if isinstance(first, Finished) else None
        while finished is None:
            item = await anext(items)
            finished = item if isinstance(item, Finished) else None
        if finished.status != "complete":
            raise _fail(finished)
    except MamiError as exc:
        await items.aclose()  # type: ignore[attr-defined]
        return _error(exc, turn)
    if runtime.serverless:  # nothing runs after a Lambda response: finish in the request
        await _drain(items)
        background = None
    else:
        background = BackgroundTask(_drain, items)
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
            **_sources(turn),
        },
        headers=_conversation(turn),
        background=background,
    )


def _conversation(turn: TurnRun) -> dict[str, str]:
    """The conversation header of a stored turn whose rows were written."""
    if turn.conversation_id is None or turn.unsaved:
        return {}
    return {CONVERSATION_HEADER: turn.conversation_id}


def _sources(turn: TurnRun) -> dict[str, Any]:
    """The ``mami_sources`` extension field, when the reply used document passages."""
    return {"mami_sources": turn.sources} if turn.sources else {}


def _chunk(meta: dict[str, Any], delta: dict[str, Any], finish: str | None = None,
           extra: dict[str, Any] | None = None) -> bytes:
    payload = {**meta, "object": "chat.completion.chunk",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
               **(extra or {})}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _credential_check(runtime: Runtime,
                      principal: Principal) -> Callable[[], Awaitable[bool]] | None:
    """What tells a running stream that its token was revoked or expired: the
    authenticator's optional ``still_valid(principal)``; ``None`` without auth."""
    check = getattr(runtime.authenticator, "still_valid", None)
    if not runtime.config.core.auth or check is None or principal.credential_id is None:
        return None
    return lambda: check(principal)  # type: ignore[no-any-return]


async def _sse(
    items: AsyncIterator[str | Finished], first: str | Finished,
    meta: dict[str, Any], include_usage: bool,
    still_valid: Callable[[], Awaitable[bool]] | None = None,
    extra: dict[str, Any] | None = None,
) -> AsyncIterator[bytes]:
    """The chunks of a streamed turn. With ``still_valid``, a credential revoked or
    expired while the reply streams ends it (checked at most every
    :data:`VALIDITY_POLL` seconds as deltas arrive): an error event, ``[DONE]``, and the
    turn closed, which stores it as ``interrupted``."""
    checked = time.monotonic()
    async with contextlib.aclosing(items):  # type: ignore[type-var]
        yield _chunk(meta, {"role": "assistant", "content": ""}, extra=extra)
        pending: list[str | Finished] = [first]
        while True:
            item = pending.pop() if pending else await anext(items, None)
            if item is None:
                break
            if isinstance(item, str):
                if still_valid is not None and time.monotonic() - checked >= VALIDITY_POLL:
                    checked = time.monotonic()
                    if not await still_valid():
                        body = error_body(401, "the token was revoked or expired",
                                          code="credential_revoked")
                        yield b"data: " + json.dumps(body).encode() + b"\n\n"
                        yield b"data: [DONE]\n\n"
                        return
                yield _chunk(meta, {"content": item})
                continue
            if item.status != "complete":
                error = _fail(item)
                body = error_body(error.status_code, error.message, code=error.code)
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


routes = [list_models, get_model, chat_completions]
