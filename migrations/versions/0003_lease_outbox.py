"""Distributed mode: the learner lease (one active learner per group, fenced by an epoch) and the
durable outbox that keeps events while the Kafka broker is unreachable.

Revision ID: 0003
Revises: 0002_service_config
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002_service_config"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = sa.String(200)


def upgrade() -> None:
    op.create_table(
        "learner_leases",
        sa.Column("group", NAME, nullable=False),
        sa.Column("holder", NAME, nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("group", name="pk_learner_leases"),
    )
    # Owned by streams/outbox.py, written out here by hand (migrations do not import streams); it
    # must stay identical to that module's Table (a test compares them).
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("topic", NAME, nullable=False),
        sa.Column("key", NAME, nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="outbox_pkey"),
    )


def downgrade() -> None:
    op.drop_table("outbox")
    op.drop_table("learner_leases")
