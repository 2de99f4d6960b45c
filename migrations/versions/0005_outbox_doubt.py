"""The outbox remembers when a record's write may have reached the bus unacknowledged.

``doubt_since`` (wall-clock seconds, NULL when no write of the record was sent) lets the flusher
look the record up in the bus before sending it again, so a lost acknowledgement does not
duplicate it on the topic.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("doubt_since", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("outbox", "doubt_since")
