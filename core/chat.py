"""The chat pipeline shared by the OpenAI-compatible API, the WebSocket and ``mami chat``.

:func:`start_turn` takes the owner from the :class:`~core.protocols.Principal`, loads or
creates the conversation, handles a retried ``client_message_id``, builds the context
inside the token budget (:mod:`core.context`) and, in one transaction, stores the user
message together with a ``streaming`` placeholder for the answer (while the model reads
the prompt, unless a client message id asks for the write first). :meth:`TurnRun.run`
streams the reply and stores it once with status ``complete``, ``interrupted`` or
``error``; for ``complete`` it then fires ``message_completed`` exactly once.

Idempotency: the same ``client_message_id`` in a conversation never creates a second
message. A retry of a completed turn replays the stored answer (no generation, no
event); a retry of an interrupted or failed turn generates that same answer again; a
retry while the first attempt still streams is a 409. Without a conversation id, the
conversation id is derived from the owner and the client message id, so a retry that
never learned the id lands in the same conversation.

Tools: when the model asks for tools of ``runtime.tools`` (server-side tools), the turn
runs them, concurrently when several are asked for at once, and asks the model again
with their results, until it answers without calling tools. At most ``[core]
max_tool_steps`` steps may run tools, within ``[core] tool_deadline`` seconds from the
first one; then the model is asked once more without tools and must answer (a tool
still running at the deadline gets an error result). The steps (each assistant message
with calls, then all their results) are stored with the answer, in its transaction and
before it in the conversation, also when the turn ends interrupted or failed (a write
per step cost more than the rest of a step together, see bench/chat_overhead.py);
:meth:`TurnRun.run`
yields each :class:`~core.protocols.ToolCall` when it starts and each
:class:`~core.tools.ToolResult` when it ends. Tools a client sends itself
(``params.tools``, the OpenAI API) are not run: the model's calls end the turn with
finish reason ``tool_calls``, and their fragments are yielded as
:class:`~core.protocols.ToolCallDelta` items. A model without ``supports("tools")`` is
offered no server-side tools, and a request with client tools, tool messages or a
``response_format`` it does not support is a 400 naming the parameter.

Crash consistency: while an answer streams, its text so far is saved to its row at most
every :data:`FLUSH_INTERVAL` seconds (only when it changed) and the row's lease
(:mod:`core.leases`) is renewed at least every :data:`HEARTBEAT` seconds. An answer
left ``streaming`` by a process that died (its lease expired, or its process on this
host is gone) is finished as ``interrupted`` with the saved text, at start-up
(:func:`finish_abandoned`), every lease period in a running server
(:func:`keep_finishing_abandoned`) and when its client message id is retried (the
retry then answers again, replacing it). When the final write of an answer fails, the turn ends
with an ``error`` (503) instead of breaking off.

Transactions: a stored turn's reads and writes are prebuilt SQLAlchemy Core statements
run with :meth:`core.db.Database.run` (on a SQLite file, one thread hop per
transaction). A turn in a new conversation is two transactions (the user message with
the placeholder; the answer with its tool steps), a later turn four (its settings and its
history are read first), plus one per partial save.

Slash commands (``/name argument``), registered per runtime by plugins'
``register_chat_commands`` hooks (:class:`ChatCommand`), are answered by their handler
instead of the LLM (:func:`find_command` is the seam).

Sources: the document passages a reply was given are its sources (:func:`source_of`,
numbered as in the prompt); :attr:`TurnRun.sources` has them before the first token,
and they are stored with the answer (``messages.sources``).

Warnings: when the retriever or the memory store fails, the turn is answered without
passages or memories, and :attr:`TurnRun.warnings` says so before the first token
(``"documents unavailable: <reason>"``, ``"memories unavailable: <reason>"``, the
reason without URL secrets), so every client can show that the answer ignored them.
They are not stored: a replayed answer has none.

A provider may define ``async load()``; it is awaited before the provider's tokenizer
or window is used, so a lazily loaded model never blocks the event loop. Token counting
(``count_tokens``, which may be slow or block on a tokenizer) runs in worker threads,
bounded by :func:`core.context.bounded_count`, so a multi-megabyte message is refused
with a 413 without holding the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, delete, insert, update
from sqlalchemy import select as core_select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import col, select

from core.context import (
    CHARS_PER_TOKEN,
    Context,
    Turn,
    build_context,
    check_user_fits,
    summary_prompt,
    turns_from_messages,
)
from core.errors import (
    BadRequest,
    DatabaseUnavailable,
    MamiError,
    NotFound,
    ProviderError,
    StreamInterrupted,
    hide_url_secrets,
)
from core.events import MessageCompleted
from core.leases import expired, holder_gone, new_holder
from core.models import Conversation, Message, Owner, trusted, utcnow
from core.protocols import (
    ChatMessage,
    Delta,
    GenerationParams,
    LLMProvider,
    Passage,
    Principal,
    ToolCall,
    ToolCallDelta,
)

if TYPE_CHECKING:
    from core.runtime import Runtime
    from core.tools import ToolResult

log = logging.getLogger("mami.chat")

HISTORY_LIMIT = 200
STALE_STREAM = timedelta(minutes=10)  # for rows written before leases existed
FLUSH_INTERVAL = 0.5
"""Seconds between saves of a streaming answer's text (only when it changed)."""
HEARTBEAT = 10.0
"""Seconds after which a streaming answer's lease is renewed even without new text."""
LEASE = timedelta(seconds=30)
"""How long a streaming answer's row stays claimed without a renewal."""
ID_NAMESPACE = uuid.UUID("6f1e3a52-6d61-4d69-8a11-636861747631")

