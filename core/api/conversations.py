"""Native conversation API, scoped to the caller: another owner's conversation is a 404.

``POST /api/conversations`` (optional ``{"title": ...}``), ``GET /api/conversations``,
``GET /api/conversations/{id}/messages``, ``DELETE /api/conversations/{id}``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from litestar import Controller, delete, get, post
from litestar.params import Parameter
from sqlalchemy import delete as sql_delete
from sqlmodel import col, select

from core.api.deps import MAX_OFFSET
from core.errors import BadRequest, NotFound
from core.models import Conversation, Message, Owner
from core.protocols import Principal
from core.runtime import Runtime


@dataclass
class NewConversation:
    title: str = ""


@dataclass
class ConversationOut:
    id: str
    title: str
    created_at: datetime
    updated_at: datetime
    summary: str = ""


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
                           conversation.updated_at, conversation.summary)


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
                     data: NewConversation | None = None) -> ConversationOut:
        """Start an empty conversation."""
        title = (data.title if data else "").strip()
        if len(title) > 200:
            raise BadRequest("title must be at most 200 characters")
        async with runtime.db.session() as session:
            if await session.get(Owner, principal.owner) is None:
                session.add(Owner(id=principal.owner))
                await session.flush()
            conversation = Conversation(id=uuid.uuid4().hex, owner_id=principal.owner,
                                        title=title)
            session.add(conversation)
            await session.commit()
        return _out(conversation)

    @get("/")
    async def list_conversations(
        self, runtime: Runtime, principal: Principal,
        limit: int = Parameter(default=50, ge=1, le=500),
        offset: int = Parameter(default=0, ge=0, le=MAX_OFFSET),
    ) -> list[ConversationOut]:
        """The caller's conversations, most recently active first. 400 for a bad
        limit/offset."""
        async with runtime.db.session() as session:
            rows = (await session.exec(
                select(Conversation).where(Conversation.owner_id == principal.owner)
                .order_by(col(Conversation.updated_at).desc()).offset(offset).limit(limit)
            )).all()
        return [_out(c) for c in rows]

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
        """Delete the conversation and its messages."""
        await owned(runtime, principal.owner, conversation_id)
        async with runtime.db.session() as session:
            await session.execute(
                sql_delete(Message).where(col(Message.conversation_id) == conversation_id))
            await session.execute(
                sql_delete(Conversation).where(col(Conversation.id) == conversation_id))
            await session.commit()


routes: list[Any] = [ConversationController]
