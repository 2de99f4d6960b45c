"""The decision/feedback join: each rule with exact outputs; restore equals never stopping."""

from __future__ import annotations

import doctest
import random
from dataclasses import dataclass, field

import pytest

import streams.joiner
from streams.events import DecisionEvent, FeedbackEvent, SparseFeatures
from streams.joiner import JoinChanges, Joined, Joiner, Rejected

FEATURES = SparseFeatures(dim=4, indices=(1,), values=(1.0,))


def decision(decision_id: str, ts: float = 0.0) -> DecisionEvent:
    return DecisionEvent(
        decision_id=decision_id,
        ts=ts,
        policy="linucb",
        policy_version=1,
        arms=("a", "b"),
        chosen="a",
        propensity=0.75,
        probabilities=(0.75, 0.25),
        preference=(1.0, 0.0, 0.0),
        features=FEATURES,
    )


def feedback(feedback_id: str, decision_id: str, quality: float = 0.5) -> FeedbackEvent:
    return FeedbackEvent(feedback_id=feedback_id, decision_id=decision_id, ts=0.0, quality=quality)


def second(decision_id: str, first_id: str) -> str:
    return (
        f"decision {decision_id} already has feedback {first_id};"
        " only the first feedback is applied"
    )


def unknown(decision_id: str, horizon_s: float) -> str:
    return (
        f"no decision {decision_id} known within the join horizon of {horizon_s:g}s (never "
        "logged, or forgotten: older than the decision TTL or beyond the pending-decision cap)"
    )


def no_changes() -> JoinChanges:
    return JoinChanges()


# --- the rules, one by one ----------------------------------------------------------------------
def test_feedback_after_its_decision_joins() -> None:
    joiner = Joiner(horizon_s=60)
    d1, f1 = decision("d1"), feedback("f1", "d1")
    assert joiner.add_decision(d1, now=0.0) == []
    assert joiner.pending_decisions == 1
    assert joiner.take_changes() == JoinChanges(added_decisions=[(d1, 0.0)])
    assert joiner.add_feedback(f1, now=1.0) == Joined(d1, f1)
    assert (joiner.pending_decisions, joiner.waiting_feedback) == (0, 0)
    assert joiner.take_changes() == JoinChanges(
        removed_decision_ids=["d1"], applied=[("d1", "f1", 1.0)]
    )
    assert joiner.take_changes().empty


def test_additions_and_removals_cancel_within_one_batch() -> None:
    joiner = Joiner(horizon_s=60)
    joiner.add_decision(decision("d1"), now=0.0)
    joiner.add_feedback(feedback("f1", "d1"), now=1.0)
    joiner.add_feedback(feedback("f2", "d2"), now=2.0)
    joiner.add_decision(decision("d2"), now=3.0)
    assert joiner.take_changes() == JoinChanges(
        applied=[("d1", "f1", 1.0), ("d2", "f2", 3.0)]
    )


def test_redelivered_feedback_is_ignored() -> None:
    joiner = Joiner(horizon_s=60)
    joiner.add_decision(decision("d1"), now=0.0)
    joiner.add_feedback(feedback("f1", "d1"), now=1.0)
    joiner.add_feedback(feedback("f9", "d9"), now=1.0)  # waits
    joiner.take_changes()
    assert joiner.add_feedback(feedback("f1", "d1"), now=2.0) is None  # applied before
    assert joiner.add_feedback(feedback("f9", "d9"), now=2.0) is None  # waiting already
    assert joiner.waiting_feedback == 1
    assert joiner.take_changes() == no_changes()
    # The id is the identity: the same id with other content or another decision is a redelivery.
    assert joiner.add_feedback(feedback("f1", "d1", quality=0.9), now=3.0) is None
    assert joiner.add_feedback(feedback("f1", "d2"), now=3.0) is None
    assert joiner.take_changes() == no_changes()


