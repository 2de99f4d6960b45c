"""The learner lease: one active learner per consumer group, fenced by an epoch in every commit."""

from __future__ import annotations

from pathlib import Path

import pytest

from bandit_router.storage import Checkpoint, LeaseLostError, Storage, make_engine, migrate
from streams.outbox import OUTBOX


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def storage(tmp_path: Path, clock: FakeClock) -> Storage:
    url = f"sqlite:///{tmp_path / 'router.db'}"
    migrate(url)
    return Storage(make_engine(url), clock=clock)


def test_one_holder_at_a_time_until_the_lease_expires(storage: Storage, clock: FakeClock) -> None:
    first = storage.acquire_lease("learner", "a", ttl_s=10)
    assert first is not None and first.epoch == 1
    assert storage.acquire_lease("learner", "b", ttl_s=10) is None
    again = storage.acquire_lease("learner", "a", ttl_s=10)  # the holder may re-acquire
    assert again is not None and again.epoch == 2
    clock.now += 9.9
    assert storage.acquire_lease("learner", "b", ttl_s=10) is None
    clock.now += 0.2
    taken = storage.acquire_lease("learner", "b", ttl_s=10)
    assert taken is not None and taken.epoch == 3
    assert storage.lease_holder("learner") == ("b", 3, clock.now + 10)
    assert storage.acquire_lease("other-group", "a", ttl_s=10) is not None


def test_a_commit_renews_the_lease_and_a_fenced_learner_writes_nothing(
    storage: Storage, clock: FakeClock
) -> None:
    old = storage.acquire_lease("learner", "a", ttl_s=10)
    assert old is not None
    clock.now += 8
    storage.commit_checkpoint(Checkpoint("learner", offsets={("t", 0): 5}, lease=old))
    clock.now += 8  # 16 s after acquiring, but the commit renewed it: still a's
    assert storage.acquire_lease("learner", "b", ttl_s=10) is None
    assert storage.renew_lease(old)

    new = storage.acquire_lease("learner", "b", ttl_s=10, take_over=True)
    assert new is not None and new.epoch == old.epoch + 1
    stale = Checkpoint(
        "learner", offsets={("t", 0): 99}, outbox=[("router.deadletter", "d1", b"{}")], lease=old
    )
    with pytest.raises(LeaseLostError, match=r"lost the lease.*nothing of this checkpoint"):
        storage.commit_checkpoint(stale)
    assert not storage.renew_lease(old)
    assert storage.load_checkpoint("learner").offsets == {("t", 0): 5}
    with storage._sessions() as session:
        assert session.query(OUTBOX).count() == 0


def test_release_lets_a_standby_take_over_at_once(storage: Storage) -> None:
    lease = storage.acquire_lease("learner", "a", ttl_s=60)
    assert lease is not None
    storage.release_lease(lease)
    taken = storage.acquire_lease("learner", "b", ttl_s=60)
    assert taken is not None and taken.epoch == 2


def test_a_checkpoint_queues_its_records_in_the_outbox(storage: Storage) -> None:
    storage.commit_checkpoint(
        Checkpoint("learner", outbox=[("router.deadletter", "d1", b"a"), ("router.deadletter", "d2", b"b")])
    )
    with storage._sessions() as session:
        rows = session.execute(OUTBOX.select().order_by(OUTBOX.c.id)).all()
    assert [(r.topic, r.key, r.value) for r in rows] == [
        ("router.deadletter", "d1", b"a"),
        ("router.deadletter", "d2", b"b"),
    ]
