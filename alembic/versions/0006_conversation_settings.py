"""conversations: per-conversation model, system prompt, temperature and max tokens

Each is NULL when the conversation uses the server's default (the active LLM provider,
``[core] system_prompt``, the provider's sampling default, ``[budget] reply_tokens``).

Revision ID: 0003_i18_conversation_settings
Revises: 0003_i18_message_sources
Create Date: 2026-12-02 03:45:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003_i18_conversation_settings'
down_revision: str | None = '0003_i18_message_sources'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('model', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('system_prompt', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('temperature', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('max_tokens', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.drop_column('max_tokens')
        batch_op.drop_column('temperature')
        batch_op.drop_column('system_prompt')
        batch_op.drop_column('model')
