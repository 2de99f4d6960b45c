"""Replay with the data's ground truth splits the regret into noise, the floor's share and learning."""

from __future__ import annotations

import pytest
from threadpoolctl import threadpool_limits

from bandit_router.replay import ReplayConfig, replay, replay_scales
from bandit_router.synth import expected_outcomes, generate, to_dataset
from policies import Preference, normalize_columns, utilities


@pytest.fixture(scope="module")
def synthetic():
    data = generate(models=4, rows=2000, seed=5)
    return data, to_dataset(data)


def _runs(results: dict) -> dict[str, dict]:
    return {r["policy"]: r for r in results["runs"]}


def test_noise_free_truth_makes_pseudo_regret_the_regret(synthetic) -> None:
    """If the truth is the observed outcomes, nothing is noise: pseudo-regret equals regret."""
    _, dataset = synthetic
    config = ReplayConfig(policies=("linucb", "random"), cost_weights=(0.3,), seed=1)
    scales = replay_scales(dataset, config)
    observed = normalize_columns(dataset.quality, dataset.cost, dataset.latency_ms, scales)
    with threadpool_limits(limits=1, user_api="blas"):
        results = replay(dataset, config, progress=False, expected_outcomes=observed)
    assert results["expected_oracle"][0]["regret"] == pytest.approx(0.0, abs=1e-9)
    for run in results["runs"]:
        assert run["pseudo_regret"] == pytest.approx(run["regret"], rel=1e-9)
    curve = results["curves"][0]
    assert curve["pseudo_regret"] == pytest.approx(curve["regret"], rel=1e-9)


def test_floor_share_and_random_pseudo_regret_follow_the_truth(synthetic) -> None:
    data, dataset = synthetic
    config = ReplayConfig(policies=("linucb", "random"), cost_weights=(0.5,), seed=2)
    truth = expected_outcomes(data, replay_scales(dataset, config))
    with threadpool_limits(limits=1, user_api="blas"):
        results = replay(dataset, config, progress=False, expected_outcomes=truth)
    expected = utilities(truth, Preference.from_cost_weight(0.5))
    gaps = expected.max(axis=1, keepdims=True) - expected  # (rows, models)
    runs = _runs(results)
    assert runs["linucb"]["floor_regret"] == pytest.approx(0.005 * gaps.sum(), rel=1e-9)
    # Uniform random pays the mean gap on every row, in expectation, floor or not: linear.
    assert runs["random"]["pseudo_regret"] == pytest.approx(gaps.mean(axis=1).sum(), rel=0.05)
    assert runs["random"]["beyond_floor_regret_slope_last_decade"] == pytest.approx(1.0, abs=0.1)
    # The generator's noise is real but small: the expected-utility oracle rarely loses much.
    noise = results["expected_oracle"][0]["regret"]
    assert 0 < noise < 0.1 * runs["random"]["regret"]
    assert runs["linucb"]["pseudo_regret"] < 0.5 * runs["random"]["pseudo_regret"]  # it learns


def test_the_floored_oracle_regret_is_noise_and_floor(synthetic) -> None:
    """The best a floored policy can do: its expected regret mixes the expected-utility oracle's
    regret and every arm's, and grows linearly (slope ~1)."""
    data, dataset = synthetic
    config = ReplayConfig(policies=("random",), cost_weights=(0.25,), seed=3)
    truth = expected_outcomes(data, replay_scales(dataset, config))
    results = replay(dataset, config, progress=False, expected_outcomes=truth)
    reference = results["expected_oracle"][0]
    random_regret = results["runs"][0]["regret"]  # uniform: the mean of every arm's regret
    floor, arms = config.params.floor, len(dataset.models)
    expected = (1 - arms * floor) * reference["regret"] + floor * arms * random_regret
    assert reference["floored_regret"] == pytest.approx(expected, rel=0.05)
    assert reference["floored_regret_slope_last_decade"] == pytest.approx(1.0, abs=0.1)
