"""Database tables. The schema is created and changed only by Alembic (``alembic/``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class Owner(SQLModel, table=True):
    """A user or tenant. Every piece of user data belongs to exactly one owner."""

    __tablename__ = "owners"

    id: str = Field(primary_key=True, max_length=128)
    created_at: datetime = Field(default_factory=utcnow)


class ApiToken(SQLModel, table=True):
    """An API token. Only its SHA-256 hash is stored; the token is shown once."""

    __tablename__ = "api_tokens"

    id: str = Field(primary_key=True, max_length=32)
    owner_id: str = Field(foreign_key="owners.id", index=True, max_length=128)
    token_hash: str = Field(unique=True, max_length=128)
    name: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class Conversation(SQLModel, table=True):
    """A chat thread of one owner. ``summary`` folds in turns dropped from the context;
    ``summary_upto`` is the ``seq`` of the last message it covers. ``model``,
    ``system_prompt``, ``temperature`` and ``max_tokens`` are the conversation's own
    settings; ``None`` means the server's default."""

    __tablename__ = "conversations"

    id: str = Field(primary_key=True, max_length=64)
    owner_id: str = Field(foreign_key="owners.id", index=True, max_length=128)
    title: str = Field(default="", max_length=200)
    summary: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    summary_upto: int = Field(default=0)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    model: str | None = Field(default=None, max_length=200)
    system_prompt: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    temperature: float | None = None
    max_tokens: int | None = None


class Message(SQLModel, table=True):
    """One message. ``client_message_id`` (unique per conversation) makes a retried
    request idempotent; an assistant message's ``reply_to`` is the user message it
    answers, so one user message never gets two stored answers."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("conversation_id", "client_message_id", name="uq_messages_client_id"),
        UniqueConstraint("conversation_id", "seq", name="uq_messages_seq"),
        UniqueConstraint("reply_to", name="uq_messages_reply_to"),
    )

    id: str = Field(primary_key=True, max_length=64)
    conversation_id: str = Field(foreign_key="conversations.id", index=True, max_length=64)
    seq: int
    role: str = Field(max_length=16)
    content: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default="complete", max_length=16)
    client_message_id: str | None = Field(default=None, max_length=128)
    reply_to: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    token_count: int | None = None
    created_at: datetime = Field(default_factory=utcnow)
    sources: list[dict[str, Any]] | None = Field(default=None,
                                                 sa_column=Column(JSON, nullable=True))
    """An answer's sources: the document passages it was given (see ``core.chat``)."""


class Document(SQLModel, table=True):
    """A document ingested for retrieval; its chunks live in the vector store."""

    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("owner_id", "scope", "source", name="uq_documents_source"),
        # Covers a search's chunk count per owner and scope (no table reads).
        Index("ix_documents_owner_scope_chunks", "owner_id", "scope", "chunks"),
    )

    id: str = Field(primary_key=True, max_length=64)
    owner_id: str = Field(index=True, max_length=128)
    scope: str = Field(default="default", max_length=64)
    source: str = Field(max_length=1024)
    sha256: str = Field(max_length=64)
    chunks: int = 0
    bytes: int = 0
    created_at: datetime = Field(default_factory=utcnow)


class MemoryRecord(SQLModel, table=True):
    """A remembered fact. ``id`` is derived from owner and normalised text."""

    __tablename__ = "memories"
    __table_args__ = (UniqueConstraint("owner_id", "normalized", name="uq_memories_normalized"),)

    id: str = Field(primary_key=True, max_length=64)
    owner_id: str = Field(index=True, max_length=128)
    text: str = Field(sa_column=Column(Text, nullable=False))
    normalized: str = Field(max_length=1024)
    seen_count: int = 1
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    last_seen_at: datetime = Field(default_factory=utcnow)


class MemoryDecisionRecord(SQLModel, table=True):
    """Why a candidate memory was added, updated or skipped."""

    __tablename__ = "memory_decisions"
    __table_args__ = (Index("ix_memory_decisions_owner_memory", "owner_id", "memory_id"),)

    id: int | None = Field(default=None, primary_key=True)
    owner_id: str = Field(max_length=128)
    memory_id: str = Field(max_length=64)
    action: str = Field(max_length=16)
    text: str = Field(sa_column=Column(Text, nullable=False))
    similarity: float | None = None
    matched_memory_id: str | None = Field(default=None, max_length=64)
    source_message_id: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)


class EventReceipt(SQLModel, table=True):
    """Exactly-once marker: a consumer handled the event with this key."""

    __tablename__ = "event_receipts"

    consumer: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=128)
    created_at: datetime = Field(default_factory=utcnow)


class ImageJob(SQLModel, table=True):
    """A text-to-image job. ``state``: queued, running, succeeded, placeholder, failed.
    A running job holds a lease; when it expires another worker may take the job."""

    __tablename__ = "image_jobs"
    __table_args__ = (Index("ix_image_jobs_claim", "state", "lease_until"),)

    id: str = Field(primary_key=True, max_length=64)
    owner_id: str = Field(index=True, max_length=128)
    conversation_id: str | None = Field(default=None, max_length=64)
    state: str = Field(default="queued", max_length=16)
    request: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    attempts: int = 0
    max_attempts: int = 3
    progress: float = 0.0
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    placeholder_reason: str | None = Field(default=None, max_length=200)
    result_path: str | None = Field(default=None, max_length=1024)
    callback_errors: list[Any] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_until: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)
