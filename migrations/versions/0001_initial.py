"""Initial schema: the embedded bus's log, the catalog, policy snapshots, consumer offsets, the
decision/feedback join store, dead letters and counters.

Revision ID: 0001
Revises:
Create Date: 2024-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = sa.String(200)


def upgrade() -> None:
    # Owned by streams/embedded.py, written out here by hand (migrations do not import streams);
    # it must stay identical to that module's Table. Its primary key gets the name Postgres gives
    # an unnamed one, as `create_all` of that Table would (the naming convention of the ORM
    # metadata would otherwise call it pk_event_log).
    op.create_table(
        "event_log",
        sa.Column("offset", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("topic", sa.String(200), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("offset", name="event_log_pkey"),
    )
    op.create_index("ix_event_log_topic_offset", "event_log", ["topic", "offset"])
    op.create_index("ix_event_log_key", "event_log", ["key"])

    op.create_table(
        "catalog_models",
        sa.Column("name", NAME, nullable=False),
        sa.Column("price_in_per_m", sa.Float(), nullable=False),
        sa.Column("price_out_per_m", sa.Float(), nullable=False),
        sa.Column("price_per_call", sa.Float(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("typical_input_tokens", sa.Integer(), nullable=False),
        sa.Column("typical_output_tokens", sa.Integer(), nullable=False),
        sa.Column("prior_quality", sa.Float(), nullable=True),
        sa.Column("removed_at", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_catalog_models"),
    )
    op.create_table(
        "policy_snapshots",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("policy", NAME, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_policy_snapshots"),
        sa.UniqueConstraint("policy", "version", name="uq_policy_snapshots_policy_version"),
    )
    op.create_table(
        "consumer_offsets",
        sa.Column("group", NAME, nullable=False),
        sa.Column("topic", NAME, nullable=False),
        sa.Column("partition", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("next_offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("group", "topic", "partition", name="pk_consumer_offsets"),
    )
    op.create_table(
        "pending_decisions",
        sa.Column("decision_id", NAME, nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("decision_id", name="pk_pending_decisions"),
    )
    op.create_table(
        "waiting_feedback",
        sa.Column("feedback_id", NAME, nullable=False),
        sa.Column("decision_id", NAME, nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("arrived_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("feedback_id", name="pk_waiting_feedback"),
    )
    op.create_index("ix_waiting_feedback_decision_id", "waiting_feedback", ["decision_id"])
    op.create_table(
        "applied_feedback",
        sa.Column("feedback_id", NAME, nullable=False),
        sa.Column("decision_id", NAME, nullable=False),
        sa.Column("applied_at", sa.Float(), nullable=False),
        sa.Column("policy_version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("feedback_id", name="pk_applied_feedback"),
        # The database's own guard against applying feedback to one decision twice.
        sa.UniqueConstraint("decision_id", name="uq_applied_feedback_decision_id"),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("source_topic", NAME, nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("key", NAME, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dead_letters"),
    )
    op.create_index("ix_dead_letters_key", "dead_letters", ["key"])
    op.create_table(
        "counters",
        sa.Column("name", NAME, nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_counters"),
    )


def downgrade() -> None:
    for index, table in (
        ("ix_dead_letters_key", "dead_letters"),
        ("ix_waiting_feedback_decision_id", "waiting_feedback"),
        ("ix_event_log_key", "event_log"),
        ("ix_event_log_topic_offset", "event_log"),
    ):
        op.drop_index(index, table_name=table)
    for table in (
        "counters",
        "dead_letters",
        "applied_feedback",
        "waiting_feedback",
        "pending_decisions",
        "consumer_offsets",
        "policy_snapshots",
        "catalog_models",
        "event_log",
    ):
        op.drop_table(table)
