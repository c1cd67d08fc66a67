"""memory: an index on memory_decisions.source_message_id

Every delivery of a finished turn looks up the decisions already recorded for its
message (exactly-once memory), and start-up looks up recent messages' decisions. Without
this index the first reads all of the owner's decisions and the second the whole table;
both grow with every turn.

Revision ID: memory_0002
Revises: memory_0001
"""
from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "memory_0002"
down_revision: str | None = "memory_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("memory_decisions", schema=None) as batch_op:
        batch_op.create_index("ix_memory_decisions_source", ["source_message_id"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("memory_decisions", schema=None) as batch_op:
        batch_op.drop_index("ix_memory_decisions_source")
