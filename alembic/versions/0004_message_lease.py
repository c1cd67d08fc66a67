"""messages: the lease of an answer being streamed

``lease_owner`` names the process (and turn) writing a ``streaming`` answer and
``lease_until`` is renewed while it writes; an answer whose lease expired, or whose
process is gone, is finished as ``interrupted`` with the text saved so far. The index
finds the few ``streaming`` rows at start-up.

Revision ID: 0003_i20_message_lease
Revises: 0003_i17_tool_messages
Create Date: 2026-12-02 03:40:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0003_i20_message_lease'
down_revision: str | None = '0003_i17_tool_messages'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lease_owner', sqlmodel.sql.sqltypes.AutoString(length=128),
                                      nullable=True))
        batch_op.add_column(sa.Column('lease_until', sqlmodel.sql.sqltypes.UTCDateTime(),
                                      nullable=True))
        batch_op.create_index('ix_messages_status', ['status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_status')
        batch_op.drop_column('lease_until')
        batch_op.drop_column('lease_owner')
