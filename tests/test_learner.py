"""The learner on the durable embedded bus: exactly-once across a crash, dead letters with their
reasons, and the out-of-order join surviving a restart."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import text

from bandit_router.catalog import CatalogModel
from bandit_router.config import Settings
from bandit_router.featurizer import Featurizer
from bandit_router.learner import Learner
from bandit_router.policy_set import PolicySet
from bandit_router.storage import Storage, make_engine, migrate
from policies import Outcome
from streams import (
    TOPIC_DECISIONS,
    TOPIC_FEEDBACK,
    DecisionEvent,
    FeedbackEvent,
    SparseFeatures,
    encode,
)
from streams.embedded import EmbeddedBus
from streams.memory import InMemoryBus

ARMS = ("cheap", "mid", "strong")
DIM = 64


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(tmp_path):
    """A migrated database with a three-model catalog, its bus and storage, and a fake clock."""
    url = f"sqlite:///{tmp_path / 'learner.db'}"
    engine = make_engine(url)
    migrate(engine)
    clock = Clock()
    storage = Storage(engine, clock)
    storage.seed_catalog(
        [CatalogModel(name, price_per_call=0.001 * (i + 1)) for i, name in enumerate(ARMS)]
    )
    bus = EmbeddedBus(engine, clock)
    settings = Settings(
        database_url=url,
        feature_dim=DIM,
        snapshot_every_events=100_000,
        snapshot_every_s=1e9,
        join_horizon_s=60.0,
    )
    yield settings, storage, bus, clock, engine
    bus.close()
    engine.dispose()


def open_learner(world) -> Learner:
    settings, storage, bus, clock, _ = world
    return Learner.open(settings, storage, bus, Featurizer(DIM), clock=clock)


def drain(learner: Learner) -> None:
    while learner.run_once(timeout_s=0):
        pass


def decision(i: int, rng: np.random.Generator, dim: int = DIM) -> DecisionEvent:
    x = np.where(rng.random(dim) < 0.2, rng.normal(size=dim), 0.0)
    chosen = ARMS[i % 3]
    return DecisionEvent(
        decision_id=f"d{i}",
        ts=1_000.0,
        policy="linucb",
        policy_version=0,
        arms=ARMS,
        chosen=chosen,
        propensity=0.5 if chosen == "cheap" else 0.25,
        probabilities=(0.5, 0.25, 0.25),
        preference=(0.8, 0.2, 0.0),
        features=SparseFeatures.from_dense(x),
    )


def feedback(i: int, quality: float) -> FeedbackEvent:
    return FeedbackEvent(f"f{i}", f"d{i}", ts=1_000.0, quality=quality, cost=0.001 * (i % 3 + 1))


def publish(bus: EmbeddedBus, events: list[DecisionEvent | FeedbackEvent]) -> None:
    bus.publish_many(
        [
            (TOPIC_DECISIONS if isinstance(e, DecisionEvent) else TOPIC_FEEDBACK, e.decision_id, encode(e))
            for e in events
        ]
    )


def test_a_crash_replays_exactly_the_uncommitted_events(world):
    _, storage, bus, _, engine = world
    rng = np.random.default_rng(7)
    events = [(decision(i, rng), feedback(i, float(rng.random()))) for i in range(50)]
    publish(bus, [e for pair in events[:30] for e in pair])
    first = open_learner(world)
    drain(first)
    first.commit()
    publish(bus, [e for pair in events[30:] for e in pair])
    drain(first)  # applied in memory, never committed: the process "dies" here
    assert all(policy.updates == 50 for _, policy in first.policies.items())

    second = open_learner(world)
    assert all(policy.updates == 30 for _, policy in second.policies.items())
    drain(second)
    second.close()

    for name, policy in second.policies.items():
        assert policy.updates == 50
        reference = first.policies[name].state()
        for key, array in policy.state().items():
            assert np.array_equal(array, reference[key]), f"{name}.{key} differs after replay"
    with engine.connect() as connection:
        rows, distinct = connection.execute(
            text("select count(*), count(distinct decision_id) from applied_feedback")
        ).one()
    assert rows == distinct == 50
    stats = storage.stats()
    assert stats["decisions"] == 50 and stats["feedback_received"] == 50


def test_invalid_records_are_dead_lettered_with_their_reason(world):
    _, storage, bus, _, engine = world
    rng = np.random.default_rng(1)
    good = decision(0, rng)
    bus.publish_many(
        [
            (TOPIC_DECISIONS, "junk", b"\xffnot json"),
            (TOPIC_DECISIONS, "f9", encode(FeedbackEvent("f9", "f9", ts=1.0, quality=0.5))),
            (TOPIC_DECISIONS, "d5", encode(decision(5, rng, dim=32))),
            (TOPIC_DECISIONS, "other-key", encode(decision(6, rng))),
            (TOPIC_FEEDBACK, "d0", b'{"schema":"feedback/1","feedback_id":"x","decision_id":"d0",'
             b'"ts":1,"quality":7}'),
            (TOPIC_DECISIONS, "d0", encode(good)),
            (TOPIC_FEEDBACK, "d0", encode(feedback(0, 0.9))),
        ]
    )
    learner = open_learner(world)
    drain(learner)
    learner.commit()
    with engine.connect() as connection:
        reasons = dict(connection.execute(text("select key, reason from dead_letters")).all())
    assert reasons["junk"].startswith("record value is not UTF-8")
    assert reasons["f9"] == "topic router.decisions carries decision/1 events, got feedback/1"
    assert reasons["d5"].startswith("field 'features.dim' is 32")
    assert reasons["other-key"].startswith("record key 'other-key' is not the event's decision_id")
    assert reasons["d0"] == "field 'quality' must be in [0, 1], got 7.0"
    stats = storage.stats()
    assert stats["dead_letters"] == 5 and stats["feedback_applied"] == 1
    assert learner.policies.serving_policy.updates == 1


def test_out_of_order_feedback_waits_across_a_restart_and_expires_at_the_horizon(world):
    _, storage, bus, clock, engine = world
    rng = np.random.default_rng(3)
    publish(bus, [feedback(1, 0.8), feedback(2, 0.4)])  # before their decisions
    learner = open_learner(world)
    drain(learner)
    learner.close()
    assert storage.stats()["waiting_feedback"] == 2

    clock.now += 30  # within the 60 s horizon
    publish(bus, [decision(1, rng)])
    restarted = open_learner(world)
    drain(restarted)
    restarted.commit()
    assert storage.decision_status("d1")[0] == "applied"

    clock.now += 31  # f2 has now waited 61 s with no decision
    restarted.run_once(timeout_s=0)
    restarted.commit()
    state, detail = storage.decision_status("d2")
    assert state == "dead_lettered"
    assert detail["reason"].startswith("no decision d2 known within the join horizon of 60s (")
    stats = storage.stats()
    assert stats["waiting_feedback"] == 0 and stats["feedback_applied"] == 1


def test_feedback_is_applied_in_the_order_of_its_log_whatever_the_decisions_delivery(world):
    """The decisions topic is read ahead as far as each feedback needs, so policies learn in the
    feedback log's order even when that order is far from the decisions' and a poll returns only
    part of the backlog."""
    settings, storage, _, clock, _ = world
    rng = np.random.default_rng(11)
    count = 1_200  # more than two polls' worth of records on each topic
    decisions = [decision(i, rng) for i in range(count)]
    order = rng.permutation(count)
    events = [feedback(int(i), float(rng.random())) for i in order]

    def learn(bus: InMemoryBus) -> Learner:
        learner = Learner(settings, storage, bus, PolicySet.load(settings, Featurizer(DIM), [], {}),
                          storage.load_checkpoint("fresh"), group="fresh", clock=clock)
        for arm in ARMS:
            learner.policies.ensure_arm(arm, Outcome(0.5))
        while learner.run_once(timeout_s=0):
            pass
        return learner

    split = InMemoryBus()  # decisions first, then the feedback in its shuffled order
    split.publish_many([(TOPIC_DECISIONS, d.decision_id, encode(d)) for d in decisions])
    split.publish_many([(TOPIC_FEEDBACK, f.decision_id, encode(f)) for f in events])
    interleaved = InMemoryBus()  # each feedback right after its decision, in the same order
    for f in events:
        interleaved.publish(TOPIC_DECISIONS, f.decision_id, encode(decisions[int(f.decision_id[1:])]))
        interleaved.publish(TOPIC_FEEDBACK, f.decision_id, encode(f))

    first, second = learn(split), learn(interleaved)
    assert [fid for fid, *_ in first._applied] == [f.feedback_id for f in events]
    assert [fid for fid, *_ in second._applied] == [f.feedback_id for f in events]
    for name, policy in first.policies.items():
        assert policy.updates == count
        reference = second.policies[name].state()
        for key, array in policy.state().items():
            assert np.array_equal(array, reference[key]), f"{name}.{key}"


def test_pending_decisions_stay_under_the_cap_in_memory_and_in_the_join_state(world):
    settings, storage, bus, clock, engine = world
    capped = settings.model_copy(update={"max_pending_decisions": 20})
    rng = np.random.default_rng(3)
    decisions = [decision(i, rng) for i in range(100)]
    publish(bus, decisions)
    learner = Learner.open(capped, storage, bus, Featurizer(DIM), clock=clock)
    drain(learner)
    learner.commit()
    with engine.connect() as connection:
        kept = connection.execute(text("select decision_id from pending_decisions")).scalars().all()
    assert sorted(kept, key=lambda d: int(d[1:])) == [f"d{i}" for i in range(80, 100)]
    # Feedback for a kept decision is applied; for a forgotten one it waits, then dead-letters.
    publish(bus, [feedback(99, 0.9), feedback(5, 0.9)])
    drain(learner)
    clock.now += 61.0
    drain(learner)
    learner.close()
    assert storage.stats()["feedback_applied"] == 1
    assert storage.decision_status("d5")[0] == "dead_lettered"
