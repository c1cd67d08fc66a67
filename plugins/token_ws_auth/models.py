"""token-ws-auth's tables, on its own metadata (not SQLModel's shared one). Their schema
is the plugin's Alembic chain (branch ``token_ws_auth``, ``versions/``)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import Column, Float, ForeignKey, Index, Integer, String, Table
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from core.migrations import MigrationSource
from core.models import Owner, utcnow


class TokenTables(SQLModel, registry=registry()):
    """Base of this plugin's tables: ``TokenTables.metadata`` holds exactly them."""


class ApiToken(TokenTables, table=True):
    """An API token. Only its SHA-256 hash is stored; the token is shown once."""

    __tablename__ = "api_tokens"

    id: str = Field(primary_key=True, max_length=32)
    # A column, not "owners.id": owners is on core's metadata, which this one cannot see.
    owner_id: str = Field(sa_column_args=[ForeignKey(Owner.metadata.tables["owners"].c.id)],
                          index=True, max_length=128)
    token_hash: str = Field(unique=True, max_length=128)
    name: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


metadata = TokenTables.metadata

spent_tickets = Table(
    "auth_spent_tickets",
    metadata,
    Column("ticket_id", String(64), primary_key=True),
    Column("expires_at", Float, nullable=False, index=True),
)
"""Tickets already used, until they expire (a ticket past ``expires_at`` is refused by
its signature check anyway)."""

failed_attempts = Table(
    "auth_failed_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("address", String(128), nullable=False),
    Column("at", Float, nullable=False),
    Index("ix_auth_failed_attempts_address_at", "address", "at"),
)
"""One row per failed authentication (or malformed unauthenticated request), kept for
the failure window."""

MIGRATIONS = MigrationSource("token_ws_auth", Path(__file__).parent / "versions", metadata)
