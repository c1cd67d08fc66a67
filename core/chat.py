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

Slash commands (``/name argument``), registered per runtime by plugins'
``register_chat_commands`` hooks (:class:`ChatCommand`), are answered by their handler
instead of the LLM (:func:`find_command` is the seam).

Sources: the document passages a reply was given are its sources (:func:`source_of`,
numbered as in the prompt); :attr:`TurnRun.sources` has them before the first token,
and they are stored with the answer (``messages.sources``).

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
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, update
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
from core.errors import BadRequest, MamiError, NotFound, ProviderError, StreamInterrupted
from core.events import MessageCompleted
from core.models import Conversation, Message, Owner, utcnow
from core.protocols import ChatMessage, Delta, GenerationParams, LLMProvider, Passage, Principal

if TYPE_CHECKING:
    from core.runtime import Runtime

log = logging.getLogger("mami.chat")

HISTORY_LIMIT = 200
STALE_STREAM = timedelta(minutes=10)
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


def _gen(deltas: AsyncIterator[Delta]) -> AsyncGenerator[Delta, None]:
    """Providers' ``stream`` methods are async generators; this says so to the type checker
    (they must be closed promptly: the local model is held until then)."""
    return deltas  # type: ignore[return-value]


class Conflict(MamiError):
    status_code = 409


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
        self.replay_sources: list[dict[str, Any]] | None = None

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

    async def run(self) -> AsyncIterator[str | Finished]:
        """Yield the reply's text pieces, then one :class:`Finished` once the answer is
        stored; after that (when iteration continues) ``message_completed`` fires.
        Cancelling or closing the iteration stores what arrived as ``interrupted``."""
        if self.replay is not None:
            self.finished = self.replay
            if self.replay.text:
                yield self.replay.text
            yield self.replay
            return
        parts: list[str] = []
        status, error, code, finish = "error", None, None, None
        reported: Delta | None = None
        try:
            if self.request.client_message_id is not None:
                # The write is the idempotency gate: a duplicate must not reach the model.
                await self.saved()
            async with contextlib.aclosing(self._generate()) as generated:
                async for delta in generated:
                    piece = delta.text
                    finish = delta.finish_reason or finish
                    if delta.completion_tokens is not None:
                        reported = delta
                    if piece:
                        if not parts:
                            await self.saved()
                        parts.append(piece)
                        yield piece
            status = "complete"
        except MamiError as exc:
            if self.unsaved:
                raise  # the rows could not be written: nothing to store the answer in
            status = "interrupted" if parts or isinstance(exc, StreamInterrupted) else "error"
            error, code = exc.message, exc.status_code
        except (asyncio.CancelledError, GeneratorExit):
            await asyncio.shield(self._finish("interrupted", parts, "cancelled", None, None,
                                              reported))
            raise
        except Exception as exc:
            log.exception("reply failed")
            status = "interrupted" if parts else "error"
            error, code = f"{type(exc).__name__}: {exc}", 500
        finished = await asyncio.shield(self._finish(status, parts, error, code, finish,
                                                     reported))
        after = None
        if status == "complete" and self.stored and self.command is None:
            # Started before the answer is handed over, so a client that leaves now cannot
            # cancel the event; awaited below, so on Lambda it still runs in the request.
            after = asyncio.ensure_future(self._after_complete(finished))
        yield finished
        if after is not None:
            await asyncio.shield(after)

    async def _generate(self) -> AsyncGenerator[Delta, None]:
        if self.command is not None:
            handler, argument = self.command
            await self.saved()  # a failed write must not leave the command's effects behind
            yield Delta(await handler(self.runtime, self.principal, argument,
                                      self.conversation_id), "stop")
            return
        assert self.context is not None
        params = self.request.params or GenerationParams(
            max_tokens=self.runtime.config.budget.reply_tokens)
        max_tokens = min(params.max_tokens, self.context.reply_tokens)
        if max_tokens != params.max_tokens:
            params = GenerationParams(max_tokens, params.temperature, params.top_p, params.stop)
        deltas = _gen(self.llm.stream(self.context.messages, params))
        async with contextlib.aclosing(deltas):
            async for delta in deltas:
                yield delta

    async def _finish(
        self, status: str, parts: list[str], error: str | None, code: int | None,
        finish: str | None, reported: Delta | None = None,
    ) -> Finished:
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
            async with self.runtime.db.session() as session:
                await session.execute(
                    update(Message)
                    .where(col(Message.id) == self.message_id)
                    .values(content=text, status=status, error=error,
                            token_count=usage.completion_tokens,
                            sources=self.sources or None)
                    .execution_options(synchronize_session=False)
                )
                await session.commit()
        self.finished = Finished(status, self.message_id, text, usage, finish, error, code)
        return self.finished

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
    if request.history is not None:
        turn = TurnRun(runtime, principal, request, llm, None, command)
        if command is None:
            turn.context = await _context(runtime, principal, request, llm,
                                          turns_from_messages(request.history), "")
        return turn
    return await _stored_turn(runtime, principal, request, llm, command)


