"""messages: tool calls and tool results (#17)

An assistant message that asked for tools keeps them in ``tool_calls``; a tool result
is a ``tool`` message with the id and name of its call and how long it took.

Revision ID: 0003_i17_tool_messages
Revises: 0002
Create Date: 2026-12-02 03:40:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0003_i17_tool_messages'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tool_calls', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('tool_call_id',
                                      sqlmodel.sql.sqltypes.AutoString(length=128),
                                      nullable=True))
        batch_op.add_column(sa.Column('tool_name', sqlmodel.sql.sqltypes.AutoString(length=128),
                                      nullable=True))
        batch_op.add_column(sa.Column('duration', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('duration')
        batch_op.drop_column('tool_name')
        batch_op.drop_column('tool_call_id')
        batch_op.drop_column('tool_calls')
