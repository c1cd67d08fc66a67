"""A third-party plugin that owns a table: ``/note <text>`` keeps a note for the caller,
``/notes`` lists them. Its schema lives in its own Alembic chain (branch ``notes``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    insert,
    select,
)

from core import hookimpl
from core.chat import ChatCommand
from core.migrations import MigrationSource

metadata = MetaData()
notes = Table(
    "notes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("owner_id", String(128), nullable=False, index=True),
    Column("text", Text, nullable=False),
    Column("pinned", Boolean, nullable=False, server_default=false()),
)


async def note(runtime: Any, principal: Any, argument: str, conversation_id: Any) -> str:
    async with runtime.db.session() as session:
        await session.execute(insert(notes).values(owner_id=principal.owner, text=argument))
        await session.commit()
    return f"noted: {argument}"


async def list_notes(runtime: Any, principal: Any, argument: str, conversation_id: Any) -> str:
    async with runtime.db.session() as session:
        rows = (await session.execute(
            select(notes.c.text).where(notes.c.owner_id == principal.owner)
            .order_by(notes.c.id))).scalars().all()
    return "; ".join(rows) or "no notes"


@hookimpl
def register_migrations(register: Any) -> None:
    register(MigrationSource("notes", Path(__file__).parent / "versions", metadata))


@hookimpl
def register_chat_commands(register: Any) -> None:
    register(ChatCommand("note", note, "keep a note: /note <text>"))
    register(ChatCommand("notes", list_notes, "list your notes"))
