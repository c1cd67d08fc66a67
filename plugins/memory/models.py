"""The memory plugin's tables, on their own metadata (not SQLModel's shared one). Their
schema is the plugin's Alembic chain (branch ``memory``, ``versions/``)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import Column, Index, Text, UniqueConstraint
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from core.migrations import MigrationSource
from core.models import utcnow


class MemoryTables(SQLModel, registry=registry()):
    """Base of this plugin's tables: ``MemoryTables.metadata`` holds exactly them."""


class MemoryRecord(MemoryTables, table=True):
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


class MemoryDecisionRecord(MemoryTables, table=True):
    """Why a candidate memory was added, updated or skipped."""

    __tablename__ = "memory_decisions"
    __table_args__ = (Index("ix_memory_decisions_owner_memory", "owner_id", "memory_id"),
                      Index("ix_memory_decisions_source", "source_message_id"))

    id: int | None = Field(default=None, primary_key=True)
    owner_id: str = Field(max_length=128)
    memory_id: str = Field(max_length=64)
    action: str = Field(max_length=16)
    text: str = Field(sa_column=Column(Text, nullable=False))
    similarity: float | None = None
    matched_memory_id: str | None = Field(default=None, max_length=64)
    source_message_id: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)


metadata = MemoryTables.metadata
MIGRATIONS = MigrationSource("memory", Path(__file__).parent / "versions", metadata)
