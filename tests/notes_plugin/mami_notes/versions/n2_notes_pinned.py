"""notes: a note can be pinned

Revision ID: n2
Revises: n1
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "n2"
down_revision = "n1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notes") as batch_op:
        batch_op.add_column(sa.Column("pinned", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("notes") as batch_op:
        batch_op.drop_column("pinned")
