"""`Storage`: the service's reads and writes, one job per method, in plain Python values.

The learner's whole progress (snapshots, consumer offsets, join-store changes, dead letters,
counters) is written by `Storage.commit_checkpoint` in ONE transaction (DESIGN.md section 6).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from bandit_router.catalog import CatalogError, CatalogModel
from bandit_router.storage.checkpoint import Checkpoint, Lease, LoadedCheckpoint, Snapshot
from bandit_router.storage.errors import CheckpointRejectedError, LeaseLostError
from bandit_router.storage.schema import (
    AppliedFeedbackRow,
    CatalogModelRow,
    ConsumerOffsetRow,
    CounterRow,
    DeadLetterRow,
    LearnerLeaseRow,
    PendingDecisionRow,
    PolicySnapshotRow,
    ServiceConfigRow,
    WaitingFeedbackRow,
)
from bandit_router.storage.state_codec import decode_state, encode_state
from streams.outbox import OUTBOX, outbox_rows

DECISIONS = "decisions"  # counters the API keeps
FEEDBACK_RECEIVED = "feedback_received"
SNAPSHOTS_KEPT = 5  # per policy; older ones are pruned in the checkpoint that supersedes them
_IN_LIST_CHUNK = 500  # ids per DELETE ... IN (...), well under SQLite's bound-parameter limit


class Storage:
    """Reads and writes of the catalog, the learner's checkpoints and the API's queries.

    Every method runs in its own short transaction; ``clock`` stamps catalog and snapshot rows.
    """

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._clock = clock

    # --- catalog ---------------------------------------------------------------------------

    def list_models(self, include_removed: bool = False) -> list[CatalogModel]:
        """Catalog models by name; removed ones only if ``include_removed``."""
        query = select(CatalogModelRow).order_by(CatalogModelRow.name)
        if not include_removed:
            query = query.where(CatalogModelRow.removed_at.is_(None))
        with self._sessions() as session:
            return [_catalog_model(row) for row in session.scalars(query)]

    def get_model(self, name: str, include_removed: bool = False) -> CatalogModel | None:
        """The model called ``name``; None if unknown, or removed unless ``include_removed``."""
        with self._sessions() as session:
            row = session.get(CatalogModelRow, name)
            if row is None or (row.removed_at is not None and not include_removed):
                return None
            return _catalog_model(row)

    def put_model(self, model: CatalogModel) -> bool:
        """Create or replace ``model``; True if it was created or revived from removal."""
        with self._sessions.begin() as session:
            row = session.get(CatalogModelRow, model.name)
            created = row is None or row.removed_at is not None
            if row is None:
                row = CatalogModelRow(name=model.name)
                session.add(row)
            _copy_catalog_fields(model, row)
            row.removed_at = None
            row.updated_at = self._clock()
        return created

    def remove_model(self, name: str) -> bool:
        """Soft-delete ``name`` (its history stays; it is no longer routable). False if it was
        unknown or already removed."""
        now = self._clock()
        with self._sessions.begin() as session:
            result = session.execute(
                update(CatalogModelRow)
                .where(CatalogModelRow.name == name, CatalogModelRow.removed_at.is_(None))
                .values(removed_at=now, updated_at=now)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def seed_catalog(self, models: Iterable[CatalogModel]) -> int:
        """Insert ``models`` if the catalog has never held a model (removed ones count: an
        operator's removals are not undone). Returns how many were inserted."""
        models = list(models)
        names = [model.name for model in models]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise CatalogError(f"seed catalog lists {', '.join(duplicates)} more than once")
        now = self._clock()
        try:
            with self._sessions.begin() as session:
                if session.scalar(select(func.count()).select_from(CatalogModelRow)):
                    return 0
                for model in models:
                    row = CatalogModelRow(name=model.name, removed_at=None, updated_at=now)
                    _copy_catalog_fields(model, row)
                    session.add(row)
        except IntegrityError:  # another replica starting at the same moment seeded it first
            return 0
        return len(models)

    # --- learner checkpoints ---------------------------------------------------------------

    def commit_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Write all of ``checkpoint`` in one transaction, or nothing of it.

        Raises `CheckpointRejectedError` if it breaks a constraint (feedback applied to a decision
        twice, a snapshot version reused); the database is then as it was before the call.
        """
        now = self._clock()
        # Encode before the transaction opens: it stays short, and a bad state fails before writing.
        snapshots = [
            {"policy": p, "version": v, "events": e, "state": encode_state(s), "created_at": now}
            for p, v, e, s in checkpoint.snapshots
        ]
        try:
            with self._sessions.begin() as session:
                # First, so the lease row stays locked until the commit: a learner taking over
                # waits for this transaction and then loads what it wrote.
                if checkpoint.lease is not None and not _renew(session, checkpoint.lease, now):
                    raise LeaseLostError(
                        f"learner {checkpoint.lease.holder!r} lost the lease of consumer group "
                        f"{checkpoint.group!r} (epoch {checkpoint.lease.epoch}) to another "
                        "learner; nothing of this checkpoint was written"
                    )
                _insert(session, PolicySnapshotRow, snapshots)
                _prune_snapshots(session, {policy for policy, *_ in checkpoint.snapshots})
                for (topic, partition), next_offset in checkpoint.offsets.items():
                    session.merge(
                        ConsumerOffsetRow(
                            group=checkpoint.group,
                            topic=topic,
                            partition=partition,
                            next_offset=next_offset,
                        )
                    )
                # Adds before removes: a row added and consumed within one checkpoint nets out.
                _insert(session, PendingDecisionRow, _decision_rows(checkpoint.added_decisions))
                _delete_keys(
                    session, PendingDecisionRow.decision_id, checkpoint.removed_decision_ids
                )
                _insert(session, WaitingFeedbackRow, _waiting_rows(checkpoint.added_waiting))
                _delete_keys(
                    session, WaitingFeedbackRow.feedback_id, checkpoint.removed_waiting_ids
                )
                _insert(session, DeadLetterRow, _dead_letter_rows(checkpoint.dead_letters))
                _add_counters(session, checkpoint.counters)
                _insert(session, AppliedFeedbackRow, _applied_rows(checkpoint.applied))
                if checkpoint.outbox:
                    session.execute(insert(OUTBOX), outbox_rows(checkpoint.outbox, now))
        except IntegrityError as error:
            raise CheckpointRejectedError(
                f"checkpoint of consumer group {checkpoint.group!r} was rolled back, nothing of it "
                f"was written: {error.orig} (feedback applied to a decision twice, or a snapshot "
                "version reused?)"
            ) from error

    # --- the learner lease -------------------------------------------------------------------

    def acquire_lease(
        self, group: str, holder: str, ttl_s: float, *, take_over: bool = False
    ) -> Lease | None:
        """Become the active learner of ``group`` for ``ttl_s`` seconds, with a new epoch.

        Succeeds if nobody holds the lease, it expired, ``holder`` already holds it, or
        ``take_over`` (a single-process service that knows no other learner can be alive);
        returns None while another learner holds it. Every checkpoint renews it.
        """
        now = self._clock()
        claim = update(LearnerLeaseRow).where(LearnerLeaseRow.group == group)
        if not take_over:
            claim = claim.where(
                (LearnerLeaseRow.holder == holder) | (LearnerLeaseRow.expires_at < now)
            )
        claim = claim.values(
            holder=holder, epoch=LearnerLeaseRow.epoch + 1, expires_at=now + ttl_s
        ).returning(LearnerLeaseRow.epoch)
        try:
            with self._sessions.begin() as session:
                epoch = session.scalar(claim)
                if epoch is None:
                    if session.get(LearnerLeaseRow, group) is not None:
                        return None
                    session.add(
                        LearnerLeaseRow(group=group, holder=holder, epoch=1, expires_at=now + ttl_s)
                    )
                    epoch = 1
        except IntegrityError:  # another learner created the row first
            return None
        return Lease(group, holder, int(epoch), ttl_s)

    def renew_lease(self, lease: Lease) -> bool:
        """Extend ``lease`` by its ttl; False if another learner took it over."""
        with self._sessions.begin() as session:
            return _renew(session, lease, self._clock())

    def release_lease(self, lease: Lease) -> None:
        """Let a standby take over at once (a clean shutdown); no-op if already taken over."""
        with self._sessions.begin() as session:
            session.execute(
                update(LearnerLeaseRow)
                .where(LearnerLeaseRow.group == lease.group, LearnerLeaseRow.epoch == lease.epoch)
                .values(expires_at=0.0)
            )

    def lease_holder(self, group: str) -> tuple[str, int, float] | None:
        """``(holder, epoch, expires_at)`` of ``group``'s lease, if it ever had one."""
        with self._sessions() as session:
            row = session.get(LearnerLeaseRow, group)
            return None if row is None else (row.holder, row.epoch, row.expires_at)

    def load_checkpoint(self, group: str, applied_since: float | None = None) -> LoadedCheckpoint:
        """The last committed state of consumer group ``group`` (empty if it never committed),
        with the applied feedback of ``applied_since`` or later (all if None): the joiner needs
        only the recent ones, the table keeps every one for ``GET /v1/decisions``."""
        with self._sessions() as session:
            offsets = session.execute(
                select(
                    ConsumerOffsetRow.topic,
                    ConsumerOffsetRow.partition,
                    ConsumerOffsetRow.next_offset,
                ).where(ConsumerOffsetRow.group == group)
            )
            pending = session.execute(
                select(PendingDecisionRow.payload, PendingDecisionRow.received_at).order_by(
                    PendingDecisionRow.received_at, PendingDecisionRow.decision_id
                )
            )
            waiting = session.execute(
                select(WaitingFeedbackRow.payload, WaitingFeedbackRow.arrived_at).order_by(
                    WaitingFeedbackRow.arrived_at, WaitingFeedbackRow.feedback_id
                )
            )
            recent = select(
                AppliedFeedbackRow.decision_id,
                AppliedFeedbackRow.feedback_id,
                AppliedFeedbackRow.applied_at,
            ).order_by(AppliedFeedbackRow.applied_at, AppliedFeedbackRow.feedback_id)
            if applied_since is not None:
                recent = recent.where(AppliedFeedbackRow.applied_at >= applied_since)
            applied = session.execute(recent)
            return LoadedCheckpoint(
                snapshots=_newest_snapshots(session, None),
                offsets={(topic, partition): offset for topic, partition, offset in offsets},
                pending_decisions=[(payload, at) for payload, at in pending],
                waiting_feedback=[(payload, at) for payload, at in waiting],
                applied=[(decision_id, feedback_id, at) for decision_id, feedback_id, at in applied],
            )

    def newest_snapshots(self, policies: Iterable[str] | None = None) -> dict[str, Snapshot]:
        """The newest snapshot of each policy (of ``policies`` only, if given)."""
        with self._sessions() as session:
            return _newest_snapshots(session, None if policies is None else list(policies))

    def snapshot_versions(self) -> dict[str, int]:
        """Policy -> newest snapshot version: a cheap poll for API replicas deciding to reload."""
        query = select(PolicySnapshotRow.policy, func.max(PolicySnapshotRow.version)).group_by(
            PolicySnapshotRow.policy
        )
        with self._sessions() as session:
            return {policy: version for policy, version in session.execute(query)}

    # --- API queries -----------------------------------------------------------------------

    def decision_status(self, decision_id: str) -> tuple[str, dict[str, Any]] | None:
        """Where the learner is with ``decision_id``, the first that holds of:

        - ``("applied", {"feedback_id", "applied_at", "policy_version"})``
        - ``("pending", {"decision_received_at", "feedback_arrived_at"})`` (either may be None:
          the decision awaits feedback, or feedback awaits the decision)
        - ``("dead_lettered", {"reason", "source_topic", "partition", "offset", "created_at"})``
          (the newest dead letter keyed by this decision)

        None if the learner has no record of it (unknown, or not consumed yet).
        """
        with self._sessions() as session:
            applied = session.scalars(
                select(AppliedFeedbackRow).where(AppliedFeedbackRow.decision_id == decision_id)
            ).first()
            if applied is not None:
                return "applied", {
                    "feedback_id": applied.feedback_id,
                    "applied_at": applied.applied_at,
                    "policy_version": applied.policy_version,
                }
            decision = session.get(PendingDecisionRow, decision_id)
            waiting = session.scalars(
                select(WaitingFeedbackRow)
                .where(WaitingFeedbackRow.decision_id == decision_id)
                .order_by(WaitingFeedbackRow.arrived_at)
            ).first()
            if decision is not None or waiting is not None:
                return "pending", {
                    "decision_received_at": None if decision is None else decision.received_at,
                    "feedback_arrived_at": None if waiting is None else waiting.arrived_at,
                }
            letter = session.scalars(
                select(DeadLetterRow)
                .where(DeadLetterRow.key == decision_id)
                .order_by(DeadLetterRow.id.desc())
            ).first()
            if letter is not None:
                return "dead_lettered", {
                    "reason": letter.reason,
                    "source_topic": letter.source_topic,
                    "partition": letter.partition,
                    "offset": letter.offset,
                    "created_at": letter.created_at,
                }
            return None

    def stats(self) -> dict[str, int]:
        """Service totals: every counter (``decisions`` and ``feedback_received`` always present),
        ``feedback_applied``, ``dead_letters``, ``pending_decisions`` and ``waiting_feedback``."""
        with self._sessions() as session:
            totals = {DECISIONS: 0, FEEDBACK_RECEIVED: 0}
            totals.update(
                {
                    name: value
                    for name, value in session.execute(select(CounterRow.name, CounterRow.value))
                }
            )
            for name, model in (
                ("feedback_applied", AppliedFeedbackRow),
                ("dead_letters", DeadLetterRow),
                ("pending_decisions", PendingDecisionRow),
                ("waiting_feedback", WaitingFeedbackRow),
            ):
                totals[name] = session.scalar(select(func.count()).select_from(model)) or 0
            return totals

    def add_counter(self, name: str, delta: int) -> None:
        """Add ``delta`` to counter ``name`` (created at 0 if new), atomically."""
        with self._sessions.begin() as session:
            _add_counters(session, {name: delta})

    def counter(self, name: str) -> int:
        """The value of counter ``name`` (0 if it was never added to)."""
        with self._sessions() as session:
            return session.scalar(select(CounterRow.value).where(CounterRow.name == name)) or 0

    # --- service config --------------------------------------------------------------------

    def config_value(self, key: str) -> str | None:
        """The stored value of run-time setting ``key`` (e.g. ``serving_policy``); None if unset."""
        with self._sessions() as session:
            return session.scalar(select(ServiceConfigRow.value).where(ServiceConfigRow.key == key))

    def set_config_value(self, key: str, value: str) -> None:
        """Store run-time setting ``key`` (replacing any earlier value)."""
        with self._sessions.begin() as session:
            session.merge(ServiceConfigRow(key=key, value=value, updated_at=self._clock()))


def _catalog_model(row: CatalogModelRow) -> CatalogModel:
    return CatalogModel(
        name=row.name,
        price_in_per_m=row.price_in_per_m,
        price_out_per_m=row.price_out_per_m,
        price_per_call=row.price_per_call,
        enabled=row.enabled,
        typical_input_tokens=row.typical_input_tokens,
        typical_output_tokens=row.typical_output_tokens,
        prior_quality=row.prior_quality,
    )


def _copy_catalog_fields(model: CatalogModel, row: CatalogModelRow) -> None:
    row.price_in_per_m = model.price_in_per_m
    row.price_out_per_m = model.price_out_per_m
    row.price_per_call = model.price_per_call
    row.enabled = model.enabled
    row.typical_input_tokens = model.typical_input_tokens
    row.typical_output_tokens = model.typical_output_tokens
    row.prior_quality = model.prior_quality


def _newest_snapshots(session: Session, policies: list[str] | None) -> dict[str, Snapshot]:
    newest = select(
        PolicySnapshotRow.policy, func.max(PolicySnapshotRow.version).label("version")
    ).group_by(PolicySnapshotRow.policy)
    if policies is not None:
        newest = newest.where(PolicySnapshotRow.policy.in_(policies))
    latest = newest.subquery()
    query = select(PolicySnapshotRow).join(
        latest,
        (PolicySnapshotRow.policy == latest.c.policy)
        & (PolicySnapshotRow.version == latest.c.version),
    )
    return {
        row.policy: Snapshot(row.version, row.events, decode_state(row.state))
        for row in session.scalars(query)
    }


def _prune_snapshots(session: Session, policies: Iterable[str]) -> None:
    for policy in policies:
        oldest_kept = session.scalar(
            select(PolicySnapshotRow.version)
            .where(PolicySnapshotRow.policy == policy)
            .order_by(PolicySnapshotRow.version.desc())
            .offset(SNAPSHOTS_KEPT - 1)
            .limit(1)
        )
        if oldest_kept is not None:
            session.execute(
                delete(PolicySnapshotRow).where(
                    PolicySnapshotRow.policy == policy, PolicySnapshotRow.version < oldest_kept
                )
            )


def _renew(session: Session, lease: Lease, now: float) -> bool:
    result = session.execute(
        update(LearnerLeaseRow)
        .where(
            LearnerLeaseRow.group == lease.group,
            LearnerLeaseRow.holder == lease.holder,
            LearnerLeaseRow.epoch == lease.epoch,
        )
        .values(expires_at=now + lease.ttl_s)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _add_counters(session: Session, deltas: dict[str, int]) -> None:
    for name, delta in deltas.items():
        # UPDATE ... SET value = value + delta is atomic under concurrent writers; the INSERT
        # happens only the first time a counter is used.
        result = session.execute(
            update(CounterRow).where(CounterRow.name == name).values(value=CounterRow.value + delta)
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            session.execute(insert(CounterRow).values(name=name, value=delta))


def _insert(session: Session, model: type[Any], rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` (dicts with the same keys) into ``model``'s table.

    On PostgreSQL through ``COPY ... FROM STDIN``: a checkpoint writes thousands of rows, and an
    executemany there costs a statement per row (psycopg 3 pipelines them, still ~20 µs a row).
    """
    if not rows:  # an executemany with no rows would insert one row of defaults
        return
    if session.get_bind().dialect.name != "postgresql":
        session.execute(insert(model), rows)
        return
    columns = list(rows[0])
    copy_rows = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(model.__tablename__), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    table = model.__table__
    dialect = session.get_bind().dialect
    # Binary COPY (text would hex-escape every snapshot byte) needs each column's type by name.
    types = [table.c[column].type.compile(dialect).split("(")[0].lower() for column in columns]
    types = ["float8" if name == "float" else name for name in types]  # FLOAT is FLOAT(53) there
    cursor = session.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(copy_rows) as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row([row[column] for column in columns])
    except psycopg.IntegrityError as error:  # as SQLAlchemy raises it for every other statement
        raise IntegrityError(str(copy_rows), None, error) from error


def _delete_keys(session: Session, key: InstrumentedAttribute[str], values: Sequence[str]) -> None:
    for start in range(0, len(values), _IN_LIST_CHUNK):
        chunk = list(values[start : start + _IN_LIST_CHUNK])
        session.execute(delete(key.class_).where(key.in_(chunk)))


def _decision_rows(added: list[tuple[str, bytes, float]]) -> list[dict[str, Any]]:
    return [
        {"decision_id": decision_id, "payload": payload, "received_at": received_at}
        for decision_id, payload, received_at in added
    ]


def _waiting_rows(added: list[tuple[str, str, bytes, float]]) -> list[dict[str, Any]]:
    return [
        {"feedback_id": f, "decision_id": d, "payload": payload, "arrived_at": at}
        for f, d, payload, at in added
    ]


def _applied_rows(applied: list[tuple[str, str, float, int]]) -> list[dict[str, Any]]:
    return [
        {"feedback_id": f, "decision_id": d, "applied_at": at, "policy_version": version}
        for f, d, at, version in applied
    ]


def _dead_letter_rows(
    letters: list[tuple[str, int, int, str, str, bytes, float]],
) -> list[dict[str, Any]]:
    return [
        {
            "source_topic": topic,
            "partition": partition,
            "offset": offset,
            "key": key,
            "reason": reason,
            "payload": payload,
            "created_at": created_at,
        }
        for topic, partition, offset, key, reason, payload, created_at in letters
    ]
