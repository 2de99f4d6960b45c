"""The database tables the service owns, as SQLAlchemy 2 ORM models.

Alembic migrations under ``migrations/`` create them; this module is their single description (a
test checks the migrated schema and these models do not drift apart).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAME_LENGTH = 200  # model, policy, topic, group and event ids; the same width as event_log's key

# Deterministic constraint names, identical on SQLite and Postgres, so later migrations can
# refer to (drop, alter) a constraint by name.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Tables the migrations create that belong to another package: `streams.embedded` owns the
# embedded bus's log and `streams.outbox` the outbox, each described with Core metadata.
# Autogenerate must not propose dropping them just because they are absent from `Base.metadata`.
TABLES_OWNED_ELSEWHERE = frozenset({"event_log", "outbox"})


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class CatalogModelRow(Base):
    """A routable model. Removal is soft (``removed_at`` set) so its history stays meaningful."""

    __tablename__ = "catalog_models"

    name: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    price_in_per_m: Mapped[float] = mapped_column(Float)
    price_out_per_m: Mapped[float] = mapped_column(Float)
    price_per_call: Mapped[float] = mapped_column(Float)
    enabled: Mapped[bool]
    typical_input_tokens: Mapped[int] = mapped_column(Integer)
    typical_output_tokens: Mapped[int] = mapped_column(Integer)
    prior_quality: Mapped[float | None] = mapped_column(Float)
    removed_at: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class PolicySnapshotRow(Base):
    """One saved policy state (``np.savez`` bytes); the newest few per policy are kept."""

    __tablename__ = "policy_snapshots"
    __table_args__ = (UniqueConstraint("policy", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    policy: Mapped[str] = mapped_column(String(NAME_LENGTH))
    version: Mapped[int] = mapped_column(Integer)
    events: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)


class ConsumerOffsetRow(Base):
    """The next offset a consumer group reads in one partition (committed with the snapshots)."""

    __tablename__ = "consumer_offsets"

    group: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    topic: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    next_offset: Mapped[int] = mapped_column(BigInteger)


class PendingDecisionRow(Base):
    """A decision the learner has seen whose feedback has not arrived yet."""

    __tablename__ = "pending_decisions"

    decision_id: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[float] = mapped_column(Float)


class WaitingFeedbackRow(Base):
    """Feedback whose decision has not been seen yet; it waits up to the join horizon."""

    __tablename__ = "waiting_feedback"

    feedback_id: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    decision_id: Mapped[str] = mapped_column(String(NAME_LENGTH), index=True)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    arrived_at: Mapped[float] = mapped_column(Float)


class AppliedFeedbackRow(Base):
    """Feedback the policies have learned from. The unique ``decision_id`` is the database's own
    guard against applying feedback to one decision twice."""

    __tablename__ = "applied_feedback"

    feedback_id: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    decision_id: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    applied_at: Mapped[float] = mapped_column(Float, index=True)
    policy_version: Mapped[int] = mapped_column(Integer)


class DeadLetterRow(Base):
    """An event the learner could not use, with the reason and the original bytes."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source_topic: Mapped[str] = mapped_column(String(NAME_LENGTH))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    key: Mapped[str] = mapped_column(String(NAME_LENGTH), index=True)
    reason: Mapped[str] = mapped_column(Text)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)


class CounterRow(Base):
    """A service total that must survive restarts (``decisions``, ``feedback_received``)."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class LearnerLeaseRow(Base):
    """Which learner process is the active one of a consumer group, until when, and its epoch.

    Every checkpoint renews the lease in its own transaction, checking the epoch: a learner that
    lost the lease (it stalled past ``expires_at`` and another took over) can no longer commit.
    """

    __tablename__ = "learner_leases"

    group: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    holder: Mapped[str] = mapped_column(String(NAME_LENGTH))
    epoch: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[float] = mapped_column(Float)
class ServiceConfigRow(Base):
    """An operator's run-time choice that outlives the process and reaches every replica
    (``serving_policy``), as text under a key."""

    __tablename__ = "service_config"

    key: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[float] = mapped_column(Float)


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic autogenerate filter: leave tables owned by other packages alone."""
    return not (type_ == "table" and name in TABLES_OWNED_ELSEWHERE)
