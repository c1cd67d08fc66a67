"""Core's tables. The schema is created and changed only by Alembic (``alembic/``). A
plugin's tables are on its own metadata with its own chain (``register_migrations``)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlalchemy.orm import configure_mappers
from sqlmodel import Field, SQLModel

M = TypeVar("M", bound=SQLModel)


def utcnow() -> datetime:
    return datetime.now(UTC)


def empty_dict() -> dict[str, Any]:
    # Not the builtin ``dict``: pydantic inspects a default factory's signature on every
    # construction, and a builtin's costs about 0.3 ms (parsed from its text signature).
    return {}


def empty_list() -> list[Any]:
    return []


def trusted(model: type[M], values: Mapping[Any, Any]) -> M:
    """A ``model`` object made from ``values`` without validating them: for rows the
    database returned and values mami made itself, where validation costs more than the
    statement. Unlike the constructor, ``model_construct`` does not configure
    SQLAlchemy's mappers, and the object's attributes fail until something has: this
    does it first (about a microsecond once done)."""
    configure_mappers()
    return model.model_construct(**values)


class Owner(SQLModel, table=True):
    """A user or tenant. Every piece of user data belongs to exactly one owner."""

    __tablename__ = "owners"

    id: str = Field(primary_key=True, max_length=128)
    created_at: datetime = Field(default_factory=utcnow)


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
    answers, so one user message never gets two stored answers. While an answer is
    ``streaming``, ``lease_owner`` names the process and turn writing it and
    ``lease_until`` is renewed as its text is saved (see :mod:`core.leases`).

    Tool steps: an assistant message that asked for tools keeps them in ``tool_calls``
    (``[{"id", "name", "arguments"}]``); each result is a ``tool`` message with
    ``tool_call_id``, ``tool_name``, ``duration`` (seconds) and status ``complete`` or
    ``error``. A turn's steps are written with its answer, in one transaction, so stored
    calls always have their results."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("conversation_id", "client_message_id", name="uq_messages_client_id"),
        UniqueConstraint("conversation_id", "seq", name="uq_messages_seq"),
        UniqueConstraint("reply_to", name="uq_messages_reply_to"),
        Index("ix_messages_status", "status"),
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
    tool_calls: list[Any] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True),
                                                                        nullable=True))
    tool_call_id: str | None = Field(default=None, max_length=128)
    tool_name: str | None = Field(default=None, max_length=128)
    duration: float | None = None
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_until: datetime | None = None
    sources: list[dict[str, Any]] | None = Field(default=None,
                                                 sa_column=Column(JSON, nullable=True))
    """An answer's sources: the document passages it was given (see ``core.chat``)."""


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
    request: dict[str, Any] = Field(default_factory=empty_dict,
                                    sa_column=Column(JSON, nullable=False))
    attempts: int = 0
    max_attempts: int = 3
    progress: float = 0.0
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    placeholder_reason: str | None = Field(default=None, max_length=200)
    result_path: str | None = Field(default=None, max_length=1024)
    callback_errors: list[Any] = Field(default_factory=empty_list,
                                       sa_column=Column(JSON, nullable=False))
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_until: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)