CommandHandler = Callable[["Runtime", Principal, str, str | None], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class ChatCommand:
    """A slash command, registered by a plugin's ``register_chat_commands`` hook.

    A message that starts with ``/<name>`` is answered with ``await handler(runtime,
    principal, argument, conversation_id)`` instead of the LLM (``conversation_id`` is
    ``None`` for stateless turns; otherwise the conversation is committed by then). The
    returned text is stored as the assistant message; ``message_completed`` is not fired
    for command replies. ``help`` is one line shown to users."""

    name: str
    handler: CommandHandler
    help: str = ""


def find_command(runtime: Runtime, content: str) -> tuple[CommandHandler, str] | None:
    """The handler and argument for a slash command registered with this runtime,
    else ``None``."""
    if not content.startswith("/"):
        return None
    name, _, argument = content[1:].partition(" ")
    command = runtime.chat_commands.get(name)
    return (command.handler, argument.strip()) if command else None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One user message. ``history`` given means stateless (OpenAI-style: the client
    sends the earlier messages, nothing is stored); otherwise the conversation is
    loaded from and stored in the database."""

    content: str
    conversation_id: str | None = None
    client_message_id: str | None = None
    history: Sequence[ChatMessage] | None = None
    system_prompt: str | None = None
    model: str | None = None
    params: GenerationParams | None = None  # None: sampling defaults, [budget] reply_tokens
    tail: Sequence[ChatMessage] = ()
    """Stateless only: the tool steps after ``content`` (an assistant's tool calls and
    their results, as an OpenAI client sends them back), kept whole in the prompt."""
    replace_from: str | None = None
    """The id of a user message of this conversation: it and every later message are
    deleted, and ``content`` is stored in its place and answered (edit and resend; the
    same text regenerates the last reply). The conversation is truncated, not branched."""


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclass(frozen=True, slots=True)
class Finished:
    """The last item of :meth:`Turn.run`: the answer as stored."""

    status: str  # complete, interrupted, error
    message_id: str | None
    text: str
    usage: Usage
    finish_reason: str | None = None
    error: str | None = None
    error_code: int | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    """The calls of client-side tools the model asked for (finish reason ``tool_calls``)."""


def supports(provider: Any, feature: str) -> bool:
    """Whether an LLM provider handles ``feature`` (``"tools"``, ``"response_format"``):
    its optional ``supports`` method says so; without it, no."""
    check = getattr(provider, "supports", None)
    return bool(check(feature)) if check is not None else False


def check_supported(llm: LLMProvider, request: ChatRequest) -> None:
    """400 naming the parameter when ``request`` needs what the model does not support."""
    params = request.params or GenerationParams()
    steps = any(m.role == "tool" or m.tool_calls
                for m in (*(request.history or ()), *request.tail))
    if (params.tools or steps) and not supports(llm, "tools"):
        raise BadRequest(f"model {llm.name} does not support tools",
                         param="tools" if params.tools else "messages",
                         code="unsupported_parameter")
    if params.response_format is not None and not supports(llm, "response_format"):
        raise BadRequest(f"model {llm.name} does not support response_format",
                         param="response_format", code="unsupported_parameter")


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


@dataclass
class CallAssembler:
    """Joins streamed tool-call fragments into calls. Fragments pass through
    :meth:`add`, which fills in an id (``call_...``) where the model gave none, so the
    fragments a client sees and the assembled calls agree."""

    ids: dict[int, str] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    arguments: dict[int, list[str]] = field(default_factory=dict)

    def add(self, fragment: ToolCallDelta) -> ToolCallDelta:
        index = fragment.index
        first = index not in self.ids
        if first:
            # An id the model left out or gave twice would pair a result with two calls.
            taken = fragment.id in self.ids.values()
            self.ids[index] = fragment.id if fragment.id and not taken else new_call_id()
            self.arguments[index] = []
        name = None
        if fragment.name and index not in self.names:
            self.names[index] = name = fragment.name
        self.arguments[index].append(fragment.arguments)
        return ToolCallDelta(index, self.ids[index] if first else None, name,
                             fragment.arguments)

    def calls(self) -> tuple[ToolCall, ...]:
        return tuple(ToolCall(self.ids[i], self.names.get(i, ""),
                              "".join(self.arguments[i]) or "{}")
                     for i in sorted(self.ids))


def source_of(n: int, passage: Passage) -> dict[str, Any]:
    """A ``Source``: passage ``n`` (1-based, as numbered in the prompt) of a reply."""
    return {"n": n, "document_id": passage.document_id, "source": passage.source,
            "chunk_index": passage.chunk_index, "page": passage.page,
            "score": round(float(passage.score), 4), "text": passage.text}


def resolve_llm(runtime: Runtime, model: str | None) -> LLMProvider:
    """The provider named ``model`` (404 if unknown), else the active one (503 if none)."""
    if model:
        provider = runtime.providers["llm"].get(model)
        if provider is None:
            known = ", ".join(runtime.providers["llm"]) or "none"
            raise NotFound(f"model {model!r} not found (available: {known})", param="model",
                           code="model_not_found")
        return provider  # type: ignore[no-any-return]
    return runtime.require("llm")  # type: ignore[no-any-return]


async def ready(provider: Any) -> None:
    load = getattr(provider, "load", None)
    if load is not None:
        await load()


def _added(total: Delta | None, delta: Delta) -> Delta:
    """Usage figures summed over the model calls of a turn (one per tool step)."""
    if total is None:
        return delta
    return Delta("", delta.finish_reason,
                 (total.prompt_tokens or 0) + (delta.prompt_tokens or 0)
                 if total.prompt_tokens is not None or delta.prompt_tokens is not None else None,
                 (total.completion_tokens or 0) + (delta.completion_tokens or 0))


def _gen(deltas: AsyncIterator[Delta]) -> AsyncGenerator[Delta, None]:
    """Providers' ``stream`` methods are async generators; this says so to the type checker
    (they must be closed promptly: the local model is held until then)."""
    return deltas  # type: ignore[return-value]


class Conflict(MamiError):
    status_code = 409


# A turn's statements are built once and run with Database.run (one transaction, on
# SQLite one thread hop): building them, flushing ORM objects and aiosqlite's hop per
# DBAPI call cost more than the statements themselves. Values come as bound parameters;
# an UPDATE without values() sets the columns its parameters name.
_messages = Message.__table__  # type: ignore[attr-defined]
_conversations = Conversation.__table__  # type: ignore[attr-defined]
_owners = Owner.__table__  # type: ignore[attr-defined]
_MESSAGE_COLUMNS = {c.name: None for c in _messages.columns}
_INSERT_MESSAGES = insert(_messages)
_INSERT_CONVERSATION = insert(_conversations)
_INSERT_OWNER = insert(_owners)
_OWNER_KNOWN = core_select(_owners.c.id).where(_owners.c.id == bindparam("owner"))
_TOUCH = update(_conversations).where(_conversations.c.id == bindparam("conversation"))
_TRUNCATE = delete(_messages).where(_messages.c.conversation_id == bindparam("conversation"),
                                    _messages.c.seq >= bindparam("from_seq"))
_SUMMARY_CUT = update(_conversations).where(
    _conversations.c.id == bindparam("conversation"),
    _conversations.c.summary_upto >= bindparam("from_seq")).values(summary="", summary_upto=0)
_RECLAIM = update(_messages).where(_messages.c.id == bindparam("answer"),
                                   _messages.c.status == bindparam("was"))
_HELD = update(_messages).where(_messages.c.id == bindparam("answer"),
                                _messages.c.lease_owner == bindparam("holder"))
_SAVE_PARTIAL = update(_messages).where(_messages.c.id == bindparam("answer"),
                                        _messages.c.status == "streaming",
                                        _messages.c.lease_owner == bindparam("holder"))
_LAST_SEQ = (core_select(_messages.c.seq)
             .where(_messages.c.conversation_id == bindparam("conversation"))
             .order_by(_messages.c.seq.desc()).limit(1))

_CONVERSATION = core_select(_conversations).where(
    _conversations.c.id == bindparam("conversation"))
_MESSAGE = core_select(_messages).where(_messages.c.id == bindparam("message"))
_BY_CLIENT_ID = core_select(_messages).where(
    _messages.c.conversation_id == bindparam("conversation"),
    _messages.c.client_message_id == bindparam("client_id"))
_ANSWER_TO = core_select(_messages).where(_messages.c.reply_to == bindparam("message"))
_STREAMING_FROM = core_select(_messages).where(
    _messages.c.conversation_id == bindparam("conversation"),
    _messages.c.seq >= bindparam("from_seq"), _messages.c.status == "streaming")
_RECENT = (core_select(_messages)
           .where(_messages.c.conversation_id == bindparam("conversation"),
                  _messages.c.seq > bindparam("after"))
           .order_by(_messages.c.seq.desc()).limit(HISTORY_LIMIT))
_RECENT_BEFORE = _RECENT.where(_messages.c.seq < bindparam("before"))


def _message_row(**values: Any) -> dict[str, Any]:
    """The parameters of a message INSERT: every column (as the ORM would write them),
    ``values`` over the model's defaults."""
    row = {**_MESSAGE_COLUMNS, "status": "complete", **values}
    if row["created_at"] is None:
        row["created_at"] = utcnow()
    return row


class TurnRun:
    """A reply being produced. Iterate :meth:`run` to the end."""

    def __init__(
        self,
        runtime: Runtime,
        principal: Principal,
        request: ChatRequest,
        llm: LLMProvider,
        context: Context | None,
        command: tuple[CommandHandler, str] | None = None,
    ) -> None:
        self.runtime = runtime
        self.principal = principal
        self.request = request
        self.llm = llm
        self.context = context
        self.command = command
        self.conversation_id: str | None = None
        self.user_message_id: str | None = None
        self.message_id: str | None = None
        self.replay: Finished | None = None
        self.finished: Finished | None = None
        self.summary_from: tuple[str, int] | None = None  # (summary so far, its upto)
        self.store: asyncio.Future[None] | None = None
        self.context_inputs: dict[str, Any] = {}  # build_context's arguments, for tool steps
        self.tool_steps = 0
        self.plan: StorePlan | None = None
        self.steps: list[tuple[str, tuple[ToolCall, ...], list[ToolResult]]] = []
        self.lease = new_holder()
        self._flusher: asyncio.Future[None] | None = None
        self._flushed = asyncio.Event()  # set: stop saving partial text
        self.replay_sources: list[dict[str, Any]] | None = None
        self.warnings: list[str] = []
        """What the answer had to do without (see the module docstring); [] when nothing."""

    @property
    def sources(self) -> list[dict[str, Any]]:
        """The reply's sources: the passages in its prompt ([] when none was used)."""
        if self.replay_sources is not None:
            return self.replay_sources
        return [dict(s) for s in self.context.sources] if self.context is not None else []

    async def saved(self) -> None:
        """Wait until the user message and the placeholder are committed; raises the
        :class:`MamiError` (409) when they could not be, and then nothing was stored."""
        if self.store is not None:
            await asyncio.shield(self.store)

    @property
    def stored(self) -> bool:
        return self.message_id is not None

    @property
    def unsaved(self) -> bool:
        """True when writing the turn's rows failed."""
        store = self.store
        return (store is not None and store.done() and not store.cancelled()
                and store.exception() is not None)

    async def run(self) -> AsyncIterator[str | ToolCall | ToolResult | ToolCallDelta | Finished]:
        """Yield the reply's text pieces, then one :class:`Finished` once the answer is
        stored; after that (when iteration continues) ``message_completed`` fires.
        Cancelling or closing the iteration stores what arrived as ``interrupted``.

        Between the text pieces come a server-side tool step's :class:`ToolCall` items
        (when they start) and ``ToolResult`` items (as each ends); with client-side
        tools, the fragments of the calls the model asks for (:class:`ToolCallDelta`,
        ids filled in), which :attr:`Finished.tool_calls` then holds whole."""
        if self.replay is not None:
            self.finished = self.replay
            if self.replay.text:
                yield self.replay.text
            yield self.replay
            return
        parts: list[str] = []
        status, error, code, finish = "error", None, None, None
        reported: Delta | None = None
        calls = CallAssembler()
        try:
            if self.request.client_message_id is not None:
                # The write is the idempotency gate: a duplicate must not reach the model.
                await self.saved()
            if self.message_id is not None:
                self._flusher = asyncio.ensure_future(self._keep_saved(parts))
            async with contextlib.aclosing(self._generate()) as generated:
                async for delta in generated:
                    if not isinstance(delta, Delta):  # a server-side tool step
                        if isinstance(delta, ToolCall):
                            parts = []  # that text was the step's, stored with it
                        yield delta
                        continue
                    piece = delta.text
                    finish = delta.finish_reason or finish
                    if delta.completion_tokens is not None:
                        reported = _added(reported, delta)
                    if piece:
                        if not parts:
                            await self.saved()
                        parts.append(piece)
                        yield piece
                    for fragment in delta.tool_calls:
                        yield calls.add(fragment)
            status = "complete"
        except MamiError as exc:
            if self.unsaved:
                raise  # the rows could not be written: nothing to store the answer in
            status = "interrupted" if parts or self.tool_steps or isinstance(
                exc, StreamInterrupted) else "error"
            error, code = exc.message, exc.status_code
        except (asyncio.CancelledError, GeneratorExit):
            await asyncio.shield(self._finish("interrupted", parts, "cancelled", None, None,
                                              reported))
            raise
        except Exception as exc:
            log.exception("reply failed")
            status = "interrupted" if parts else "error"
            error, code = hide_url_secrets(f"{type(exc).__name__}: {exc}"), 500
        finished = await asyncio.shield(self._finish(status, parts, error, code, finish,
                                                     reported, calls.calls()))
        after = None
        if finished.status == "complete" and self.stored and self.command is None:
            # Started before the answer is handed over, so a client that leaves now cannot
            # cancel the event; awaited below, so on Lambda it still runs in the request.
            after = asyncio.ensure_future(self._after_complete(finished))
        yield finished
        if after is not None:
            await asyncio.shield(after)

    async def _generate(self) -> AsyncGenerator[Delta | ToolCall | ToolResult, None]:
        if self.command is not None:
            handler, argument = self.command
            await self.saved()  # a failed write must not leave the command's effects behind
            yield Delta(await handler(self.runtime, self.principal, argument,
                                      self.conversation_id), "stop")
            return
        assert self.context is not None
        params = self.request.params or GenerationParams(
            max_tokens=self.runtime.config.budget.reply_tokens)
        server_tools = [] if params.tools else self._server_tools()
        core = self.runtime.config.core
        deadline: float | None = None
        while True:
            offer = bool(server_tools) and self.tool_steps < core.max_tool_steps and (
                deadline is None or time.monotonic() < deadline)
            step = replace(params, max_tokens=min(params.max_tokens, self.context.reply_tokens))
            if offer:
                step = replace(step, tools=tuple(server_tools))
            assembler = CallAssembler() if offer else None
            text: list[str] = []
            deltas = _gen(self.llm.stream(self.context.messages, step))
            async with contextlib.aclosing(deltas):
                async for delta in deltas:
                    if assembler is None:
                        if not params.tools and (delta.tool_calls
                                                 or delta.finish_reason == "tool_calls"):
                            # Calls of tools not offered (the last step): not a result.
                            delta = replace(delta, tool_calls=(), finish_reason=(
                                "stop" if delta.finish_reason == "tool_calls"
                                else delta.finish_reason))
                        yield delta
                        continue
                    for fragment in delta.tool_calls:
                        assembler.add(fragment)
                    text.append(delta.text)
                    yield replace(delta, tool_calls=())
            calls = assembler.calls() if assembler is not None else ()
            if not calls:
                return
            if deadline is None:
                deadline = time.monotonic() + core.tool_deadline
            for call in calls:
                yield call
            results: dict[str, ToolResult] = {}
            async for result in self._run_tools(calls, deadline):
                results[result.tool_call_id] = result
                yield result
            ordered = [results[c.id] for c in calls]
            self.tool_steps += 1
            self.steps.append(("".join(text), calls, ordered))
            tail = [*self.context_inputs.get("tail", ()),
                    ChatMessage("assistant", "".join(text), tool_calls=calls),
                    *(ChatMessage("tool", r.content, tool_call_id=r.tool_call_id)
                      for r in ordered)]
            self.context_inputs["tail"] = tail
            sources = self.context.sources
            self.context = dataclasses.replace(
                await asyncio.to_thread(build_context, **self.context_inputs), sources=sources)

    def _server_tools(self) -> list[dict[str, Any]]:
        """The OpenAI tool entries of the runtime's tools this owner may use, when the
        model can call tools."""
        tools = getattr(self.runtime, "tools", None)
        if tools is None or self.runtime.config.core.max_tool_steps <= 0 \
                or not supports(self.llm, "tools"):
            return []
        return list(tools.specs(self.principal.owner))

    async def _run_tools(self, calls: Sequence[ToolCall], deadline: float
                         ) -> AsyncIterator[ToolResult]:
        """Run the calls concurrently, yielding each result as it ends. A call still
        running at ``deadline`` is cancelled and gets an error result; so does one whose
        tool box raised (it should not)."""
        from core.tools import ToolResult

        tools = self.runtime.tools
        owner = self.principal.owner

        async def one(call: ToolCall) -> ToolResult:
            started = time.perf_counter()
            try:
                async with asyncio.timeout_at(asyncio.get_running_loop().time()
                                              + deadline - time.monotonic()):
                    return await tools.call(call, owner=owner)
            except TimeoutError:
                message = (f"the turn's tool deadline ({self.runtime.config.core.tool_deadline:g}"
                           " s) passed before the tool ended")
            except Exception as exc:
                log.exception("tool %s failed outside its tool box", call.name)
                message = f"{type(exc).__name__}: {exc}"
            return ToolResult(call.id, call.name, json.dumps({"error": message}), True,
                              time.perf_counter() - started)

        tasks = [asyncio.ensure_future(one(call)) for call in calls]
        try:
            for next_done in asyncio.as_completed(tasks):
                yield await next_done
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _step_rows(self, where: int) -> list[dict[str, Any]]:
        """The rows of the turn's tool steps, from seq ``where`` on (INSERT parameters)."""
        assert self.conversation_id is not None
        rows: list[dict[str, Any]] = []
        for text, calls, results in self.steps:
            rows.append(_message_row(
                id=uuid.uuid4().hex, conversation_id=self.conversation_id,
                seq=where + len(rows), role="assistant", content=text,
                tool_calls=[{"id": c.id, "name": c.name, "arguments": c.arguments}
                            for c in calls]))
            rows.extend([_message_row(
                id=uuid.uuid4().hex, conversation_id=self.conversation_id,
                seq=where + len(rows) + i, role="tool", content=result.content,
                status="error" if result.is_error else "complete",
                tool_call_id=result.tool_call_id, tool_name=result.name,
                duration=result.duration) for i, result in enumerate(results)])
        return rows

    async def _keep_saved(self, parts: list[str]) -> None:
        """Save the answer's text so far and renew its lease until :meth:`_finish`;
        a failed save is logged and tried again at the next interval."""
        try:
            await self.saved()
        except Exception:
            return
        saved, renewed = 0, time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flushed.wait(), FLUSH_INTERVAL)
            if self._flushed.is_set():
                return
            count = len(parts)
            if count == saved and time.monotonic() - renewed < HEARTBEAT:
                continue
            params = {"answer": self.message_id, "holder": self.lease,
                      "content": "".join(parts[:count]), "lease_until": utcnow() + LEASE}
            try:
                await self.runtime.db.execute(_SAVE_PARTIAL, params)
                saved, renewed = count, time.monotonic()
            except (SQLAlchemyError, DatabaseUnavailable) as exc:
                log.warning("saving the partial answer %s failed: %s", self.message_id, exc)

    async def _stop_saving(self) -> None:
        self._flushed.set()
        if self._flusher is not None:
            await self._flusher

    async def _finish(
        self, status: str, parts: list[str], error: str | None, code: int | None,
        finish: str | None, reported: Delta | None = None, calls: tuple[ToolCall, ...] = (),
    ) -> Finished:
        await self._stop_saving()
        text = "".join(parts)
        if reported is not None and reported.completion_tokens is not None:
            usage = Usage(reported.prompt_tokens if reported.prompt_tokens is not None
                          else self.context.prompt_tokens if self.context else 0,
                          reported.completion_tokens)
        else:
            usage = Usage(self.context.prompt_tokens if self.context else 0,
                          await asyncio.to_thread(self.llm.count_tokens, text) if text else 0)
        if self.message_id is not None:
            await self.saved()
            try:
                if not await self._store_answer(text, status, error, usage, calls):
                    log.warning("answer %s was taken over by a retry; this one is dropped",
                                self.message_id)
                    status, error, code = "error", "a retry took over this answer", 409
            except SQLAlchemyError as exc:
                log.error("storing the answer %s failed: %s", self.message_id, exc)
                status, code = "error", 503
                error = "the answer could not be stored; retry"
        if calls and status == "complete":
            finish = "tool_calls"
        self.finished = Finished(status, self.message_id, text, usage, finish, error, code,
                                 calls)
        return self.finished

    async def _store_answer(self, text: str, status: str, error: str | None, usage: Usage,
                            calls: tuple[ToolCall, ...]) -> bool:
        """Store the answer and, in the same transaction, the turn's tool steps (each
        call with all its results) where the answer's row was, the answer after them.
        When another turn has taken those places meanwhile, the steps and the answer go
        after the conversation's last row. False (nothing written) when the row's lease
        is no longer this turn's: a retry took the answer over."""
        assert self.plan is not None or not self.steps
        stored_calls = [{"id": c.id, "name": c.name, "arguments": c.arguments}
                        for c in calls] or None
        values: dict[str, Any] = dict(content=text, status=status, error=error,
                                      token_count=usage.completion_tokens,
                                      tool_calls=stored_calls, lease_until=None,
                                      sources=self.sources or None)
        values.update(answer=self.message_id, holder=self.lease)

        def work(conn: Connection, attempt: int) -> bool:
            rows: list[dict[str, Any]] = []
            if self.steps:
                assert self.plan is not None
                where = (self.plan.reply_seq if self.plan.reply_seq is not None
                         else self.plan.user_seq + 1)
                if attempt:
                    where = 1 + (conn.execute(
                        _LAST_SEQ, {"conversation": self.conversation_id}).scalar() or 0)
                rows = self._step_rows(where)
                values["seq"] = where + len(rows)
            if conn.execute(_HELD, values).rowcount != 1:
                return False  # nothing was written in this transaction
            if rows:
                conn.execute(_INSERT_MESSAGES, rows)
            return True

        for attempt in range(3):
            try:
                return await self.runtime.db.run(functools.partial(work, attempt=attempt))
            except IntegrityError:
                if not self.steps or attempt == 2:
                    raise
        return False  # not reached: the last attempt returns or raises

    async def _after_complete(self, finished: Finished) -> None:
        assert self.conversation_id and self.user_message_id and finished.message_id
        await self.runtime.message_completed(
            MessageCompleted(
                owner=self.principal.owner,
                conversation_id=self.conversation_id,
                message_id=finished.message_id,
                user_message_id=self.user_message_id,
                user_text=self.request.content,
                assistant_text=finished.text,
            ),
        )
        if self.context is not None and self.context.dropped and self.summary_from is not None:
            await self._extend_summary()

    async def _extend_summary(self) -> None:
        """Fold the turns dropped from this context into the conversation's summary."""
        assert self.context is not None and self.summary_from is not None
        summary, upto = self.summary_from
        new = [t for t in self.context.dropped if t.last_seq > upto]
        if not new:
            return
        budget = self.runtime.config.budget
        words = max(20, budget.summary_tokens * 2 // 3)
        params = GenerationParams(max_tokens=budget.summary_tokens, temperature=0.2)
        pieces: list[str] = []
        try:
            prompt = summary_prompt(summary, new, words)
            async with contextlib.aclosing(_gen(self.llm.stream(prompt, params))) as deltas:
                async for delta in deltas:
                    pieces.append(delta.text)
        except ProviderError as exc:
            log.warning("summary of conversation %s failed: %s", self.conversation_id, exc)
            return
        async with self.runtime.db.session() as session:
            await session.execute(
                update(Conversation)
                .where(col(Conversation.id) == self.conversation_id)
                .where(col(Conversation.summary_upto) == upto)
                .values(summary="".join(pieces).strip(), summary_upto=new[-1].last_seq)
            )
            await session.commit()


async def start_turn(runtime: Runtime, principal: Principal, request: ChatRequest) -> TurnRun:
    """Prepare a reply to ``request`` for ``principal``: validate, store the user message
    and build the context. Raises BadRequest (400), NotFound (404), Conflict (409),
    PayloadTooLarge (413) or PluginUnavailable (503) before anything is generated; a
    rejected request stores nothing."""
    if not request.content.strip():
        raise BadRequest("the message is empty")
    cid = request.client_message_id
    if cid is not None and not 0 < len(cid) <= 128:
        raise BadRequest("client_message_id must be 1 to 128 characters")
    if request.replace_from is not None and (request.history is not None
                                             or request.conversation_id is None):
        raise BadRequest("replace_from needs a stored conversation (conversation_id)")
    if request.history is None and request.conversation_id is not None:
        request = await _with_settings(runtime, principal.owner, request)
    llm = resolve_llm(runtime, request.model)
    await ready(llm)
    command = find_command(runtime, request.content)
    if command is None and len(request.content) > llm.context_window * CHARS_PER_TOKEN:
        # Refused here, before memories and passages are looked up with the whole text.
        await asyncio.to_thread(
            check_user_fits, system_prompt=_system_prompt(runtime, request),
            user=request.content, count=llm.count_tokens, window=llm.context_window,
            budget=runtime.config.budget)
    if command is None:
        check_supported(llm, request)
    if request.history is not None:
        turn = TurnRun(runtime, principal, request, llm, None, command)
        if command is None:
            turn.context = await _context(turn, turns_from_messages(request.history), "")
        return turn
    return await _stored_turn(runtime, principal, request, llm, command)


async def _with_settings(runtime: Runtime, owner: str, request: ChatRequest) -> ChatRequest:
    """``request`` with the conversation's own model, system prompt and sampling settings
    where the request leaves them open. A stored model that is no longer registered
    falls back to the active provider."""
    conversation: Conversation | None = await runtime.db.run(lambda conn: _one(
        Conversation, conn.execute(_CONVERSATION, {"conversation": request.conversation_id})))
    if conversation is None or conversation.owner_id != owner:
        return request  # _stored_turn answers 404
    model = request.model
    if model is None and conversation.model in runtime.providers["llm"]:
        model = conversation.model
    system_prompt = request.system_prompt
    if system_prompt is None and conversation.system_prompt is not None:
        system_prompt = conversation.system_prompt
    params = request.params
    if params is None and (conversation.temperature is not None
                           or conversation.max_tokens is not None):
        default = GenerationParams()
        params = GenerationParams(
            max_tokens=conversation.max_tokens or runtime.config.budget.reply_tokens,
            temperature=(conversation.temperature if conversation.temperature is not None
                         else default.temperature))
    return dataclasses.replace(request, model=model, system_prompt=system_prompt,
                               params=params)


def title_from(text: str, limit: int = 80) -> str:
    """A conversation title from its first message: whitespace folded, at most ``limit``
    characters, cut at a word boundary with an ellipsis (mid-word only for one long
    word)."""
    words = " ".join(text.split())
    if len(words) <= limit:
        return words
    cut = words[:limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-") + "…"


async def _stored_turn(
    runtime: Runtime, principal: Principal, request: ChatRequest, llm: LLMProvider,
    command: tuple[CommandHandler, str] | None,
) -> TurnRun:
    """Read what the turn needs, build the context, then write in one short transaction
    (no write lock is held while memories and passages are fetched)."""
    owner = principal.owner
    cid = request.client_message_id
    turn = TurnRun(runtime, principal, request, llm, None, command)
    conversation_id = request.conversation_id
    if conversation_id is None and cid is not None:
        conversation_id = str(uuid.uuid5(ID_NAMESPACE, f"{owner}\0{cid}"))
    found = (None, None, None, None, None, []) if conversation_id is None else (
        await runtime.db.run(functools.partial(
            _read_turn, owner=owner, request=request, conversation_id=conversation_id,
            summarize=runtime.config.budget.summarize)))  # a new conversation has nothing
    conversation, retry_of, reply, replaced, summary_state, rows = found
    if retry_of is not None and reply is not None and reply.status == "complete":
        turn.conversation_id = retry_of.conversation_id
        turn.user_message_id, turn.message_id = retry_of.id, reply.id
        turn.replay = Finished("complete", reply.id, reply.content,
                               Usage(0, reply.token_count or 0), "stop")
        turn.replay_sources = list(reply.sources or [])
        return turn
    reclaim = reply.status if reply is not None else None
    if reply is not None and reply.status == "streaming":
        if not abandoned(reply):
            raise Conflict("this message is still being answered; retry when it ends")
        await finish_abandoned(runtime, [reply])
        reclaim = "interrupted"

    summarize = runtime.config.budget.summarize and conversation is not None
    if conversation is not None and summary_state is None:
        summary_state = (conversation.summary, conversation.summary_upto)
    if command is None:
        summary = summary_state[0] if summarize and summary_state is not None else ""
        turn.context = await _context(turn, _turns(rows), summary)
        if summarize and summary_state is not None:
            turn.summary_from = summary_state

    last_seq = rows[-1].seq if rows else (conversation.summary_upto if conversation else 0)
    if replaced is not None:
        last_seq = replaced.seq - 1
    plan = StorePlan(
        owner=owner,
        conversation_id=(conversation.id if conversation else conversation_id
                         or uuid.uuid4().hex),
        new_conversation=conversation is None,
        title=title_from(request.content),
        user_id=retry_of.id if retry_of is not None else uuid.uuid4().hex,
        new_user=retry_of is None,
        content=request.content,
        client_message_id=cid,
        user_seq=retry_of.seq if retry_of is not None else last_seq + 1,
        reply_id=reply.id if reply is not None else uuid.uuid4().hex,
        reclaim_status=reclaim,
        reply_seq=reply.seq if reply is not None else None,
        lease=turn.lease,
        truncate_from=replaced.seq if replaced is not None else None,
    )
    # Without a client message id the rows are written while the model reads the prompt;
    # the turn waits for them before its first token leaves (see TurnRun.run).
    turn.store = asyncio.ensure_future(store(runtime, plan))
    turn.plan = plan
    turn.conversation_id = plan.conversation_id
    turn.user_message_id, turn.message_id = plan.user_id, plan.reply_id
    return turn


@dataclass(slots=True)
class StorePlan:
    """The rows a stored turn writes before its answer: the conversation (if new), the
    user message (unless retried) and the answer's ``streaming`` placeholder (or the
    reclaimed row of an interrupted or failed answer)."""

    owner: str
    conversation_id: str
    new_conversation: bool
    title: str
    user_id: str
    new_user: bool
    content: str
    client_message_id: str | None
    user_seq: int
    reply_id: str
    reclaim_status: str | None
    reply_seq: int | None = None  # the reclaimed answer's; else user_seq + 1
    lease: str = ""
    truncate_from: int | None = None  # replace_from: messages from this seq on go first


def _one(model: Any, result: Any) -> Any:
    """The first row of ``result`` as a ``model`` instance (trusted: our own rows are
    not validated again), or ``None``."""
    row = result.mappings().first()
    return trusted(model, row) if row is not None else None


def _read_turn(conn: Connection, owner: str, request: ChatRequest, conversation_id: str | None,
               summarize: bool) -> tuple[Conversation | None, Message | None, Message | None,
                                         Message | None, tuple[str, int] | None, list[Any]]:
    """What a stored turn reads before its context is built, in one transaction: the
    owner's conversation (404 for another owner's), the retried user message and its
    answer, the message ``replace_from`` names, the summary state when it differs from
    the stored one, and the recent history."""
    retry_of: Message | None = None
    reply: Message | None = None
    replaced: Message | None = None
    summary_state: tuple[str, int] | None = None  # (summary, upto) when not the stored one
    cid = request.client_message_id
    conversation: Conversation | None = _one(Conversation, conn.execute(
        _CONVERSATION, {"conversation": conversation_id})) if conversation_id else None
    if conversation is not None and conversation.owner_id != owner:
        conversation = None
    if conversation is None and request.conversation_id is not None:
        raise NotFound(f"conversation {request.conversation_id} not found")
    if conversation is not None and cid is not None:
        retry_of = _one(Message, conn.execute(
            _BY_CLIENT_ID, {"conversation": conversation.id, "client_id": cid}))
    if retry_of is not None:
        if retry_of.content != request.content:
            raise Conflict(f"client_message_id {cid!r} was already used for another message")
        reply = _one(Message, conn.execute(_ANSWER_TO, {"message": retry_of.id}))
    if retry_of is None and request.replace_from is not None:
        replaced = _replaceable(conn, conversation, request.replace_from)
    rows: list[Any] = []
    if conversation is not None and not (reply is not None and reply.status == "complete"):
        upto = conversation.summary_upto if summarize else 0
        before = retry_of.seq if retry_of is not None else None
        if replaced is not None:
            before = replaced.seq
            if conversation.summary_upto >= replaced.seq:  # the summary covers cut turns
                summary_state, upto = ("", 0), 0
        rows = _recent(conn, conversation.id, upto, before)
    return conversation, retry_of, reply, replaced, summary_state, rows


def _replaceable(conn: Connection, conversation: Conversation | None, message_id: str
                 ) -> Message:
    """The user message a ``replace_from`` names; 404 unless it is a user message of this
    conversation, 409 while a reply after it is still being written."""
    message: Message | None = _one(Message, conn.execute(_MESSAGE, {"message": message_id}))
    if (conversation is None or message is None or message.conversation_id != conversation.id
            or message.role != "user"):
        raise NotFound(f"user message {message_id} not found in this conversation",
                       param="replace_from")
    streaming = conn.execute(_STREAMING_FROM, {"conversation": conversation.id,
                                               "from_seq": message.seq}).mappings().all()
    if any(not abandoned(trusted(Message, m)) for m in streaming):
        raise Conflict("a reply in this conversation is still being written; stop it first")
    return message


async def store(runtime: Runtime, plan: StorePlan) -> None:
    """Write the plan in one transaction. A concurrent turn that took the same seq is
    retried with the next one; a concurrent request with the same client message id is
    a 409."""
    for attempt in range(3):
        try:
            await _write(runtime, plan)
            runtime.state.setdefault("chat.known_owners", set()).add(plan.owner)
            return
        except IntegrityError:
            if attempt == 2 or not plan.new_user or plan.truncate_from is not None:
                raise Conflict("the conversation changed concurrently; retry") from None
        except SQLAlchemyError as exc:
            log.error("storing a chat turn failed: %s", exc)
            raise MamiError("the message could not be stored; retry", status_code=503) from exc
        async with runtime.db.session() as session:
            if plan.client_message_id is not None and (await session.exec(
                select(Message.id).where(Message.conversation_id == plan.conversation_id,
                                         Message.client_message_id == plan.client_message_id)
            )).first() is not None:
                raise Conflict("this message is already being answered by another request")
            plan.new_conversation = await session.get(Conversation, plan.conversation_id) is None
            seq = (await session.exec(
                select(Message.seq).where(Message.conversation_id == plan.conversation_id)
                .order_by(col(Message.seq).desc()).limit(1)
            )).first()
            plan.user_seq = int(seq or 0) + 1


async def _write(runtime: Runtime, plan: StorePlan) -> None:
    now = utcnow()
    # The owner's row is added unless this process has already seen it committed.
    owner_known = plan.owner in runtime.state.get("chat.known_owners", ())
    conversation = {"conversation": plan.conversation_id, "from_seq": plan.truncate_from}
    rows = []
    if plan.new_user:
        rows.append(_message_row(id=plan.user_id, conversation_id=plan.conversation_id,
                                 seq=plan.user_seq, role="user", content=plan.content,
                                 client_message_id=plan.client_message_id, created_at=now))
    if plan.reclaim_status is None:
        rows.append(_message_row(id=plan.reply_id, conversation_id=plan.conversation_id,
                                 seq=plan.user_seq + 1, role="assistant", content="",
                                 status="streaming", reply_to=plan.user_id, created_at=now,
                                 lease_owner=plan.lease, lease_until=now + LEASE))

    def work(conn: Connection) -> None:
        if plan.new_conversation:
            if not owner_known and conn.execute(_OWNER_KNOWN, {"owner": plan.owner}
                                                ).first() is None:
                conn.execute(_INSERT_OWNER, {"id": plan.owner, "created_at": now})
            conn.execute(_INSERT_CONVERSATION, {
                "id": plan.conversation_id, "owner_id": plan.owner, "title": plan.title,
                "summary": "", "summary_upto": 0, "created_at": now, "updated_at": now,
                "model": None, "system_prompt": None, "temperature": None,
                "max_tokens": None})
        else:
            if plan.truncate_from is not None:
                conn.execute(_TRUNCATE, conversation)
                conn.execute(_SUMMARY_CUT, conversation)
            conn.execute(_TOUCH, {"conversation": plan.conversation_id, "updated_at": now})
        if rows:
            conn.execute(_INSERT_MESSAGES, rows)
        if plan.reclaim_status is not None:
            claimed = conn.execute(_RECLAIM, {
                "answer": plan.reply_id, "was": plan.reclaim_status, "status": "streaming",
                "content": "", "error": None, "created_at": now, "lease_owner": plan.lease,
                "lease_until": now + LEASE})
            if claimed.rowcount != 1:
                raise Conflict("this message is being answered by another request")

    await runtime.db.run(work)


def abandoned(message: Message) -> bool:
    """True when ``message`` is ``streaming`` but nobody writes it any more: its lease
    expired, or the process holding it on this host is gone."""
    return message.status == "streaming" and (
        holder_gone(message.lease_owner)
        or expired(message.lease_until, fallback=message.created_at, grace=STALE_STREAM))


async def keep_finishing_abandoned(runtime: Runtime, every: float | None = None) -> None:
    """For a long-running server: every ``every`` seconds (default: the lease) finish
    the answers abandoned by processes that died elsewhere (another host sharing the
    database), so they do not wait for a retry or a restart. Runs until cancelled."""
    while True:
        await asyncio.sleep(every if every is not None else LEASE.total_seconds())
        try:
            await finish_abandoned(runtime)
        except Exception as exc:
            log.warning("finishing abandoned answers failed: %s", exc)


async def finish_abandoned(runtime: Runtime, candidates: Sequence[Message] | None = None
                           ) -> int:
    """Finish ``candidates`` (default: every ``streaming`` answer) that are
    :func:`abandoned` as ``interrupted``, keeping the text saved so far; returns how
    many. Each row is finished only if its lease is still the one seen, so an answer
    that a live process renewed or a retry reclaimed meanwhile is left alone."""
    if candidates is None:
        async with runtime.db.session() as session:
            candidates = list((await session.exec(
                select(Message).where(Message.status == "streaming"))).all())
    gone = [m for m in candidates if abandoned(m)]
    finished = 0
    for message in gone:
        async with runtime.db.session() as session:
            holder, until = col(Message.lease_owner), col(Message.lease_until)
            query = update(Message).where(
                col(Message.id) == message.id, col(Message.status) == "streaming",
                holder.is_(None) if message.lease_owner is None
                else holder == message.lease_owner,
                until.is_(None) if message.lease_until is None else until <= message.lease_until)
            done = await session.execute(
                query.values(status="interrupted", error="the server stopped while answering",
                             lease_until=None)
                .execution_options(synchronize_session=False))
            await session.commit()
            finished += done.rowcount  # type: ignore[attr-defined]
    if finished:
        log.warning("finished %d answer(s) left streaming by a stopped process as interrupted",
                    finished)
    return finished


def _recent(conn: Connection, conversation_id: str, after: int, before: int | None
            ) -> list[Any]:
    """The newest messages after seq ``after`` (and before ``before``), oldest first, as
    rows (a message's columns as attributes)."""
    params = {"conversation": conversation_id, "after": after, "before": before}
    rows = conn.execute(_RECENT if before is None else _RECENT_BEFORE, params).all()
    return list(reversed(rows))


def _turns(rows: Sequence[Any]) -> list[Turn]:
    """History turns from stored rows; failed and unfinished answers are left out (tool
    steps stay: they were stored whole), and so is any tool call without all its
    results or result without its call (a history cut in the middle of a step)."""
    turns: list[Turn] = []
    for row in rows:
        calls = tuple(ToolCall(str(c.get("id", "")), str(c.get("name", "")),
                               str(c.get("arguments", "")))
                      for c in row.tool_calls or () if isinstance(c, dict))
        if row.role == "assistant" and not calls and (
                row.status not in ("complete", "interrupted") or not row.content):
            continue
        message = ChatMessage(row.role, row.content, tool_calls=calls,  # type: ignore[arg-type]
                              tool_call_id=row.tool_call_id)
        if row.role == "user" or not turns:
            turns.append(Turn((message,), row.seq))
        else:
            turns[-1] = Turn((*turns[-1].messages, message), row.seq)
    return [Turn(paired(t.messages), t.last_seq) for t in turns]


def paired(messages: Sequence[ChatMessage]) -> tuple[ChatMessage, ...]:
    """``messages`` without tool calls that lack results and results that lack their
    call (an assistant message that loses its calls keeps its text, if any)."""
    answered = {m.tool_call_id for m in messages if m.role == "tool"}
    called: set[str | None] = set()
    out: list[ChatMessage] = []
    for m in messages:
        if m.tool_calls:
            if all(c.id in answered for c in m.tool_calls):
                called.update(c.id for c in m.tool_calls)
                out.append(m)
            elif m.content:
                out.append(replace(m, tool_calls=()))
        elif m.role == "tool":
            if m.tool_call_id in called:
                out.append(m)
        else:
            out.append(m)
    return tuple(out)


def without_tools(turns: Sequence[Turn]) -> list[Turn]:
    """Turns with their tool steps left out (for a model that cannot read them)."""
    out = []
    for t in turns:
        kept = tuple(replace(m, tool_calls=()) for m in t.messages
                     if m.role != "tool" and (m.content or not m.tool_calls))
        out.append(replace(t, messages=kept))
    return out


def _memo(count: Callable[[str], int]) -> Callable[[str], int]:
    """``count`` remembering its answers for one turn: a tool step rebuilds the prompt,
    and the model's tokenizer may be a round trip away."""
    known: dict[str, int] = {}

    def counted(text: str) -> int:
        tokens = known.get(text)
        if tokens is None:
            tokens = known[text] = count(text)
        return tokens

    return counted


async def _context(turn: TurnRun, history: list[Turn], summary: str) -> Context:
    runtime, request, llm = turn.runtime, turn.request, turn.llm
    (memories, memory_fault), (passages, document_fault) = await asyncio.gather(
        _recall(runtime, turn.principal.owner, request.content),
        _search(runtime, turn.principal.owner, request.content),
    )
    turn.warnings = [w for w in (document_fault, memory_fault) if w is not None]
    if not supports(llm, "tools"):
        history = without_tools(history)
    turn.context_inputs = dict(
        system_prompt=_system_prompt(runtime, request),
        user=request.content,
        history=history,
        count=_memo(llm.count_tokens),
        window=llm.context_window,
        budget=runtime.config.budget,
        memories=memories,
        passages=[_passage_text(p) for p in passages],
        summary=summary,
        tail=list(request.tail),
    )
    context = await asyncio.to_thread(build_context, **turn.context_inputs)
    used = passages[: context.used_passages]
    return dataclasses.replace(
        context, sources=tuple(source_of(n, p) for n, p in enumerate(used, 1)))


def _passage_text(passage: Passage) -> str:
    page = f", page {passage.page}" if passage.page is not None else ""
    return f"{passage.text}\n(source: {passage.source}{page})"


def _system_prompt(runtime: Runtime, request: ChatRequest) -> str:
    return (request.system_prompt if request.system_prompt is not None
            else runtime.config.core.system_prompt)


WARNING_REASON = 500
"""At most this many characters of a fault's message go into a warning."""


def unavailable(what: str, exc: BaseException) -> str:
    """``"<what> unavailable: <reason>"``: a warning for a fault the turn went on
    without; the reason is the error's message, on one line, without URL secrets."""
    reason = exc.message if isinstance(exc, MamiError) else f"{type(exc).__name__}: {exc}"
    reason = " ".join(str(hide_url_secrets(reason)).split())
    if len(reason) > WARNING_REASON:
        reason = reason[:WARNING_REASON - 3].rstrip() + "..."
    return f"{what} unavailable: {reason}"


async def _recall(runtime: Runtime, owner: str, text: str) -> tuple[list[str], str | None]:
    """The owner's memories for ``text``, and the warning when the store failed."""
    store = runtime.memory
    if store is None or runtime.config.budget.memory_k <= 0:
        return [], None
    try:
        found = await store.recall(owner, text, runtime.config.budget.memory_k)
    except Exception as exc:
        log.warning("memory store %s failed, answering without memories: %s",
                    getattr(store, "name", "?"), exc)
        return [], unavailable("memories", exc)
    return [m.text for m in found], None


async def _search(runtime: Runtime, owner: str, text: str
                  ) -> tuple[list[Passage], str | None]:
    """The owner's passages for ``text``, and the warning when the retriever failed."""
    retriever = runtime.retriever
    if retriever is None or runtime.config.budget.rag_k <= 0:
        return [], None
    try:
        found = await retriever.search(owner, text, runtime.config.budget.rag_k)
    except Exception as exc:
        log.warning("retriever %s failed, answering without passages: %s",
                    getattr(retriever, "name", "?"), exc)
        return [], unavailable("documents", exc)
    return list(found), None