def test_second_feedback_with_a_new_id_is_rejected() -> None:
    joiner = Joiner(horizon_s=60)
    joiner.add_decision(decision("d1"), now=0.0)
    joiner.add_feedback(feedback("f1", "d1"), now=1.0)
    joiner.take_changes()
    f2 = feedback("f2", "d1", quality=0.1)
    assert joiner.add_feedback(f2, now=2.0) == Rejected(f2, second("d1", "f1"))
    assert joiner.take_changes() == JoinChanges(rejected=[("f2", 2.0)])
    # A rejected feedback that is redelivered is ignored, not rejected twice.
    assert joiner.add_feedback(f2, now=3.0) is None
    assert joiner.take_changes() == no_changes()


def test_feedback_before_its_decision_waits_then_joins() -> None:
    joiner = Joiner(horizon_s=60)
    d1, f1 = decision("d1"), feedback("f1", "d1")
    assert joiner.add_feedback(f1, now=5.0) is None
    assert joiner.waiting_feedback == 1
    assert joiner.take_changes() == JoinChanges(added_waiting=[(f1, 5.0)])
    assert joiner.add_decision(d1, now=30.0) == [Joined(d1, f1)]
    assert (joiner.pending_decisions, joiner.waiting_feedback) == (0, 0)
    assert joiner.take_changes() == JoinChanges(
        removed_waiting_ids=["f1"], applied=[("d1", "f1", 30.0)]
    )


def test_the_first_waiting_feedback_wins_and_the_others_are_rejected_in_order() -> None:
    joiner = Joiner(horizon_s=60)
    f1, f2, f3 = feedback("f1", "d1"), feedback("f2", "d1"), feedback("f3", "d1")
    other = feedback("g1", "d2")
    for now, item in enumerate([f2, other, f1, f3]):
        assert joiner.add_feedback(item, now=float(now)) is None
    d1 = decision("d1")
    assert joiner.add_decision(d1, now=10.0) == [
        Joined(d1, f2),
        Rejected(f1, second("d1", "f2")),
        Rejected(f3, second("d1", "f2")),
    ]
    assert joiner.waiting_feedback == 1
    changes = joiner.take_changes()
    assert changes.added_waiting == [(other, 1.0)]
    assert changes.applied == [("d1", "f2", 10.0)]
    assert changes.rejected == [("f1", 10.0), ("f3", 10.0)]
    assert changes.removed_waiting_ids == []


def test_waiting_feedback_expires_after_the_horizon() -> None:
    joiner = Joiner(horizon_s=60)
    f1, f2 = feedback("f1", "d1"), feedback("f2", "d2")
    joiner.add_feedback(f1, now=10.0)
    joiner.add_feedback(f2, now=20.0)
    joiner.take_changes()
    assert joiner.expire(now=70.0) == []  # exactly the horizon: still waiting
    reason = unknown("d1", 60)
    assert joiner.expire(now=70.5) == [Rejected(f1, reason)]
    assert joiner.waiting_feedback == 1
    assert joiner.take_changes() == JoinChanges(
        removed_waiting_ids=["f1"], rejected=[("f1", 70.5)]
    )
    # The decision arrives too late: it is kept like any other, and the expired feedback stays out.
    assert joiner.add_decision(decision("d1"), now=71.0) == []
    assert joiner.add_feedback(f1, now=72.0) is None
    assert joiner.pending_decisions == 1
    horizon_of_half = Joiner(horizon_s=0.5)
    horizon_of_half.add_feedback(f1, now=0.0)
    assert horizon_of_half.expire(now=1.0)[0].reason == unknown("d1", 0.5)


def test_decisions_without_feedback_are_forgotten_after_their_ttl() -> None:
    joiner = Joiner(horizon_s=60, decision_ttl_s=100)
    joiner.add_decision(decision("d1"), now=0.0)
    joiner.add_decision(decision("d2"), now=50.0)
    joiner.take_changes()
    assert joiner.expire(now=100.0) == []
    assert joiner.pending_decisions == 2
    assert joiner.expire(now=100.5) == []  # forgetting is not an error: nothing to dead-letter
    assert joiner.pending_decisions == 1
    assert joiner.take_changes() == JoinChanges(removed_decision_ids=["d1"])
    # Feedback for a forgotten decision waits like any orphan.
    assert joiner.add_feedback(feedback("f1", "d1"), now=101.0) is None
    assert joiner.waiting_feedback == 1


