"""Index applied feedback by time: a learner loads only the recent ones (the joiner's memory).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_applied_feedback_applied_at", "applied_feedback", ["applied_at"])


def downgrade() -> None:
    op.drop_index("ix_applied_feedback_applied_at", table_name="applied_feedback")
