"""chroma-rag's table, on its own metadata (not SQLModel's shared one). Its schema is
the plugin's Alembic chain (branch ``chroma_rag``, ``versions/``)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import Index, UniqueConstraint
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from core.migrations import MigrationSource
from core.models import utcnow


class RagTables(SQLModel, registry=registry()):
    """Base of this plugin's tables: ``RagTables.metadata`` holds exactly them."""


class Document(RagTables, table=True):
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


metadata = RagTables.metadata
MIGRATIONS = MigrationSource("chroma_rag", Path(__file__).parent / "versions", metadata)
