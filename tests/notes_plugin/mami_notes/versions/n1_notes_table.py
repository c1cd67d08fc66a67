"""notes: the notes table

Revision ID: n1
Revises:
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "n1"
down_revision = None
branch_labels = ("notes",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("owner_id", sa.String(length=128), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
    )
    op.create_index("ix_notes_owner_id", "notes", ["owner_id"])


def downgrade() -> None:
    op.drop_index("ix_notes_owner_id", table_name="notes")
    op.drop_table("notes")