def test_a_forgotten_decision_delivered_again_is_removed_then_added() -> None:
    joiner = Joiner(horizon_s=60, decision_ttl_s=100)
    d1 = decision("d1")
    joiner.add_decision(d1, now=0.0)
    joiner.take_changes()
    joiner.expire(now=200.0)
    assert joiner.add_decision(d1, now=201.0) == []
    # Applied removals first, then additions, this leaves the decision pending.
    assert joiner.take_changes() == JoinChanges(
        added_decisions=[(d1, 201.0)], removed_decision_ids=["d1"]
    )


def test_a_decision_seen_twice_is_ignored() -> None:
    joiner = Joiner(horizon_s=60)
    d1 = decision("d1")
    joiner.add_decision(d1, now=0.0)
    joiner.take_changes()
    assert joiner.add_decision(d1, now=1.0) == []
    assert joiner.take_changes() == no_changes()
    joiner.add_feedback(feedback("f1", "d1"), now=2.0)
    joiner.take_changes()
    # After its feedback was applied, a redelivered decision must not become pending again.
    assert joiner.add_decision(d1, now=3.0) == []
    assert joiner.pending_decisions == 0
    assert joiner.take_changes() == no_changes()


def test_restore_keeps_every_rule() -> None:
    joiner = Joiner(horizon_s=60, decision_ttl_s=1000)
    d1, d2 = decision("d1"), decision("d2")
    joiner.add_decision(d1, now=0.0)
    joiner.add_decision(d2, now=1.0)
    joiner.add_feedback(feedback("f1", "d1"), now=2.0)
    joiner.add_feedback(feedback("f3", "d3"), now=3.0)
    joiner.add_feedback(feedback("f4", "d4"), now=4.0)
    joiner.expire(now=63.5)  # f3 expires
    changes = joiner.take_changes()

    restored = Joiner.restore(
        60,
        1000,
        pending_decisions=changes.added_decisions,
        waiting=changes.added_waiting,
        applied=changes.applied,
        rejected=changes.rejected,
    )
    assert (restored.pending_decisions, restored.waiting_feedback) == (1, 1)
    assert restored.add_feedback(feedback("f1", "d1"), now=70.0) is None  # applied: ignored
    assert restored.add_feedback(feedback("f3", "d3"), now=70.0) is None  # rejected: ignored
    f1b = feedback("f1b", "d1")
    assert restored.add_feedback(f1b, now=70.0) == Rejected(f1b, second("d1", "f1"))
    assert restored.add_decision(d1, now=70.0) == []  # joined before: ignored
    f2 = feedback("f2", "d2")
    assert restored.add_feedback(f2, now=70.0) == Joined(d2, f2)
    assert restored.expire(now=64.5) == [Rejected(feedback("f4", "d4"), unknown("d4", 60))]


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_nonsense_horizons_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="horizon_s must be a finite number of seconds > 0"):
        Joiner(horizon_s=bad)
    with pytest.raises(ValueError, match="decision_ttl_s"):
        Joiner(horizon_s=1, decision_ttl_s=bad)


def test_docstring_examples_run() -> None:
    assert doctest.testmod(streams.joiner).failed == 0


# --- a random stream: restore at checkpoints behaves exactly like never stopping ----------------
HORIZON_S = 30.0
TTL_S = 400.0