async def _with_settings(runtime: Runtime, owner: str, request: ChatRequest) -> ChatRequest:
    """``request`` with the conversation's own model, system prompt and sampling settings
    where the request leaves them open. A stored model that is no longer registered
    falls back to the active provider."""
    async with runtime.db.session() as session:
        conversation = await session.get(Conversation, request.conversation_id)
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
    retry_of: Message | None = None
    reply: Message | None = None
    replaced: Message | None = None
    summary_state: tuple[str, int] | None = None  # (summary, upto) when not the stored one
    rows: list[Message] = []
    async with runtime.db.session() as session:
        conversation_id = request.conversation_id
        derived = conversation_id is None and cid is not None
        if derived:
            conversation_id = str(uuid.uuid5(ID_NAMESPACE, f"{owner}\0{cid}"))
        conversation = await session.get(Conversation, conversation_id) if conversation_id else None
        if conversation is not None and conversation.owner_id != owner:
            conversation = None
        if conversation is None and request.conversation_id is not None:
            raise NotFound(f"conversation {request.conversation_id} not found")
        if conversation is not None and cid is not None:
            retry_of = (await session.exec(
                select(Message).where(Message.conversation_id == conversation.id,
                                      Message.client_message_id == cid)
            )).first()
        if retry_of is not None:
            if retry_of.content != request.content:
                raise Conflict(f"client_message_id {cid!r} was already used for another message")
            reply = (await session.exec(select(Message).where(Message.reply_to == retry_of.id))
                     ).first()
        if retry_of is None and request.replace_from is not None:
            replaced = await _replaceable(session, conversation, request.replace_from)
        if conversation is not None and not (reply is not None and reply.status == "complete"):
            upto = conversation.summary_upto if runtime.config.budget.summarize else 0
            before = retry_of.seq if retry_of is not None else None
            if replaced is not None:
                before = replaced.seq
                if conversation.summary_upto >= replaced.seq:  # the summary covers cut turns
                    summary_state, upto = ("", 0), 0
            rows = await _recent(session, conversation.id, upto, before)
    if retry_of is not None and reply is not None and reply.status == "complete":
        turn.conversation_id = retry_of.conversation_id
        turn.user_message_id, turn.message_id = retry_of.id, reply.id
        turn.replay = Finished("complete", reply.id, reply.content,
                               Usage(0, reply.token_count or 0), "stop")
        turn.replay_sources = list(reply.sources or [])
        return turn
    if reply is not None and reply.status == "streaming" and (
        utcnow() - _aware(reply.created_at) < STALE_STREAM
    ):
        raise Conflict("this message is still being answered; retry when it ends")

    summarize = runtime.config.budget.summarize and conversation is not None
    if conversation is not None and summary_state is None:
        summary_state = (conversation.summary, conversation.summary_upto)
    if command is None:
        summary = summary_state[0] if summarize and summary_state is not None else ""
        turn.context = await _context(runtime, principal, request, llm, _turns(rows), summary)
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
        reclaim_status=reply.status if reply is not None else None,
        truncate_from=replaced.seq if replaced is not None else None,
    )
    # Without a client message id the rows are written while the model reads the prompt;
    # the turn waits for them before its first token leaves (see TurnRun.run).
    turn.store = asyncio.ensure_future(store(runtime, plan))
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
    truncate_from: int | None = None  # replace_from: messages from this seq on go first


