"""PostgreSQL: store policy snapshots uncompressed.

A snapshot is an ``.npz`` of float64 arrays (megabytes for LinUCB at d=256) that pglz barely
compresses, yet compressing it on every checkpoint cost the learner ~60 ms per 4 MB snapshot.
``STORAGE EXTERNAL`` keeps the value out of line without compression. SQLite has no such setting.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _set_storage(mode: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE policy_snapshots ALTER COLUMN state SET STORAGE {mode}")


def upgrade() -> None:
    _set_storage("EXTERNAL")


def downgrade() -> None:
    _set_storage("EXTENDED")