def random_stream(seed: int, size: int = 2000) -> list[tuple[float, DecisionEvent | FeedbackEvent]]:
    """Decisions with 0, 1 or 2 feedbacks, late and early feedback, orphans and redeliveries."""
    rng = random.Random(seed)
    timed: list[tuple[float, DecisionEvent | FeedbackEvent]] = []
    clock, n_feedback = 0.0, 0
    while len(timed) < size:
        clock += rng.expovariate(2.0)
        decision_id = f"d{len(timed)}"
        orphan = rng.random() < 0.05
        if not orphan:
            timed.append((clock, decision(decision_id)))
        for _ in range(rng.choices([0, 1, 2], weights=[35, 50, 15])[0]):
            # Mostly after the decision, sometimes before it, sometimes past the horizon or TTL.
            delay = rng.choice([rng.uniform(0, 20), rng.uniform(-40, 0), rng.uniform(300, 600)])
            n_feedback += 1
            timed.append((max(0.0, clock + delay), feedback(f"f{n_feedback}", decision_id)))
    redeliveries = [
        (time + rng.uniform(0, 200), event) for time, event in rng.sample(timed, k=size // 10)
    ]
    timed.extend(redeliveries)
    timed.sort(key=lambda item: item[0])
    return timed[:size]


Outcome = tuple[str, str, str]


def outcome(result: Joined | Rejected) -> Outcome:
    if isinstance(result, Joined):
        return ("joined", result.decision.decision_id, result.feedback.feedback_id)
    return ("rejected", result.feedback.feedback_id, result.reason)


@dataclass
class Store:
    """What a caller's database would hold after applying every batch of changes."""

    pending: dict[str, tuple[DecisionEvent, float]] = field(default_factory=dict)
    waiting: dict[str, tuple[FeedbackEvent, float]] = field(default_factory=dict)
    applied: list[tuple[str, str, float]] = field(default_factory=list)
    rejected: list[tuple[str, float]] = field(default_factory=list)

    def apply(self, changes: JoinChanges) -> None:
        for decision_id in changes.removed_decision_ids:
            del self.pending[decision_id]  # KeyError: a removal of something never persisted
        for feedback_id in changes.removed_waiting_ids:
            del self.waiting[feedback_id]
        for item, arrived_at in changes.added_decisions:
            assert item.decision_id not in self.pending
            self.pending[item.decision_id] = (item, arrived_at)
        for fb, arrived_at in changes.added_waiting:
            assert fb.feedback_id not in self.waiting
            self.waiting[fb.feedback_id] = (fb, arrived_at)
        self.applied.extend(changes.applied)
        self.rejected.extend(changes.rejected)

    def restore(self) -> Joiner:
        return Joiner.restore(
            HORIZON_S,
            TTL_S,
            list(self.pending.values()),
            list(self.waiting.values()),
            self.applied,
            self.rejected,
        )


def run(
    stream: list[tuple[float, DecisionEvent | FeedbackEvent]],
    restore_at: set[int],
    batch_every: int,
) -> tuple[list[Outcome], Joiner]:
    joiner = Joiner(HORIZON_S, TTL_S)
    store = Store()
    outcomes: list[Outcome] = []
    for position, (now, event) in enumerate(stream):
        if position in restore_at:
            store.apply(joiner.take_changes())
            joiner = store.restore()
        outcomes.extend(outcome(r) for r in joiner.expire(now))
        if isinstance(event, DecisionEvent):
            outcomes.extend(outcome(r) for r in joiner.add_decision(event, now))
        else:
            result = joiner.add_feedback(event, now)
            if result is not None:
                outcomes.append(outcome(result))
        if position % batch_every == 0:
            store.apply(joiner.take_changes())
    final = stream[-1][0] + max(HORIZON_S, TTL_S) + 1
    outcomes.extend(outcome(r) for r in joiner.expire(final))
    store.apply(joiner.take_changes())
    assert store.pending == {} and store.waiting == {}
    return outcomes, joiner


@pytest.mark.parametrize("seed", [1, 2])
def test_restored_joiner_behaves_identically_on_a_random_stream(seed: int) -> None:
    stream = random_stream(seed)
    reference, _ = run(stream, restore_at=set(), batch_every=10**9)
    for restore_at, batch_every in [
        ({1, 700, 1400}, 37),
        ({1000}, 1),
        (set(range(0, 2000, 97)), 13),
    ]:
        assert run(stream, restore_at, batch_every)[0] == reference

    feedback_ids = {e.feedback_id for _, e in stream if isinstance(e, FeedbackEvent)}
    decided = {e.decision_id for _, e in stream if isinstance(e, DecisionEvent)}
    joined = [o[2] for o in reference if o[0] == "joined"]
    rejected = [o[1] for o in reference if o[0] == "rejected"]
    # Every feedback id ends up exactly once, joined or rejected; redeliveries in neither.
    assert sorted(joined + rejected) == sorted(feedback_ids)
    assert len(set(joined)) == len(joined) and not set(joined) & set(rejected)
    # A decision is joined at most once, and only with its own feedback.
    joined_decisions = [o[1] for o in reference if o[0] == "joined"]
    assert len(set(joined_decisions)) == len(joined_decisions)
    by_id = {e.feedback_id: e for _, e in stream if isinstance(e, FeedbackEvent)}
    assert all(by_id[o[2]].decision_id == o[1] for o in reference if o[0] == "joined")
    # Orphans can only be rejected, and the stream exercised every kind of outcome.
    orphans = {f for f, e in by_id.items() if e.decision_id not in decided}
    assert orphans and orphans <= set(rejected)
    reasons = [o[2] for o in reference if o[0] == "rejected"]
    assert sum("already has feedback" in r for r in reasons) > 20
    assert sum("join horizon" in r for r in reasons) > 20
    assert len(joined) > 300


def test_beyond_the_cap_the_oldest_pending_decision_is_forgotten() -> None:
    joiner = Joiner(horizon_s=60, max_pending=2)
    d1, d2, d3 = decision("d1"), decision("d2"), decision("d3")
    joiner.add_decision(d1, now=0.0)
    joiner.add_decision(d2, now=1.0)
    joiner.take_changes()
    assert joiner.add_decision(d3, now=2.0) == []
    assert joiner.pending_decisions == 2
    assert joiner.take_changes() == JoinChanges(
        added_decisions=[(d3, 2.0)], removed_decision_ids=["d1"]
    )
    # A decision added and evicted within one batch leaves no trace for the store.
    joiner.add_decision(decision("d4"), now=3.0)
    joiner.add_decision(decision("d5"), now=4.0)
    assert [d.decision_id for d, _ in joiner.take_changes().added_decisions] == ["d4", "d5"]
    # Feedback for an evicted decision waits, then goes to dead letters, saying why it may be.
    late = feedback("f1", "d1")
    assert joiner.add_feedback(late, now=5.0) is None
    assert joiner.expire(now=65.5) == [Rejected(late, unknown("d1", 60))]
    assert joiner.add_feedback(feedback("f5", "d5"), now=66.0) == Joined(decision("d5"), feedback("f5", "d5"))


def test_applied_and_rejected_ids_are_forgotten_after_the_ttl_and_never_applied_twice() -> None:
    joiner = Joiner(horizon_s=10, decision_ttl_s=100)
    d1 = decision("d1")
    joiner.add_decision(d1, now=0.0)
    f1, f2 = feedback("f1", "d1"), feedback("f2", "d1")
    assert joiner.add_feedback(f1, now=1.0) == Joined(d1, f1)
    assert joiner.add_feedback(f2, now=2.0) == Rejected(f2, second("d1", "f1"))
    assert joiner.expire(now=101.0) == []
    assert joiner.knows_decision("d1")  # f1 joined at 1.0: remembered until 101.0
    assert joiner.expire(now=102.5) == []
    assert not joiner.knows_decision("d1")
    # Redeliveries after the TTL find no decision: they wait and expire, never applied again.
    assert joiner.add_feedback(f1, now=103.0) is None
    assert joiner.add_feedback(f2, now=103.0) is None
    assert [r.feedback for r in joiner.expire(now=113.5)] == [f1, f2]


def test_restore_under_a_lower_cap_keeps_the_newest_and_drops_the_rest_from_the_store() -> None:
    pending = [(decision(f"d{i}"), float(i)) for i in range(5)]
    restored = Joiner.restore(60, 1000, pending, waiting=[], applied=[], max_pending=2)
    assert restored.pending_decisions == 2
    assert restored.knows_decision("d4") and restored.knows_decision("d3")
    assert not restored.knows_decision("d2")
    assert restored.take_changes() == JoinChanges(removed_decision_ids=["d0", "d1", "d2"])


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_pending must be at least 1"):
        Joiner(horizon_s=1, max_pending=0)
