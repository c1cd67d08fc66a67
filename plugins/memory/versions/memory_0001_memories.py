"""memory: the memories and memory_decisions tables

Before plugins had their own chains, core's migration 0001 made these tables. A database
made then keeps its tables and every row: this revision adopts them as they are.

Revision ID: memory_0001
Revises:
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlmodel.sql.sqltypes import AutoString, UTCDateTime

revision: str = "memory_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = ("memory",)
depends_on: str | Sequence[str] | None = None


def _exists(table: str) -> bool:
    return not context.is_offline_mode() and sa.inspect(op.get_bind()).has_table(table)


def upgrade() -> None:
    if not _exists("memories"):
        op.create_table(
            "memories",
            sa.Column("id", AutoString(length=64), nullable=False),
            sa.Column("owner_id", AutoString(length=128), nullable=False),
            sa.Column("text", sa.Text(), nullable=False),
            sa.Column("normalized", AutoString(length=1024), nullable=False),
            sa.Column("seen_count", sa.Integer(), nullable=False),
            sa.Column("created_at", UTCDateTime(), nullable=False),
            sa.Column("updated_at", UTCDateTime(), nullable=False),
            sa.Column("last_seen_at", UTCDateTime(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("owner_id", "normalized", name="uq_memories_normalized"),
        )
        with op.batch_alter_table("memories", schema=None) as batch_op:
            batch_op.create_index(batch_op.f("ix_memories_owner_id"), ["owner_id"], unique=False)
    if not _exists("memory_decisions"):
        op.create_table(
            "memory_decisions",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("owner_id", AutoString(length=128), nullable=False),
            sa.Column("memory_id", AutoString(length=64), nullable=False),
            sa.Column("action", AutoString(length=16), nullable=False),
            sa.Column("text", sa.Text(), nullable=False),
            sa.Column("similarity", sa.Float(), nullable=True),
            sa.Column("matched_memory_id", AutoString(length=64), nullable=True),
            sa.Column("source_message_id", AutoString(length=64), nullable=True),
            sa.Column("created_at", UTCDateTime(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
        with op.batch_alter_table("memory_decisions", schema=None) as batch_op:
            batch_op.create_index("ix_memory_decisions_owner_memory", ["owner_id", "memory_id"],
                                  unique=False)


def downgrade() -> None:
    with op.batch_alter_table("memory_decisions", schema=None) as batch_op:
        batch_op.drop_index("ix_memory_decisions_owner_memory")
    op.drop_table("memory_decisions")
    with op.batch_alter_table("memories", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_memories_owner_id"))
    op.drop_table("memories")
