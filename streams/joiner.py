"""The decision/feedback join: pairs each feedback with its decision, whatever order they arrive in.

Pure logic: the caller passes the time, applies what it returns, and persists ``take_changes()`` in
the transaction that also stores its offsets and snapshots, so a restart resumes the join exactly.

Rules (DESIGN section 5):

1. **Idempotent redelivery.** A feedback whose ``feedback_id`` was already seen (applied, waiting,
   or rejected) is ignored: ``add_feedback`` returns ``None`` and nothing changes. The ids are
   ``feedback_id`` alone: a reused id with another ``decision_id`` is still a redelivery.
2. **First feedback wins.** A feedback with a new id for a decision that already has applied
   feedback is ``Rejected`` with the reason
   ``"decision <id> already has feedback <first id>; only the first feedback is applied"``; the
   caller dead-letters it.
3. **Out of order.** A feedback whose decision is not (yet) known waits, up to ``horizon_s``
   after its own arrival. ``add_decision`` then returns ``Joined`` for the earliest waiting
   feedback and, after it, ``Rejected`` (rule 2) for each later one, in arrival order.
4. **Horizon.** ``expire(now)`` rejects feedback that has waited longer than ``horizon_s`` with
   ``"no decision <id> known within the join horizon of <horizon_s>s (...)"``, in arrival order.
5. **Decision TTL and capacity.** A decision without feedback is forgotten ``decision_ttl_s``
   after its arrival, or earlier, oldest first, once more than ``max_pending`` decisions wait
   (most decisions never get feedback; that is not an error, and the cap bounds memory). Feedback
   arriving later waits and expires under rule 4.
6. **Duplicate decisions.** A decision whose id is pending or already joined is ignored.

Times are the caller's clock (``now`` arguments) and should not decrease; if they do, nothing is
lost, but entries may expire later than their deadline. State that survives ``restore``: pending
decisions, waiting feedback, applied ``(decision_id, feedback_id, at)`` triples and rejected
feedback ids (so rules 1, 2 and 6 hold across restarts). Applied pairs and rejected ids are
remembered for ``decision_ttl_s`` (then ``expire`` forgets them, so memory stays bounded); that is
safe: a forgotten feedback that is redelivered finds no decision (its decision was joined long
ago), so it waits and is dead-lettered, never applied twice.

>>> from streams.events import SparseFeatures
>>> joiner = Joiner(horizon_s=60)
>>> feedback = FeedbackEvent("f1", "d1", ts=5.0, quality=0.9)
>>> joiner.add_feedback(feedback, now=5.0) is None  # before its decision: it waits
True
>>> decision = DecisionEvent("d1", 4.0, "linucb", 1, ("a", "b"), "a", 0.5, (0.5, 0.5),
...                          (1.0, 0.0, 0.0), SparseFeatures(4, (0,), (1.0,)))
>>> [type(result).__name__ for result in joiner.add_decision(decision, now=6.0)]
['Joined']
>>> joiner.add_feedback(FeedbackEvent("f2", "d1", ts=7.0, quality=0.1), now=7.0).reason
'decision d1 already has feedback f1; only the first feedback is applied'
>>> joiner.take_changes().applied
[('d1', 'f1', 6.0)]
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from streams.events import DecisionEvent, FeedbackEvent

DEFAULT_DECISION_TTL_S = 7 * 86400.0
DEFAULT_MAX_PENDING = 100_000


@dataclass(frozen=True)
class Joined:
    """A feedback paired with its decision: one learning step for the caller."""

    decision: DecisionEvent
    feedback: FeedbackEvent


@dataclass(frozen=True)
class Rejected:
    """A feedback that will never be applied; ``reason`` is its dead-letter reason."""

    feedback: FeedbackEvent
    reason: str


@dataclass
class JoinChanges:
    """What changed since the last ``take_changes()``, for the caller to persist in its transaction.

    Additions cancel against removals within one batch, but an entry can be removed and then
    added again (a decision forgotten by its TTL and redelivered): apply the removals first.
    """

    added_decisions: list[tuple[DecisionEvent, float]] = field(default_factory=list)
    """Newly pending decisions with their arrival time."""
    removed_decision_ids: list[str] = field(default_factory=list)
    """Decisions no longer pending (joined, or forgotten after ``decision_ttl_s``)."""
    added_waiting: list[tuple[FeedbackEvent, float]] = field(default_factory=list)
    """Feedback now waiting for its decision, with its arrival time, in arrival order."""
    removed_waiting_ids: list[str] = field(default_factory=list)
    """Feedback ids no longer waiting (joined, rejected or expired)."""
    applied: list[tuple[str, str, float]] = field(default_factory=list)
    """``(decision_id, feedback_id, joined_at)`` of the feedback joined."""
    rejected: list[tuple[str, float]] = field(default_factory=list)
    """``(feedback_id, rejected_at)`` of feedback rejected (second feedback or expired),
    remembered so a redelivery is ignored."""

    @property
    def empty(self) -> bool:
        """Whether there is nothing to persist."""
        return not (
            self.added_decisions
            or self.removed_decision_ids
            or self.added_waiting
            or self.removed_waiting_ids
            or self.applied
            or self.rejected
        )


class Joiner:
    """Joins feedback to decisions by ``decision_id`` under the rules in the module docstring.

    Parameters
    ----------
    horizon_s
        How long feedback waits for its decision before it is rejected.
    decision_ttl_s
        How long a decision without feedback is kept (default seven days), and how long applied and
        rejected feedback ids are remembered.
    max_pending
        The most decisions kept waiting for feedback; beyond it the oldest is forgotten.
    """

    def __init__(
        self,
        horizon_s: float,
        decision_ttl_s: float = DEFAULT_DECISION_TTL_S,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        for name, value in (("horizon_s", horizon_s), ("decision_ttl_s", decision_ttl_s)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending!r}")
        self.horizon_s = float(horizon_s)
        self.decision_ttl_s = float(decision_ttl_s)
        self.max_pending = int(max_pending)
        # Insertion order is arrival order, so expiry pops from the front. OrderedDict, because
        # a plain dict's first item costs a scan over the slots of items deleted before it.
        self._pending: OrderedDict[str, tuple[DecisionEvent, float]] = OrderedDict()
        self._waiting: OrderedDict[str, tuple[FeedbackEvent, float]] = OrderedDict()
        self._waiting_by_decision: dict[str, list[str]] = {}
        # decision_id -> (its first feedback_id, when joined); in join order, for forgetting.
        self._applied: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._applied_feedback: set[str] = set()
        self._rejected: OrderedDict[str, float] = OrderedDict()  # feedback_id -> when rejected
        self._start_batch()

    # --- the three events ------------------------------------------------------------------------
    def knows_decision(self, decision_id: str) -> bool:
        """Whether ``decision_id`` is pending or already joined."""
        return decision_id in self._pending or decision_id in self._applied

    def add_decision(self, decision: DecisionEvent, now: float) -> list[Joined | Rejected]:
        """Record a decision; returns the waiting feedback it releases (rule 3), or ``[]``."""
        decision_id = decision.decision_id
        if decision_id in self._pending or decision_id in self._applied:
            return []
        waiting_ids = self._waiting_by_decision.pop(decision_id, None)
        if not waiting_ids:
            self._pending[decision_id] = (decision, now)
            self._added_decisions[decision_id] = (decision, now)
            if len(self._pending) > self.max_pending:
                oldest, _ = self._pending.popitem(last=False)
                self._forget_decision(oldest)
            return []
        results: list[Joined | Rejected] = []
        for feedback_id in waiting_ids:
            feedback, _ = self._waiting.pop(feedback_id)
            self._unwait(feedback_id)
            if decision_id in self._applied:
                results.append(self._reject_second(feedback, now))
            else:
                results.append(self._join(decision, feedback, now))
        return results

    def add_feedback(self, feedback: FeedbackEvent, now: float) -> Joined | Rejected | None:
        """Join, reject, or keep waiting (``None``, also for an ignored redelivery)."""
        feedback_id = feedback.feedback_id
        if (
            feedback_id in self._applied_feedback
            or feedback_id in self._waiting
            or feedback_id in self._rejected
        ):
            return None
        decision_id = feedback.decision_id
        if decision_id in self._applied:
            return self._reject_second(feedback, now)
        pending = self._pending.pop(decision_id, None)
        if pending is not None:
            self._forget_decision(decision_id)
            return self._join(pending[0], feedback, now)
        self._wait(feedback, now)
        self._added_waiting[feedback_id] = (feedback, now)
        return None

    def expire(self, now: float) -> list[Rejected]:
        """Reject feedback past the horizon (rule 4); forget decisions past their TTL (rule 5)."""
        rejected: list[Rejected] = []
        while self._waiting:
            feedback_id = next(iter(self._waiting))
            feedback, arrived_at = self._waiting[feedback_id]
            if now - arrived_at <= self.horizon_s:
                break
            del self._waiting[feedback_id]
            self._unwait(feedback_id)
            ids = self._waiting_by_decision[feedback.decision_id]
            ids.remove(feedback_id)
            if not ids:
                del self._waiting_by_decision[feedback.decision_id]
            rejected.append(
                self._reject(
                    feedback,
                    f"no decision {feedback.decision_id} known within the join horizon of"
                    f" {self.horizon_s:g}s (never logged, or forgotten: older than the decision"
                    " TTL or beyond the pending-decision cap)",
                    now,
                )
            )
        while self._pending:
            decision_id = next(iter(self._pending))
            arrived_at = self._pending[decision_id][1]
            if now - arrived_at <= self.decision_ttl_s:
                break
            del self._pending[decision_id]
            self._forget_decision(decision_id)
        # Joined and rejected ids past the TTL: a redelivery of one now waits and expires.
        while self._applied:
            decision_id, (feedback_id, joined_at) = next(iter(self._applied.items()))
            if now - joined_at <= self.decision_ttl_s:
                break
            del self._applied[decision_id]
            self._applied_feedback.discard(feedback_id)
        while self._rejected and now - next(iter(self._rejected.values())) > self.decision_ttl_s:
            self._rejected.popitem(last=False)
        return rejected

    # --- persistence -----------------------------------------------------------------------------
    def take_changes(self) -> JoinChanges:
        """What changed since the last call; the joiner starts a new batch."""
        changes = JoinChanges(
            added_decisions=list(self._added_decisions.values()),
            removed_decision_ids=self._removed_decision_ids,
            added_waiting=list(self._added_waiting.values()),
            removed_waiting_ids=self._removed_waiting_ids,
            applied=self._applied_batch,
            rejected=self._rejected_batch,
        )
        self._start_batch()
        return changes

    @classmethod
    def restore(
        cls,
        horizon_s: float,
        decision_ttl_s: float,
        pending_decisions: Iterable[tuple[DecisionEvent, float]],
        waiting: Iterable[tuple[FeedbackEvent, float]],
        applied: Iterable[tuple[str, str, float]],
        rejected: Iterable[tuple[str, float]] = (),
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> Joiner:
        """A joiner in the state that the accumulated ``take_changes()`` describe.

        Give decisions and waiting feedback in arrival order (e.g. ordered by an autoincrement
        column); ties in arrival time keep the given order, which decides who is "first". Applied
        ``(decision_id, feedback_id, joined_at)`` and rejected ``(feedback_id, at)`` entries may
        leave out those older than ``decision_ttl_s`` (the joiner would forget them anyway). If more
        than ``max_pending`` decisions are given, the newest are kept and the others are reported
        removed by the next ``take_changes()``.
        """
        joiner = cls(horizon_s, decision_ttl_s, max_pending)
        pending = sorted(pending_decisions, key=lambda item: item[1])
        dropped = max(0, len(pending) - joiner.max_pending)
        for decision, _ in pending[:dropped]:  # a lowered cap: the store deletes them next batch
            joiner._forget_decision(decision.decision_id)
        for decision, arrived_at in pending[dropped:]:
            joiner._pending[decision.decision_id] = (decision, arrived_at)
        for feedback, arrived_at in sorted(waiting, key=lambda item: item[1]):
            joiner._wait(feedback, arrived_at)
        for decision_id, feedback_id, joined_at in sorted(applied, key=lambda item: item[2]):
            joiner._applied.setdefault(decision_id, (feedback_id, joined_at))
            joiner._applied_feedback.add(feedback_id)
        for feedback_id, at in sorted(rejected, key=lambda item: item[1]):
            joiner._rejected[feedback_id] = at
        return joiner

    @property
    def pending_decisions(self) -> int:
        """How many decisions are kept, waiting for feedback."""
        return len(self._pending)

    @property
    def waiting_feedback(self) -> int:
        """How many feedback events wait for their decision."""
        return len(self._waiting)

    # --- internals -------------------------------------------------------------------------------
    def _join(self, decision: DecisionEvent, feedback: FeedbackEvent, now: float) -> Joined:
        self._applied[decision.decision_id] = (feedback.feedback_id, now)
        self._applied_feedback.add(feedback.feedback_id)
        self._applied_batch.append((decision.decision_id, feedback.feedback_id, now))
        return Joined(decision, feedback)

    def _reject_second(self, feedback: FeedbackEvent, now: float) -> Rejected:
        first = self._applied[feedback.decision_id][0]
        return self._reject(
            feedback,
            f"decision {feedback.decision_id} already has feedback {first};"
            " only the first feedback is applied",
            now,
        )

    def _reject(self, feedback: FeedbackEvent, reason: str, now: float) -> Rejected:
        self._rejected[feedback.feedback_id] = now
        self._rejected_batch.append((feedback.feedback_id, now))
        return Rejected(feedback, reason)

    def _wait(self, feedback: FeedbackEvent, arrived_at: float) -> None:
        self._waiting[feedback.feedback_id] = (feedback, arrived_at)
        self._waiting_by_decision.setdefault(feedback.decision_id, []).append(feedback.feedback_id)

    def _unwait(self, feedback_id: str) -> None:
        """Record that a feedback stopped waiting; cancels its addition in this batch."""
        if self._added_waiting.pop(feedback_id, None) is None:
            self._removed_waiting_ids.append(feedback_id)

    def _forget_decision(self, decision_id: str) -> None:
        """Record that a decision stopped pending; cancels its addition in this batch."""
        if self._added_decisions.pop(decision_id, None) is None:
            self._removed_decision_ids.append(decision_id)

    def _start_batch(self) -> None:
        self._added_decisions: dict[str, tuple[DecisionEvent, float]] = {}
        self._removed_decision_ids: list[str] = []
        self._added_waiting: dict[str, tuple[FeedbackEvent, float]] = {}
        self._removed_waiting_ids: list[str] = []
        self._applied_batch: list[tuple[str, str, float]] = []
        self._rejected_batch: list[tuple[str, float]] = []
