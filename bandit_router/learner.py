"""The learner: consumes decisions and feedback, joins them, updates every policy, and commits its
whole progress in one transaction (DESIGN.md section 6), so a crash replays exactly what is lost.

A plain class (`run_once` / `run_forever`); `LearnerThread` runs it inside the API process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from bandit_router.config import Settings
from bandit_router.featurizer import Featurizer
from bandit_router.policy_set import PolicySet, prior_outcome
from bandit_router.storage import (
    DECISIONS,
    FEEDBACK_RECEIVED,
    Checkpoint,
    Lease,
    LeaseLostError,
    LoadedCheckpoint,
    Storage,
    StorageError,
)
from policies import LoggedEvents
from streams import (
    TOPIC_DEADLETTER,
    TOPIC_DECISIONS,
    TOPIC_FEEDBACK,
    Bus,
    DeadLetter,
    DecisionEvent,
    EventError,
    FeedbackEvent,
    Joined,
    Joiner,
    Record,
    Rejected,
    decode,
    encode,
)
from streams.outbox import OutboxBus

if TYPE_CHECKING:
    from bandit_router.tracking import LearnerTracker

log = logging.getLogger(__name__)

GROUP = "learner"
POLL_RECORDS = 500
POLL_TIMEOUT_S = 0.1
# After a short batch, wait this long before reading again: records then arrive in batches, so the
# learner does not wake (and contend for the GIL) on every single routed request.
LINGER_S = 0.02
UNKNOWN_OFFSET = -1  # a dead letter whose source offset was lost (it waited across a restart)
LEARN_BATCH = 256  # joined pairs the policies learn at once (and the most a route waits for)
YIELD_EVERY = 32  # records between yields of the GIL (a yield costs a syscall, more on a busy CPU)
DECISION_WAIT_S = 0.5  # one poll for more decisions when a feedback's is not known yet...
MAX_DECISION_WAIT_S = 5.0  # ...and how long to keep polling while the bus says there are more


class Learner:
    """Applies joined (decision, feedback) pairs to every policy of a `PolicySet` exactly once.

    Progress since the last commit lives in memory: the offsets read, the join-store changes, the
    applied feedback, dead letters and counters. `commit` writes all of it with the policy
    snapshots in one `Storage.commit_checkpoint`; after a crash `open` resumes from that commit.

    Order: every feedback's decision was published before the feedback was, so before applying a
    feedback whose decision it has not seen, the learner reads on in the decisions topic until it
    finds it (or nothing is left). A decision is therefore known before the feedback that follows
    it, and the policies learn in the order of the feedback log, not in the order the bus happened
    to deliver the two topics: a run that crashed and resumed ends in the same state as one that
    did not (exactly so with one feedback partition; with several, their relative order is the
    bus's).

    Lease: with a ``lease``, every commit renews it and fails with `LeaseLostError` if another
    learner took the group over (this one then stops without writing anything).

    Time: the joiner sees each record's bus timestamp, and expiry runs on the newest timestamp of
    the batch while catching up (the wall clock once caught up), so a replay after downtime makes
    the same join decisions and does not expire feedback whose decision is still further on.
    """

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        bus: Bus,
        policies: PolicySet,
        checkpoint: LoadedCheckpoint,
        *,
        group: str = GROUP,
        lease: Lease | None = None,
        clock: Callable[[], float] = time.time,
        tracker: LearnerTracker | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.lease = lease
        self.tracker = tracker  # MLflow metrics; sees each event before the policies learn it
        self.storage = storage
        self.policies = policies
        self.group = group
        self._clock = clock
        self._feature_dim = settings.feature_dim
        self._joiner = Joiner.restore(
            horizon_s=settings.join_horizon_s,
            decision_ttl_s=settings.decision_ttl_s,
            pending_decisions=[(_decision(p), at) for p, at in checkpoint.pending_decisions],
            waiting=[(_feedback(p), at) for p, at in checkpoint.waiting_feedback],
            applied=checkpoint.applied,
            max_pending=settings.max_pending_decisions,
        )
        self._offsets = dict(checkpoint.offsets)
        self._decisions = bus.consumer([TOPIC_DECISIONS], group, self._start_offset)
        self._feedback = bus.consumer([TOPIC_FEEDBACK], group, self._start_offset)
        self._last_renewal = time.monotonic()
        # Where each waiting feedback came from, for its dead letter should it never join.
        self._origins: dict[str, tuple[str, int, int]] = {}
        self._committed_versions = {name: p.updates for name, p in policies.items()}
        self._reset_batch()
        # Totals of this process, for metrics.
        self.applied_total = 0
        self.dead_letters_total = 0
        self.commits_total = 0

    @classmethod
    def open(
        cls,
        settings: Settings,
        storage: Storage,
        bus: Bus,
        featurizer: Featurizer,
        *,
        group: str = GROUP,
        lease: Lease | None = None,
        clock: Callable[[], float] = time.time,
        tracker: LearnerTracker | None = None,
    ) -> Learner:
        """A learner resumed from the last checkpoint of ``group``, policies included."""
        checkpoint = storage.load_checkpoint(group, applied_since=clock() - settings.decision_ttl_s)
        policies = PolicySet.load(settings, featurizer, storage.list_models(), checkpoint.snapshots)
        return cls(
            settings,
            storage,
            bus,
            policies,
            checkpoint,
            group=group,
            lease=lease,
            clock=clock,
            tracker=tracker,
        )

    # --- the loop --------------------------------------------------------------------------------
    def run_once(self, timeout_s: float = POLL_TIMEOUT_S) -> int:
        """Read and apply one batch, expire overdue feedback, commit if due; returns how many
        records it read."""
        records = self._decisions.poll(max_records=POLL_RECORDS, timeout_s=0)
        self._handle_all(records)
        feedback = self._feedback.poll(max_records=POLL_RECORDS, timeout_s=0 if records else timeout_s)
        exhausted = False  # no decision left to read for now
        for record in _paced(feedback):
            if not exhausted and not self._joiner.knows_decision(record.key):
                exhausted, read = self._read_decisions_until(record)
                records += read
            self._handle(record)
        records += feedback
        self._learn_queued()
        now = max(record.ts for record in records) if records else self._clock()
        for rejected in self._joiner.expire(now):
            self._dead_letter_feedback(rejected)
        if self._due():
            self.commit()
        elif self.lease is not None and time.monotonic() - self._last_renewal > self.lease.ttl_s / 3:
            self._renew()
        return len(records)

    def _read_decisions_until(self, feedback: Record) -> tuple[bool, list[Record]]:
        """Read (and handle) decisions until the feedback's decision is among them or none seem
        left; returns (none left, the records read).

        A feedback is published after its decision, so this finds it unless the decision never
        existed. "None left" is judged three ways: a decision stamped at or after the feedback was
        read (the producers' clocks agree), or an empty poll while the bus says it is at the end
        (as of its last fetch, which can be stale on a slow broker: hence a long poll), or
        `MAX_DECISION_WAIT_S` passed.
        """
        read: list[Record] = []
        give_up = time.monotonic() + MAX_DECISION_WAIT_S
        while True:
            batch = self._decisions.poll(max_records=POLL_RECORDS, timeout_s=DECISION_WAIT_S)
            self._handle_all(batch)
            read += batch
            if self._joiner.knows_decision(feedback.key):
                return False, read
            passed = bool(batch) and max(record.ts for record in batch) >= feedback.ts
            at_end = not batch and self._decisions.caught_up()
            if passed or at_end or time.monotonic() > give_up:
                return True, read

    def _handle_all(self, records: list[Record]) -> None:
        for record in _paced(records):
            self._handle(record)

    def run_forever(self, stop: threading.Event) -> None:
        """`run_once` until ``stop`` is set, then commit what is left."""
        while not stop.is_set():
            if self.run_once() < POLL_RECORDS:
                stop.wait(LINGER_S)
        self.close()

    def close(self) -> None:
        """Commit what is left, stop reading, hand the lease on (a standby takes over now) and
        finish the MLflow run."""
        self.commit()
        self.stop_reading()
        if self.lease is not None:
            self.storage.release_lease(self.lease)
        if self.tracker is not None:
            self.tracker.close()

    def stop_reading(self) -> None:
        """Release the consumers without committing (after `LeaseLostError`, say)."""
        self._decisions.close()
        self._feedback.close()

    def _renew(self) -> None:
        assert self.lease is not None
        if not self.storage.renew_lease(self.lease):
            raise LeaseLostError(
                f"learner {self.lease.holder!r} lost the lease of consumer group {self.group!r}"
                f" (epoch {self.lease.epoch}) to another learner"
            )
        self._last_renewal = time.monotonic()

    def commit(self) -> None:
        """Write everything since the last commit, with changed policies' snapshots, atomically."""
        self._learn_queued()
        if not self._dirty:
            return
        changes = self._joiner.take_changes()
        snapshots = []
        for name, policy in self.policies.items():
            # Only this thread updates policies, so taking the lock per policy (not around all of
            # them) still snapshots one consistent point, and routes wait for one copy at most.
            with self.policies.lock:
                if policy.updates != self._committed_versions.get(name):
                    snapshots.append((name, policy.updates, policy.updates, policy.state()))
        checkpoint = Checkpoint(
            group=self.group,
            snapshots=snapshots,
            offsets=dict(self._offsets),
            added_decisions=[
                (d.decision_id, self._decision_bytes.get(d.decision_id) or encode(d), at)
                for d, at in changes.added_decisions
            ],
            removed_decision_ids=changes.removed_decision_ids,
            added_waiting=[
                (f.feedback_id, f.decision_id, encode(f), at) for f, at in changes.added_waiting
            ],
            removed_waiting_ids=changes.removed_waiting_ids,
            applied=self._applied,
            dead_letters=self._dead_letters,
            counters={name: n for name, n in self._counters.items() if n},
            outbox=[
                (TOPIC_DEADLETTER, key, encode(DeadLetter.of(topic, partition, offset, value, why)))
                for topic, partition, offset, key, why, value, _ in self._dead_letters
            ],
            lease=self.lease,
        )
        self.storage.commit_checkpoint(checkpoint)
        self._last_renewal = time.monotonic()
        if checkpoint.outbox and isinstance(self.bus, OutboxBus):
            self.bus.notify()
        self._committed_versions.update({name: version for name, version, *_ in snapshots})
        self.applied_total += len(self._applied)
        self.dead_letters_total += len(self._dead_letters)
        self.commits_total += 1
        self._reset_batch()
        if self.tracker is not None:
            self.tracker.flush(self.policies.serving)

    # --- one record ------------------------------------------------------------------------------
    def _handle(self, record: Record) -> None:
        self._offsets[(record.topic, record.partition)] = record.offset + 1
        self._uncommitted += 1
        self._dirty = True
        try:
            event = decode(record.value)
        except EventError as error:
            self._dead_letter(record, str(error))
            return
        expected = DecisionEvent if record.topic == TOPIC_DECISIONS else FeedbackEvent
        if not isinstance(event, expected):
            self._dead_letter(
                record, f"topic {record.topic} carries {expected.SCHEMA} events, got {event.SCHEMA}"
            )
            return
        if event.decision_id != record.key:
            self._dead_letter(
                record,
                f"record key {record.key!r} is not the event's decision_id {event.decision_id!r};"
                " both topics are keyed by decision_id",
            )
            return
        if isinstance(event, DecisionEvent):
            if event.features.dim != self._feature_dim:
                self._dead_letter(
                    record,
                    f"field 'features.dim' is {event.features.dim}; the policies read "
                    f"feature_dim = {self._feature_dim} features",
                )
                return
            self._counters[DECISIONS] += 1
            self._decision_bytes[event.decision_id] = record.value  # stored as is if it waits
            results = self._joiner.add_decision(event, now=record.ts)
        else:
            self._counters[FEEDBACK_RECEIVED] += 1
            waiting = self._joiner.waiting_feedback
            result = self._joiner.add_feedback(event, now=record.ts)
            results = [] if result is None else [result]
            if result is None and self._joiner.waiting_feedback > waiting:
                self._origins[event.feedback_id] = (record.topic, record.partition, record.offset)
        for outcome in results:
            if isinstance(outcome, Joined):
                self._apply(outcome)
            else:
                self._dead_letter_feedback(outcome)

    def _apply(self, joined: Joined) -> None:
        """Queue a joined pair; `_learn_queued` applies the queue in order, in batches."""
        self._origins.pop(joined.feedback.feedback_id, None)
        self._joined.append(joined)
        if len(self._joined) >= LEARN_BATCH:
            self._learn_queued()

    def _learn_queued(self) -> None:
        """Every policy learns the queued pairs with one `update_many` (a batch costs far less
        than as many single updates). The lock is held per batch, so routes wait for one at most.
        The tracker sees each event before the policies learn it, as of the batch's start."""
        queued, self._joined = self._joined, []
        if not queued:
            return
        now = self._clock()
        events = logged_events(queued, self._feature_dim)
        with self.policies.lock:
            for arm in dict.fromkeys(events.arms):
                if any(arm not in policy.arm_index for _, policy in self.policies.items()):
                    self.policies.ensure_arm(arm, prior_outcome(self.storage.get_model(arm, True)))
            if self.tracker is not None:
                self.tracker.observe(self.policies, [joined.decision for joined in queued], events)
            version = self.policies.serving_policy.updates
            for _, policy in self.policies.items():
                policy.update_many(events)
        self._applied.extend(
            (joined.feedback.feedback_id, joined.decision.decision_id, now, version + i)
            for i, joined in enumerate(queued, 1)
        )

    def _dead_letter(self, record: Record, reason: str) -> None:
        self._dead_letters.append(
            (
                record.topic,
                record.partition,
                record.offset,
                record.key,
                reason,
                record.value,
                self._clock(),
            )
        )

    def _dead_letter_feedback(self, rejected: Rejected) -> None:
        feedback = rejected.feedback
        topic, partition, offset = self._origins.pop(
            feedback.feedback_id, (TOPIC_FEEDBACK, 0, UNKNOWN_OFFSET)
        )
        self._dead_letters.append(
            (
                topic,
                partition,
                offset,
                feedback.decision_id,
                rejected.reason,
                encode(feedback),
                self._clock(),
            )
        )
        self._dirty = True

    # --- bookkeeping -----------------------------------------------------------------------------
    def _start_offset(self, topic: str, partition: int) -> int:
        return self._offsets.get((topic, partition), 0)

    def _due(self) -> bool:
        if not self._dirty:
            return False
        if self._uncommitted >= self.settings.snapshot_every_events:
            return True
        return time.monotonic() - self._last_commit >= self.settings.snapshot_every_s

    def _reset_batch(self) -> None:
        self._joined: list[Joined] = []  # joined, not learned yet
        self._applied: list[tuple[str, str, float, int]] = []
        self._dead_letters: list[tuple[str, int, int, str, str, bytes, float]] = []
        self._counters = {DECISIONS: 0, FEEDBACK_RECEIVED: 0}
        self._decision_bytes: dict[str, bytes] = {}  # decisions read since the last commit
        self._uncommitted = 0
        self._dirty = False
        self._last_commit = time.monotonic()


def logged_events(pairs: Sequence[Joined], dim: int) -> LoggedEvents:
    """Joined pairs as the arrays `Policy.update_many` learns from (unknown outcomes are NaN)."""
    contexts = np.zeros((len(pairs), dim))
    for row, joined in enumerate(pairs):
        features = joined.decision.features
        contexts[row, list(features.indices)] = features.values
    return LoggedEvents(
        contexts=contexts,
        arms=[joined.decision.chosen for joined in pairs],
        outcomes=np.array(
            [(j.feedback.quality, j.feedback.cost, j.feedback.latency_ms) for j in pairs],
            dtype=float,  # None becomes NaN
        ),
        preferences=np.array([joined.decision.preference for joined in pairs], dtype=float),
        propensities=np.array([joined.decision.propensity for joined in pairs]),
    )


def _paced(records: list[Record]) -> Iterator[Record]:
    """``records``, handing the GIL to waiting request threads every `YIELD_EVERY` of them:
    otherwise a request that released it (for SQLite, say) waits out a whole switch interval."""
    for i, record in enumerate(records, 1):
        yield record
        if i % YIELD_EVERY == 0:
            time.sleep(0)


def _decision(payload: bytes) -> DecisionEvent:
    event = decode(payload)
    if not isinstance(event, DecisionEvent):
        raise StorageError(f"a stored pending decision holds a {event.SCHEMA} event")
    return event


def _feedback(payload: bytes) -> FeedbackEvent:
    event = decode(payload)
    if not isinstance(event, FeedbackEvent):
        raise StorageError(f"a stored waiting feedback holds a {event.SCHEMA} event")
    return event
