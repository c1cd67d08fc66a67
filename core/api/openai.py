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

Tools (OpenAI semantics): ``tools`` sent by the client are passed to the model, and the
calls it asks for come back unchanged (``message.tool_calls``, finish reason
``tool_calls``; streamed as ``delta.tool_calls`` fragments); the client runs them and
sends the results back as ``role: "tool"`` messages after the assistant message with
the ``tool_calls``. Client tools need a stateless request (no conversation id). Without
client tools, the server's own tools (``runtime.tools``) may run inside the turn (see
:mod:`core.chat`). ``response_format`` (``json_object``, ``json_schema``) is passed to
models that support it; for others, as for tools, the request is a 400 naming the
parameter.

When document passages were used, the answer names them in the extension field
``mami_sources`` (a list of ``Source``, :func:`core.chat.source_of`) at the top level
of the ``chat.completion`` and of the first streamed chunk; OpenAI's SDKs keep unknown
fields (``completion.model_extra["mami_sources"]``). When the answer had to do without
the documents or the memories (their store failed), the extension field
``mami_warnings`` (a list of strings such as ``"documents unavailable: <reason>"``, see
:attr:`core.chat.TurnRun.warnings`) is there too, in the same places; the turn itself
still succeeds.

``stream: true`` answers with server-sent events: ``data: <chunk JSON>`` lines ending
with ``data: [DONE]``; a stream that breaks after it started ends with a
``data: {"error": ...}`` event. Errors before the first token are ordinary JSON errors
with their HTTP status.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.background_tasks import BackgroundTask
from litestar.response import Stream

from core.api.bodies import refuse_unknown
from core.api.openai_schema import ChatOperation
from core.chat import ChatRequest, Finished, TurnRun, start_turn
from core.errors import BadRequest, MamiError, NotFound, ProviderError, error_body
from core.protocols import ChatMessage, GenerationParams, Principal, ToolCall, ToolCallDelta
from core.runtime import Runtime

VALIDITY_POLL = 1.0
"""Seconds between checks that a streaming reply's credential is still valid."""

CONVERSATION_HEADER = "X-Mami-Conversation"
CLIENT_ID_HEADER = "X-Mami-Client-Message-Id"
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
         "tool": "tool"}
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


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


def _tool_calls(raw: Any, i: int) -> tuple[ToolCall, ...]:
    """An assistant message's ``tool_calls`` (OpenAI's shape)."""
    param = f"messages[{i}].tool_calls"
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise BadRequest(f"{param} must be a list", param=param)
    calls = []
    for j, call in enumerate(raw):
        where = f"{param}[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type", "function") != "function":
            raise BadRequest(f"{where} must be {{\"id\", \"type\": \"function\", "
                             f"\"function\": {{\"name\", \"arguments\"}}}}", param=where)
        ident, name, arguments = call.get("id"), function.get("name"), function.get("arguments")
        if not isinstance(ident, str) or not ident:
            raise BadRequest(f"{where}.id must be a non-empty string", param=f"{where}.id")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"{where}.function.name must be a non-empty string",
                             param=f"{where}.function.name")
        if not isinstance(arguments, str):
            raise BadRequest(f"{where}.function.arguments must be a string (JSON text)",
                             param=f"{where}.function.arguments")
        calls.append(ToolCall(ident, name, arguments))
    return tuple(calls)


def _check_steps(messages: list[ChatMessage]) -> None:
    """OpenAI's rule: each assistant message with tool calls is followed by one tool
    message per call, before any other message; a tool message answers such a call."""
    waiting: dict[str, int] = {}
    for i, message in enumerate(messages):
        if message.role == "tool":
            if message.tool_call_id not in waiting:
                raise BadRequest(f"messages[{i}]: a tool message must answer a tool call of "
                                 f"the assistant message before it (tool_call_id "
                                 f"{message.tool_call_id!r})", param=f"messages[{i}].tool_call_id")
            del waiting[message.tool_call_id]
            continue
        if waiting:
            missing = ", ".join(sorted(waiting))
            raise BadRequest(f"messages[{min(waiting.values())}]: an assistant message with "
                             f"tool_calls must be followed by tool messages answering each "
                             f"call (missing: {missing})", param="messages")
        waiting = {c.id: i for c in message.tool_calls}
    if waiting:
        raise BadRequest(f"messages[{min(waiting.values())}]: the assistant's tool calls need "
                         "their tool messages (results) after them", param="messages")


