"""chroma-rag: the documents table

Before plugins had their own chains, core's migrations 0001 and 0002 made this table and
its covering index. A database made then keeps its table and every row: this revision
adopts it as it is (adding the index when the database never ran core's 0002).

Revision ID: chroma_rag_0001
Revises:
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlmodel.sql.sqltypes import AutoString, UTCDateTime

revision: str = "chroma_rag_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = ("chroma_rag",)
depends_on: str | Sequence[str] | None = None

COVERING = "ix_documents_owner_scope_chunks"


def upgrade() -> None:
    if not context.is_offline_mode():
        found = sa.inspect(op.get_bind())
        if found.has_table("documents"):
            if COVERING not in {ix["name"] for ix in found.get_indexes("documents")}:
                op.create_index(COVERING, "documents", ["owner_id", "scope", "chunks"])
            return
    op.create_table(
        "documents",
        sa.Column("id", AutoString(length=64), nullable=False),
        sa.Column("owner_id", AutoString(length=128), nullable=False),
        sa.Column("scope", AutoString(length=64), nullable=False),
        sa.Column("source", AutoString(length=1024), nullable=False),
        sa.Column("sha256", AutoString(length=64), nullable=False),
        sa.Column("chunks", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("owner_id", "scope", "source", name="uq_documents_source"),
    )
    with op.batch_alter_table("documents", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_documents_owner_id"), ["owner_id"], unique=False)
        batch_op.create_index(COVERING, ["owner_id", "scope", "chunks"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("documents", schema=None) as batch_op:
        batch_op.drop_index(COVERING)
        batch_op.drop_index(batch_op.f("ix_documents_owner_id"))
    op.drop_table("documents")