async def _replaceable(session: Any, conversation: Conversation | None, message_id: str
                       ) -> Message:
    """The user message a ``replace_from`` names; 404 unless it is a user message of this
    conversation, 409 while a reply after it is still being written."""
    message = await session.get(Message, message_id)
    if (conversation is None or message is None or message.conversation_id != conversation.id
            or message.role != "user"):
        raise NotFound(f"user message {message_id} not found in this conversation",
                       param="replace_from")
    streaming = (await session.exec(
        select(Message).where(Message.conversation_id == conversation.id,
                              Message.seq >= message.seq, Message.status == "streaming")
    )).all()
    if any(utcnow() - _aware(m.created_at) < STALE_STREAM for m in streaming):
        raise Conflict("a reply in this conversation is still being written; stop it first")
    return message  # type: ignore[no-any-return]


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
    async with runtime.db.session() as session:
        if plan.new_conversation:
            await _ensure_owner(runtime, session, plan.owner)
            session.add(Conversation(id=plan.conversation_id, owner_id=plan.owner,
                                     title=plan.title))
        else:
            values: dict[str, Any] = {"updated_at": now}
            if plan.truncate_from is not None:
                await session.execute(
                    delete(Message).where(col(Message.conversation_id) == plan.conversation_id,
                                          col(Message.seq) >= plan.truncate_from)
                    .execution_options(synchronize_session=False))
                await session.execute(
                    update(Conversation).where(col(Conversation.id) == plan.conversation_id,
                                               col(Conversation.summary_upto)
                                               >= plan.truncate_from)
                    .values(summary="", summary_upto=0)
                    .execution_options(synchronize_session=False))
            await session.execute(update(Conversation)
                                  .where(col(Conversation.id) == plan.conversation_id)
                                  .values(**values)
                                  .execution_options(synchronize_session=False))
        if plan.new_user:
            session.add(Message(id=plan.user_id, conversation_id=plan.conversation_id,
                                seq=plan.user_seq, role="user", content=plan.content,
                                client_message_id=plan.client_message_id))
        if plan.reclaim_status is None:
            session.add(Message(id=plan.reply_id, conversation_id=plan.conversation_id,
                                seq=plan.user_seq + 1, role="assistant", content="",
                                status="streaming", reply_to=plan.user_id))
        else:
            claimed = await session.execute(
                update(Message).where(col(Message.id) == plan.reply_id,
                                      col(Message.status) == plan.reclaim_status)
                .values(status="streaming", content="", error=None, created_at=now)
                .execution_options(synchronize_session=False)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                raise Conflict("this message is being answered by another request")
        await session.commit()


def _aware(moment: Any) -> Any:
    from datetime import UTC

    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def _ensure_owner(runtime: Runtime, session: Any, owner: str) -> None:
    """Add the owner's row unless this process has already seen it committed."""
    if owner in runtime.state.get("chat.known_owners", ()):
        return
    if await session.get(Owner, owner) is None:
        session.add(Owner(id=owner))
        await session.flush()


async def _recent(session: Any, conversation_id: str, after: int, before: int | None
                  ) -> list[Message]:
    """The newest messages after seq ``after`` (and before ``before``), oldest first."""
    query = select(Message).where(Message.conversation_id == conversation_id,
                                  Message.seq > after)
    if before is not None:
        query = query.where(Message.seq < before)
    rows = (await session.exec(query.order_by(col(Message.seq).desc()).limit(HISTORY_LIMIT))).all()
    return list(reversed(rows))


def _turns(rows: Sequence[Message]) -> list[Turn]:
    """History turns from stored rows; failed and unfinished answers are left out."""
    turns: list[Turn] = []
    for row in rows:
        if row.role == "assistant" and (row.status not in ("complete", "interrupted")
                                        or not row.content):
            continue
        message = ChatMessage(row.role, row.content)  # type: ignore[arg-type]
        if row.role == "user" or not turns:
            turns.append(Turn((message,), row.seq))
        else:
            turns[-1] = Turn((*turns[-1].messages, message), row.seq)
    return turns


async def _context(
    runtime: Runtime, principal: Principal, request: ChatRequest, llm: LLMProvider,
    history: list[Turn], summary: str,
) -> Context:
    memories, passages = await asyncio.gather(
        _recall(runtime, principal.owner, request.content),
        _search(runtime, principal.owner, request.content),
    )
    context = await asyncio.to_thread(
        build_context,
        system_prompt=_system_prompt(runtime, request),
        user=request.content,
        history=history,
        count=llm.count_tokens,
        window=llm.context_window,
        budget=runtime.config.budget,
        memories=memories,
        passages=[_passage_text(p) for p in passages],
        summary=summary,
    )
    used = passages[: context.used_passages]
    return dataclasses.replace(
        context, sources=tuple(source_of(n, p) for n, p in enumerate(used, 1)))


def _passage_text(passage: Passage) -> str:
    page = f", page {passage.page}" if passage.page is not None else ""
    return f"{passage.text}\n(source: {passage.source}{page})"


def _system_prompt(runtime: Runtime, request: ChatRequest) -> str:
    return (request.system_prompt if request.system_prompt is not None
            else runtime.config.core.system_prompt)


async def _recall(runtime: Runtime, owner: str, text: str) -> list[str]:
    store = runtime.memory
    if store is None or runtime.config.budget.memory_k <= 0:
        return []
    try:
        return [m.text for m in await store.recall(owner, text, runtime.config.budget.memory_k)]
    except Exception as exc:
        log.warning("memory store %s failed, answering without memories: %s",
                    getattr(store, "name", "?"), exc)
        return []


async def _search(runtime: Runtime, owner: str, text: str) -> list[Passage]:
    retriever = runtime.retriever
    if retriever is None or runtime.config.budget.rag_k <= 0:
        return []
    try:
        found = await retriever.search(owner, text, runtime.config.budget.rag_k)
    except Exception as exc:
        log.warning("retriever %s failed, answering without passages: %s",
                    getattr(retriever, "name", "?"), exc)
        return []
    return list(found)