def parse_messages(raw: Any) -> list[ChatMessage]:
    """The messages, checked; the last is the user's or a tool result (then the tool
    steps after the last user message continue its turn)."""
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
        calls = _tool_calls(item.get("tool_calls"), i) if role == "assistant" else ()
        if role != "assistant" and item.get("tool_calls") is not None:
            raise BadRequest(f"messages[{i}].tool_calls: only assistant messages have them",
                             param=f"messages[{i}].tool_calls")
        call_id = item.get("tool_call_id")
        if role == "tool" and (not isinstance(call_id, str) or not call_id):
            raise BadRequest(f"messages[{i}].tool_call_id must be a non-empty string",
                             param=f"messages[{i}].tool_call_id")
        name = item.get("name")
        if name is not None and not isinstance(name, str):
            raise BadRequest(f"messages[{i}].name must be a string", param=f"messages[{i}].name")
        parsed.append(ChatMessage(role, _text(item.get("content"), i),  # type: ignore[arg-type]
                                  tool_calls=calls,
                                  tool_call_id=call_id if role == "tool" else None))
    if parsed[-1].role not in ("user", "tool"):
        raise BadRequest("the last message must have role 'user' (or 'tool', answering the "
                         "assistant's tool calls)", param="messages")
    if not any(m.role == "user" for m in parsed):
        raise BadRequest("the messages need a user message", param="messages")
    _check_steps(parsed)
    return parsed


def parse_tools(body: dict[str, Any]) -> tuple[tuple[dict[str, Any], ...], Any, bool | None]:
    """``(tools, tool_choice, parallel_tool_calls)`` in OpenAI's shapes, checked."""
    raw = body.get("tools")
    if raw is not None and not isinstance(raw, list):
        raise BadRequest("tools must be a list", param="tools")
    tools = []
    names = set()
    for i, tool in enumerate(raw or ()):
        where = f"tools[{i}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type") != "function":
            raise BadRequest(f"{where} must be {{\"type\": \"function\", \"function\": "
                             f"{{\"name\", \"description\", \"parameters\"}}}}", param=where)
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise BadRequest(f"{where}.function.name must be 1 to 64 letters, digits, _ or -",
                             param=f"{where}.function.name")
        if name in names:
            raise BadRequest(f"{where}.function.name {name!r} is given twice",
                             param=f"{where}.function.name")
        names.add(name)
        if not isinstance(function.get("description", ""), str):
            raise BadRequest(f"{where}.function.description must be a string",
                             param=f"{where}.function.description")
        if not isinstance(function.get("parameters", {}), dict):
            raise BadRequest(f"{where}.function.parameters must be a JSON Schema object",
                             param=f"{where}.function.parameters")
        if not isinstance(function.get("strict", False), bool | None):
            raise BadRequest(f"{where}.function.strict must be true or false",
                             param=f"{where}.function.strict")
        tools.append(tool)
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise BadRequest("tool_choice must be none, auto, required or "
                             "{\"type\": \"function\", \"function\": {\"name\": ...}}",
                             param="tool_choice")
        if choice == "required" and not tools:
            raise BadRequest("tool_choice required needs tools", param="tool_choice")
    elif choice is not None:
        function = choice.get("function") if isinstance(choice, dict) else None
        if not isinstance(function, dict) or choice.get("type") != "function" \
                or function.get("name") not in names:
            raise BadRequest("tool_choice must name one of the tools: {\"type\": "
                             "\"function\", \"function\": {\"name\": ...}}",
                             param="tool_choice")
    parallel = _of_type(body, "parallel_tool_calls", bool, "true or false")
    return tuple(tools), choice if tools else None, parallel if tools else None


def parse_response_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """OpenAI's ``response_format``, checked; ``None`` for text."""
    value = _of_type(body, "response_format", dict, "an object")
    if value is None or value.get("type") == "text":
        return None
    kind = value.get("type")
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) \
                or not isinstance(spec.get("schema", {}), dict):
            raise BadRequest("response_format.json_schema must be {\"name\": str, "
                             "\"schema\": {...}}", param="response_format")
        return {"type": "json_schema", "json_schema": spec}
    raise BadRequest("response_format.type must be text, json_object or json_schema",
                     param="response_format")


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
    "reasoning_effort": (str, "a string"),
    "prompt_cache_key": (str, "a string"),
    "safety_identifier": (str, "a string"),
    "top_logprobs": (int, "an integer"),
}
UNSUPPORTED = ("functions", "audio", "prediction", "web_search_options")
KNOWN = {
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "n", "stop", "metadata", "presence_penalty", "frequency_penalty",
    "logit_bias", "logprobs", "response_format", "tool_choice", "function_call", "modalities",
    "tools", "parallel_tool_calls",
    *IGNORED, *UNSUPPORTED,
}


