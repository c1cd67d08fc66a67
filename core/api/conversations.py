"""Native conversation API, scoped to the caller: another owner's conversation is a 404.

``POST /api/conversations`` (optional title and settings), ``GET /api/conversations``
(``?q=`` searches titles and message text), ``GET /api/conversations/{id}``,
``PATCH /api/conversations/{id}`` (rename, settings), ``GET
/api/conversations/{id}/messages``, ``DELETE /api/conversations/{id}`` (with its image
jobs and their images).

A conversation's settings (``model``, ``system_prompt``, ``temperature``,
``max_tokens``) are used by every turn in it (see :func:`core.chat.start_turn`);
``null`` means the server's default.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from litestar import Controller, Request, delete, get, patch, post
from litestar.params import Parameter
from sqlalchemy import delete as sql_delete
from sqlalchemy import or_
from sqlmodel import col, select

from core import jobs
from core.api.bodies import check_body, json_body
from core.api.deps import MAX_OFFSET
from core.errors import BadRequest, NotFound
from core.models import Conversation, Message, Owner, utcnow
from core.protocols import Principal
from core.runtime import Runtime

MAX_TITLE = 200
MAX_SYSTEM_PROMPT = 8000
MAX_REPLY_TOKENS = 32768
MAX_QUERY = 200


@dataclass
class NewConversation:
    """A new conversation: an optional title and settings (``null``: server default)."""

    title: str = ""
    model: str | None = None
    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None


@dataclass
class ConversationChange:
    """What ``PATCH`` changes: only the fields given (``null`` resets a setting)."""

    title: str | None = None
    model: str | None = None
    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None


@dataclass
class ConversationOut:
    id: str
    title: str
    created_at: datetime
    updated_at: datetime
    summary: str = ""
    model: str | None = None
    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None


def checked_changes(runtime: Runtime, raw: Any) -> dict[str, Any]:
    """The fields of a create or change body, checked; :class:`BadRequest` names the
    first bad one (unknown field, wrong JSON type, out of range, unknown model)."""
    body = check_body(raw, NewConversation)
    changes: dict[str, Any] = {}
    for name, value in body.items():
        problem = None
        if name == "title":
            value = " ".join(value.split())
            if len(value) > MAX_TITLE:
                problem = f"at most {MAX_TITLE} characters"
        elif value is None:
            pass
        elif name == "model" and value not in runtime.providers["llm"]:
            available = ", ".join(runtime.providers["llm"]) or "none"
            problem = f"{value!r} is not available (available: {available})"
        elif name == "system_prompt" and len(value) > MAX_SYSTEM_PROMPT:
            problem = f"at most {MAX_SYSTEM_PROMPT} characters"
        elif name == "temperature":
            if not 0 <= value <= 2:
                problem = f"must be from 0 to 2, got {value}"
            value = float(value)
        elif name == "max_tokens" and not 1 <= value <= MAX_REPLY_TOKENS:
            problem = f"must be from 1 to {MAX_REPLY_TOKENS}, got {value}"
        if problem:
            raise BadRequest(f"{name}: {problem}", param=name)
        changes[name] = value
    return changes


def _like(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, its wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@dataclass
class MessageOut:
    id: str
    seq: int
    role: str
    content: str
    status: str
    created_at: datetime
    client_message_id: str | None = None
    reply_to: str | None = None
    error: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    """An assistant's tool calls: ``[{"id", "name", "arguments"}]``."""
    tool_call_id: str | None = None
    """A ``tool`` message: the call it answers, the tool's name and its seconds."""
    tool_name: str | None = None
    duration: float | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)
    """An answer's sources (``n``, ``document_id``, ``source``, ``chunk_index``, ``page``,
    ``score``, ``text``): the document passages it was given; [] when none."""


def _out(conversation: Conversation) -> ConversationOut:
    return ConversationOut(conversation.id, conversation.title, conversation.created_at,
                           conversation.updated_at, conversation.summary, conversation.model,
                           conversation.system_prompt, conversation.temperature,
                           conversation.max_tokens)


async def owned(runtime: Runtime, owner: str, conversation_id: str) -> Conversation:
    """The conversation if it belongs to ``owner``; otherwise 404 (never 403: another
    owner's ids are not confirmed to exist)."""
    async with runtime.db.session() as session:
        conversation = await session.get(Conversation, conversation_id)
    if conversation is None or conversation.owner_id != owner:
        raise NotFound(f"conversation {conversation_id} not found")
    return conversation


