"""`Policy.update_many` learns a batch exactly as one `update` per row would (to rounding)."""

from __future__ import annotations

import numpy as np
import pytest

from policies import (
    BaRP,
    EpsilonGreedy,
    FixedArm,
    LinTS,
    LinUCB,
    LoggedEvents,
    Policy,
    Scales,
    UniformRandom,
)
from policies.ridge import RidgeArms

ARMS = ["a", "b", "c", "d"]
SCALES = Scales(cost=0.01, latency_ms=2000.0)
DIM = 10


def logged_events(rng: np.random.Generator, n: int) -> LoggedEvents:
    """Outcomes with every kind of gap: cost unknown on some rows, latency never known on others."""
    outcomes = np.column_stack([rng.random(n), rng.random(n) * 0.02, rng.random(n) * 3000])
    outcomes[rng.random(n) < 0.3, 1] = np.nan
    outcomes[rng.random(n) < 0.5, 2] = np.nan
    return LoggedEvents(
        contexts=rng.normal(size=(n, DIM)) / np.sqrt(DIM),
        arms=[ARMS[i] for i in rng.integers(len(ARMS), size=n)],
        outcomes=outcomes,
        preferences=rng.dirichlet(np.ones(3), size=n),
        propensities=rng.uniform(0.05, 1.0, size=n),
    )


def chunks(events: LoggedEvents, sizes: list[int]) -> list[LoggedEvents]:
    bounds = np.cumsum([0, *sizes])
    return [
        LoggedEvents(
            events.contexts[a:b], events.arms[a:b], events.outcomes[a:b],
            events.preferences[a:b], events.propensities[a:b],
        )
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


POLICIES = {
    "linucb": lambda: LinUCB(ARMS, DIM, SCALES, intercept_precision=0.01, feature_precision=5.0,
                             fallback_features=[0, 3]),
    "lints": lambda: LinTS(ARMS, DIM, SCALES, fallback_features=[1], seed=2),
    "egreedy": lambda: EpsilonGreedy(ARMS, SCALES),
    "random": lambda: UniformRandom(ARMS, SCALES),
    "fixed": lambda: FixedArm(ARMS, SCALES, arm="b"),
    "barp": lambda: BaRP(ARMS, DIM, SCALES, seed=3),
}


@pytest.mark.parametrize("name", POLICIES)
def test_update_many_learns_as_one_update_per_row(name: str) -> None:
    rng = np.random.default_rng(0)
    events = logged_events(rng, 300)
    one_by_one, batched = POLICIES[name](), POLICIES[name]()
    for row in events.rows():
        one_by_one.update(*row)
    for chunk in chunks(events, [1, 2, 40, 7, 150, 100]):  # a lone row, tiny and large batches
        batched.update_many(chunk)
    assert batched.updates == one_by_one.updates == 300
    ours, theirs = batched.state(), one_by_one.state()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        if value.dtype.kind in "fc":
            np.testing.assert_allclose(ours[key], value, rtol=1e-9, atol=1e-11, err_msg=key)
        else:
            assert np.array_equal(ours[key], value), key
    x = rng.normal(size=DIM)
    preference = events.rows().__next__()[3]
    np.testing.assert_allclose(
        batched.probabilities(x, ARMS, preference), one_by_one.probabilities(x, ARMS, preference),
        rtol=1e-9, atol=1e-12,
    )


def test_linear_prequential_errors_match_row_by_row() -> None:
    """The full-or-fallback choice rests on these errors: the batch must see the same ones."""
    rng = np.random.default_rng(1)
    events = logged_events(rng, 200)
    one_by_one, batched = POLICIES["linucb"](), POLICIES["linucb"]()
    for row in events.rows():
        one_by_one.update(*row)
    batched.update_many(events)
    assert np.all(one_by_one.errors > 0)
    np.testing.assert_allclose(batched.errors, one_by_one.errors, rtol=1e-10)


def test_shared_linear_model_learns_a_batch_once() -> None:
    rng = np.random.default_rng(2)
    events = logged_events(rng, 120)
    leader = POLICIES["linucb"]()
    follower = LinTS(ARMS, DIM, SCALES, intercept_precision=0.01, feature_precision=5.0,
                     fallback_features=[0, 3], seed=2)
    alone = LinUCB(ARMS, DIM, SCALES, intercept_precision=0.01, feature_precision=5.0,
                   fallback_features=[0, 3])
    assert follower.share_model(leader)
    for chunk in chunks(events, [60, 60]):
        follower.update_many(chunk)  # the follower first: whichever comes first learns for both
        leader.update_many(chunk)
        alone.update_many(chunk)
    assert leader.model.events == 120 == follower.updates == leader.updates
    np.testing.assert_array_equal(leader.ridge.a_inv, alone.ridge.a_inv)
    np.testing.assert_array_equal(leader.ridge.theta, alone.ridge.theta)


def test_ridge_update_many_keeps_a_inv_the_inverse() -> None:
    rng = np.random.default_rng(3)
    ridge = RidgeArms(DIM, np.full(DIM + 1, 0.5))
    ridge.add_arm(np.zeros(3))
    x = rng.normal(size=(500, DIM))
    errors = ridge.update_many(0, x, rng.random((500, 3)))
    z = np.column_stack([np.ones(500), x])
    np.testing.assert_allclose(ridge.a_inv[0] @ (np.eye(DIM + 1) * 0.5 + z.T @ z), np.eye(DIM + 1),
                               atol=1e-10)
    assert errors.shape == (500, 3) and ridge.counts[0] == 500


def test_default_update_many_is_one_update_per_row() -> None:
    class Recorder(UniformRandom):
        def update(self, x, arm, outcome, preference, propensity):  # type: ignore[no-untyped-def]
            seen.append((arm, outcome.cost, preference.cost, propensity))
            super().update(x, arm, outcome, preference, propensity)

    seen: list[tuple] = []
    events = logged_events(np.random.default_rng(4), 5)
    Policy.update_many(Recorder(ARMS, SCALES), events)
    assert [arm for arm, *_ in seen] == list(events.arms)
    assert [cost is None for _, cost, *_ in seen] == np.isnan(events.outcomes[:, 1]).tolist()
    np.testing.assert_allclose([p for *_, p in seen], events.propensities)
    np.testing.assert_allclose(
        [c for *_, c, _ in seen], events.preferences[:, 1] / events.preferences.sum(axis=1)
    )
