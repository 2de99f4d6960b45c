"""Statistical behaviour on seeded synthetic data: low, sublinear regret and one policy for many
trade-offs. Fast versions of `python -m bench.synthetic` (the full study is in bench/results)."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from bandit_router.featurizer import Featurizer
from bandit_router.policy_factory import make_policy
from bandit_router.replay import ReplayConfig, replay
from bandit_router.synth import generate, to_dataset
from policies import Outcome, Preference, Scales, normalize_columns, utilities


@pytest.fixture(autouse=True)
def one_blas_thread():
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _synthetic_runs() -> dict:
    results = replay(
        to_dataset(generate(models=6, rows=6000, seed=0)),
        ReplayConfig(policies=("linucb", "lints", "random"), cost_weights=(0.5,), seed=0),
        progress=False,
    )
    return {r["policy"]: r for r in results["runs"]}


@pytest.mark.slow
def test_linear_policies_regret_is_below_a_quarter_of_random():
    runs = _synthetic_runs()
    for name in ("linucb", "lints"):
        assert runs[name]["regret"] < 0.25 * runs["random"]["regret"], name
    # random's regret grows linearly: slope ~1
    assert runs["random"]["regret_slope_last_decade"] > 0.95


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="open target, out of reach as posed: against the per-row oracle, outcome noise and the "
    "0.5% probability floor grow linearly, so even the best floored policy (the expected-utility "
    "oracle's choice, other arms at the floor) has slope 0.98-1.03; a learner gets below 0.8 only "
    "by losing more early. Measured 0.57-1.01, see bench/results/synthetic.md",
)
def test_linear_policies_regret_grows_sublinearly():
    runs = _synthetic_runs()
    for name in ("linucb", "lints"):
        assert runs[name]["regret_slope_last_decade"] < 0.8, name


@pytest.mark.slow
def test_one_policy_serves_many_tradeoffs():
    """Train once on mixed preferences; then the cost weight alone moves the choice between the
    cheap and the strong model, as the per-row oracle would."""
    data = generate(models=3, rows=4000, seed=0)
    featurizer = Featurizer()
    features = featurizer.transform_many(data.prompts)
    scales = Scales(cost=float(data.cost.mean(axis=0).max()), latency_ms=10_000)
    models = list(data.models)
    policy = make_policy("linucb", models, featurizer, scales)
    rng = np.random.default_rng(0)
    train = 3000
    for t in range(train):
        w = Preference.from_cost_weight(rng.random())
        p = policy.probabilities(features[t], models, w)
        a = rng.choice(len(models), p=p)
        outcome = Outcome(data.quality[t, a], data.cost[t, a], data.latency_ms[t, a])
        policy.update(features[t], models[a], outcome, w, p[a])

    held_out = normalize_columns(
        data.quality[train:], data.cost[train:], data.latency_ms[train:], scales
    )
    cheap, strong = 0, len(models) - 1  # the ladder is sorted by price
    picks = {}
    for weight, target in ((0.9, cheap), (0.1, strong)):
        w = Preference.from_cost_weight(weight)
        picks[weight] = np.array(
            [policy.probabilities(x, models, w).argmax() for x in features[train:]]
        )
        oracle = utilities(held_out, w).argmax(axis=1)
        rows = oracle == target
        assert rows.sum() > 200  # the trade-off is real on this data
        agreement = float(np.mean(picks[weight][rows] == target))
        assert agreement > 0.8, (weight, agreement)
    # the same policy, two preferences: mostly different models
    assert np.mean(picks[0.9] != picks[0.1]) > 0.5
