"""token-ws-auth: spent tickets and failed attempts, shared by every process

Revision ID: token_ws_auth_0002_i15
Revises: token_ws_auth_0001
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "token_ws_auth_0002_i15"
down_revision: str | None = "token_ws_auth_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "auth_spent_tickets",
        sa.Column("ticket_id", sa.String(length=64), primary_key=True),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_auth_spent_tickets_expires_at", "auth_spent_tickets", ["expires_at"])
    op.create_table(
        "auth_failed_attempts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("address", sa.String(length=128), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
    )
    op.create_index("ix_auth_failed_attempts_address_at", "auth_failed_attempts",
                    ["address", "at"])


def downgrade() -> None:
    op.drop_index("ix_auth_failed_attempts_address_at", table_name="auth_failed_attempts")
    op.drop_table("auth_failed_attempts")
    op.drop_index("ix_auth_spent_tickets_expires_at", table_name="auth_spent_tickets")
    op.drop_table("auth_spent_tickets")