def check_fields(body: dict[str, Any]) -> None:
    """400 for unknown fields, wrongly typed ignored ones and features mami does not
    have (logprobs, audio, the legacy ``functions``), each naming the field."""
    refuse_unknown(body, KNOWN)
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
    if body.get("function_call") not in (None, "none", "auto"):
        raise BadRequest("function_call (legacy) is not supported: use tools and tool_choice",
                         param="function_call")
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
    tools, tool_choice, parallel = parse_tools(body)
    return GenerationParams(
        max_tokens=max_tokens or default_max_tokens,
        temperature=_number(body, "temperature", 0.7, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        stop=tuple(s for s in stop or () if s),  # an empty stop string would end every reply
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        response_format=parse_response_format(body),
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
    refuse_unknown(options, ("include_usage", "include_obfuscation"), "stream_options.")
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
        if params.tools or messages[-1].role == "tool":
            raise BadRequest("tools sent by the client need a stateless request (no "
                             "conversation id): the client keeps the history of its tool calls",
                             param="tools" if params.tools else "messages")
        return ChatRequest(
            messages[-1].content,
            conversation_id=None if conversation == "new" else conversation,
            client_message_id=client_id,
            **common,
        )
    system = [m.content for m in messages if m.role == "system"]
    rest = [m for m in messages if m.role != "system"]
    last_user = max(i for i, m in enumerate(rest) if m.role == "user")
    return ChatRequest(
        rest[last_user].content,
        history=rest[:last_user],
        system_prompt="\n\n".join(system) if system else None,
        tail=rest[last_user + 1:],
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


async def _drain(items: AsyncIterator[Any]) -> None:
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
                               _credential_check(runtime, principal), _extensions(turn)),
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
                "message": _message(finished),
                "finish_reason": finished.finish_reason or "stop",
                "logprobs": None,
            }],
            "usage": finished.usage.as_dict(),
            **_extensions(turn),
        },
        headers=_conversation(turn),
        background=background,
    )


def _message(finished: Finished) -> dict[str, Any]:
    """The completion's message; with tool calls, OpenAI's shape (content null when the
    model wrote none)."""
    if not finished.tool_calls:
        return {"role": "assistant", "content": finished.text}
    return {"role": "assistant", "content": finished.text or None,
            "tool_calls": [{"id": c.id, "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments}}
                           for c in finished.tool_calls]}


def _fragment(fragment: ToolCallDelta) -> dict[str, Any]:
    """A streamed tool-call fragment in OpenAI's chunk shape: the first of a call
    carries its id, type and name."""
    function: dict[str, Any] = {"arguments": fragment.arguments}
    out: dict[str, Any] = {"index": fragment.index}
    if fragment.id is not None:
        out.update(id=fragment.id, type="function")
    if fragment.name is not None:
        function = {"name": fragment.name, **function}
    out["function"] = function
    return out


def _conversation(turn: TurnRun) -> dict[str, str]:
    """The conversation header of a stored turn whose rows were written."""
    if turn.conversation_id is None or turn.unsaved:
        return {}
    return {CONVERSATION_HEADER: turn.conversation_id}


def _extensions(turn: TurnRun) -> dict[str, Any]:
    """The extension fields: ``mami_sources`` when the reply used document passages,
    ``mami_warnings`` when it had to do without the documents or the memories."""
    fields: dict[str, Any] = {}
    if turn.sources:
        fields["mami_sources"] = turn.sources
    if turn.warnings:
        fields["mami_warnings"] = list(turn.warnings)
    return fields


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
    items: AsyncIterator[Any], first: Any,
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
        pending: list[Any] = [first]
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
            if isinstance(item, ToolCallDelta):
                yield _chunk(meta, {"tool_calls": [_fragment(item)]})
                continue
            if not isinstance(item, Finished):  # a server-side tool step
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
