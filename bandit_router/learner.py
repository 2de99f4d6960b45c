"""The learner: consumes decisions and feedback, joins them, updates every policy, and commits its
whole progress in one transaction (DESIGN.md section 6), so a crash replays exactly what is lost.

A plain class (`run_once` / `run_forever`); `LearnerThread` runs it inside the API process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from bandit_router.config import Settings
from bandit_router.featurizer import Featurizer
from bandit_router.policy_set import PolicySet, prior_outcome
from bandit_router.storage import (
    DECISIONS,
    FEEDBACK_RECEIVED,
    Checkpoint,
    LoadedCheckpoint,
    Storage,
    StorageError,
)
from policies import Outcome, Preference
from streams import (
    TOPIC_DECISIONS,
    TOPIC_FEEDBACK,
    Bus,
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
from streams.joiner import DEFAULT_DECISION_TTL_S

if TYPE_CHECKING:
    from bandit_router.tracking import LearnerTracker

log = logging.getLogger(__name__)

GROUP = "learner"
TOPICS = (TOPIC_DECISIONS, TOPIC_FEEDBACK)
POLL_RECORDS = 500
POLL_TIMEOUT_S = 0.1
# After a short batch, wait this long before reading again: records then arrive in batches, so the
# learner does not wake (and contend for the GIL) on every single routed request.
LINGER_S = 0.02
UNKNOWN_OFFSET = -1  # a dead letter whose source offset was lost (it waited across a restart)


class Learner:
    """Applies joined (decision, feedback) pairs to every policy of a `PolicySet` exactly once.

    Progress since the last commit lives in memory: the offsets read, the join-store changes, the
    applied feedback, dead letters and counters. `commit` writes all of it with the policy
    snapshots in one `Storage.commit_checkpoint`; after a crash `open` resumes from that commit.

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
        clock: Callable[[], float] = time.time,
        tracker: LearnerTracker | None = None,
    ) -> None:
        self.settings = settings
        self.tracker = tracker  # MLflow metrics; sees each event before the policies learn it
        self.storage = storage
        self.policies = policies
        self.group = group
        self._clock = clock
        self._feature_dim = settings.feature_dim
        self._joiner = Joiner.restore(
            horizon_s=settings.join_horizon_s,
            decision_ttl_s=max(settings.join_horizon_s, DEFAULT_DECISION_TTL_S),
            pending_decisions=[(_decision(p), at) for p, at in checkpoint.pending_decisions],
            waiting=[(_feedback(p), at) for p, at in checkpoint.waiting_feedback],
            applied=checkpoint.applied,
        )
        self._offsets = dict(checkpoint.offsets)
        self._consumer = bus.consumer(
            list(TOPICS), group, lambda topic, partition: self._offsets.get((topic, partition), 0)
        )
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
        clock: Callable[[], float] = time.time,
        tracker: LearnerTracker | None = None,
    ) -> Learner:
        """A learner resumed from the last checkpoint of ``group``, policies included."""
        checkpoint = storage.load_checkpoint(group)
        policies = PolicySet.load(settings, featurizer, storage.list_models(), checkpoint.snapshots)
        return cls(
            settings, storage, bus, policies, checkpoint, group=group, clock=clock, tracker=tracker
        )

    # --- the loop --------------------------------------------------------------------------------
    def run_once(self, timeout_s: float = POLL_TIMEOUT_S) -> int:
        """Apply one batch, expire overdue feedback, commit if due; returns how many records."""
        records = self._consumer.poll(max_records=POLL_RECORDS, timeout_s=timeout_s)
        for record in records:
            self._handle(record)
            # Hand the GIL to waiting request threads between records: otherwise a request that
            # released it (for SQLite, say) waits out a whole switch interval (5 ms) to continue.
            time.sleep(0)
        now = max(record.ts for record in records) if records else self._clock()
        for rejected in self._joiner.expire(now):
            self._dead_letter_feedback(rejected)
        if self._due():
            self.commit()
        return len(records)

    def run_forever(self, stop: threading.Event) -> None:
        """`run_once` until ``stop`` is set, then commit what is left."""
        while not stop.is_set():
            if self.run_once() < POLL_RECORDS:
                stop.wait(LINGER_S)
        self.close()

    def close(self) -> None:
        """Commit what is left, stop reading and finish the MLflow run."""
        self.commit()
        self._consumer.close()
        if self.tracker is not None:
            self.tracker.close()

    def commit(self) -> None:
        """Write everything since the last commit, with changed policies' snapshots, atomically."""
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
            added_decisions=[(d.decision_id, encode(d), at) for d, at in changes.added_decisions],
            removed_decision_ids=changes.removed_decision_ids,
            added_waiting=[
                (f.feedback_id, f.decision_id, encode(f), at) for f, at in changes.added_waiting
            ],
            removed_waiting_ids=changes.removed_waiting_ids,
            applied=self._applied,
            dead_letters=self._dead_letters,
            counters={name: n for name, n in self._counters.items() if n},
        )
        self.storage.commit_checkpoint(checkpoint)
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
        decision, feedback = joined.decision, joined.feedback
        self._origins.pop(feedback.feedback_id, None)
        x = decision.features.to_dense()
        outcome = Outcome(feedback.quality, feedback.cost, feedback.latency_ms)
        preference = Preference(*decision.preference)
        arm = decision.chosen
        with self.policies.lock:
            if any(arm not in policy.arm_index for _, policy in self.policies.items()):
                self.policies.ensure_arm(arm, prior_outcome(self.storage.get_model(arm, True)))
            if self.tracker is not None:
                self.tracker.observe(self.policies, decision, x, outcome, preference)
            for _, policy in self.policies.items():
                policy.update(x, arm, outcome, preference, decision.propensity)
            version = self.policies.serving_policy.updates
        self._applied.append((feedback.feedback_id, decision.decision_id, self._clock(), version))

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
    def _due(self) -> bool:
        if not self._dirty:
            return False
        if self._uncommitted >= self.settings.snapshot_every_events:
            return True
        return time.monotonic() - self._last_commit >= self.settings.snapshot_every_s

    def _reset_batch(self) -> None:
        self._applied: list[tuple[str, str, float, int]] = []
        self._dead_letters: list[tuple[str, int, int, str, str, bytes, float]] = []
        self._counters = {DECISIONS: 0, FEEDBACK_RECEIVED: 0}
        self._uncommitted = 0
        self._dirty = False
        self._last_commit = time.monotonic()


class LearnerThread:
    """Runs a `Learner` in a daemon thread of the API process (the embedded default)."""

    def __init__(self, learner: Learner) -> None:
        self.learner = learner
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bandit-router-learner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask the loop to finish, wait for its final commit, then release the consumer."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            self.learner.run_forever(self._stop)
        except BaseException as error:  # reported by /readyz; the process keeps serving routes
            self.error = error
            log.exception("the learner stopped")


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