class ConversationController(Controller):
    path = "/api/conversations"
    tags = ["conversations"]

    @post("/", status_code=201)
    async def create(self, runtime: Runtime, principal: Principal,
                     request: Request[Any, Any, Any],
                     data: NewConversation | None = None) -> ConversationOut:
        """Start an empty conversation, with its settings if given. 400 naming the field
        for an unknown field, a wrong type, a value out of range or an unknown model."""
        changes = checked_changes(runtime, await json_body(request))
        async with runtime.db.session() as session:
            if await session.get(Owner, principal.owner) is None:
                session.add(Owner(id=principal.owner))
                await session.flush()
            conversation = Conversation(id=uuid.uuid4().hex, owner_id=principal.owner,
                                        **changes)
            session.add(conversation)
            await session.commit()
        return _out(conversation)

    @get("/")
    async def list_conversations(
        self, runtime: Runtime, principal: Principal,
        limit: int = Parameter(default=50, ge=1, le=500),
        offset: int = Parameter(default=0, ge=0, le=MAX_OFFSET),
        q: str | None = Parameter(default=None, max_length=MAX_QUERY,
                                  description="only conversations whose title or messages "
                                              "contain this text (case-insensitive)"),
    ) -> list[ConversationOut]:
        """The caller's conversations, most recently active first; with ``q``, only those
        whose title or any message contains it. 400 for a bad limit, offset or q."""
        query = select(Conversation).where(Conversation.owner_id == principal.owner)
        if q is not None:
            if not q.strip():
                raise BadRequest("q: must not be empty", param="q")
            pattern = _like(q.strip())
            in_messages = (
                select(Message.conversation_id)
                .join(Conversation, col(Conversation.id) == col(Message.conversation_id))
                .where(Conversation.owner_id == principal.owner,
                       col(Message.content).ilike(pattern, escape="\\"))
            )
            query = query.where(or_(col(Conversation.title).ilike(pattern, escape="\\"),
                                    col(Conversation.id).in_(in_messages)))
        async with runtime.db.session() as session:
            rows = (await session.exec(
                query.order_by(col(Conversation.updated_at).desc()).offset(offset).limit(limit)
            )).all()
        return [_out(c) for c in rows]

    @get("/{conversation_id:str}")
    async def read(self, runtime: Runtime, principal: Principal,
                   conversation_id: str) -> ConversationOut:
        """One conversation with its settings."""
        return _out(await owned(runtime, principal.owner, conversation_id))

    @patch("/{conversation_id:str}")
    async def change(self, runtime: Runtime, principal: Principal, conversation_id: str,
                     request: Request[Any, Any, Any],
                     data: ConversationChange | None = None) -> ConversationOut:
        """Rename, or change settings: only the fields given change (``null`` resets a
        setting to the server's default; an empty title shows the date instead), and
        ``updated_at`` moves to now when any field is given (so the list, newest first,
        and clients syncing by ``updated_at`` see the change). 400 naming the field for
        a bad value; 404 for another owner's id."""
        changes = checked_changes(runtime, await json_body(request))
        await owned(runtime, principal.owner, conversation_id)
        async with runtime.db.session() as session:
            conversation = await session.get(Conversation, conversation_id)
            if conversation is None:
                raise NotFound(f"conversation {conversation_id} not found")
            for name, value in changes.items():
                setattr(conversation, name, value)
            if changes:
                conversation.updated_at = utcnow()
            session.add(conversation)
            await session.commit()
            await session.refresh(conversation)
        return _out(conversation)

    @get("/{conversation_id:str}/messages")
    async def messages(self, runtime: Runtime, principal: Principal,
                       conversation_id: str) -> list[MessageOut]:
        """The conversation's messages in order, with each answer's status
        (``streaming``, ``complete``, ``interrupted`` or ``error``), tool steps included
        (an assistant message with ``tool_calls``, then one ``tool`` message per call,
        status ``error`` when the tool failed)."""
        await owned(runtime, principal.owner, conversation_id)
        async with runtime.db.session() as session:
            rows = (await session.exec(
                select(Message).where(Message.conversation_id == conversation_id)
                .order_by(col(Message.seq))
            )).all()
        return [MessageOut(m.id, m.seq, m.role, m.content, m.status, m.created_at,
                           m.client_message_id, m.reply_to, m.error, m.tool_calls,
                           m.tool_call_id, m.tool_name, m.duration, list(m.sources or []))
                for m in rows]

    @delete("/{conversation_id:str}", status_code=204)
    async def remove(self, runtime: Runtime, principal: Principal, conversation_id: str) -> None:
        """Delete the conversation, its messages, its image jobs and their images."""
        await owned(runtime, principal.owner, conversation_id)
        await jobs.delete_conversation_jobs(runtime, principal.owner, conversation_id)
        async with runtime.db.session() as session:
            await session.execute(
                sql_delete(Message).where(col(Message.conversation_id) == conversation_id))
            await session.execute(
                sql_delete(Conversation).where(col(Conversation.id) == conversation_id))
            await session.commit()


routes: list[Any] = [ConversationController]
