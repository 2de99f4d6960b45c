"""LinUCB / linear TS: exact ridge estimates, valid probabilities, exact snapshots, arms added live."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from policies import LinTS, LinUCB, Outcome, Preference, Scales, normalized
from policies.linear import DEFAULT_PRIOR

ARMS = ["a", "b", "c"]
SCALES = Scales(cost=0.01, latency_ms=2000.0)


def random_stream(rng: np.random.Generator, n: int, dim: int):
    for _ in range(n):
        x = rng.normal(size=dim) / np.sqrt(dim)
        arm = ARMS[rng.integers(len(ARMS))]
        outcome = Outcome(
            quality=float(rng.random()),
            cost=float(rng.random() * 0.02),
            latency_ms=float(rng.random() * 3000),
        )
        yield x, arm, outcome


@pytest.mark.parametrize("policy_type", [LinUCB, LinTS])
def test_estimates_match_closed_form_ridge(policy_type):
    dim = 12
    rng = np.random.default_rng(1)
    feature_precision = rng.uniform(0.5, 50.0, size=dim)
    prior = Outcome(quality=0.7, cost=0.004, latency_ms=500.0)
    fallback = np.array([2, 5, 7])
    policy = policy_type(ARMS[:2], dim=dim, scales=SCALES, intercept_precision=0.3,
                         feature_precision=feature_precision, fallback_features=fallback)
    policy.add_arm("c", prior=prior)
    seen: dict[str, list] = {arm: [] for arm in ARMS}
    for x, arm, outcome in random_stream(rng, 500, dim):
        policy.update(x, arm, outcome, Preference(), 1.0)
        seen[arm].append((np.concatenate(([1.0], x)), normalized(outcome, SCALES)))

    # the full model reads [1, x]; the fallback reads [1, x[fallback]]
    for ridge, columns in ((policy.ridge, np.arange(dim + 1)), (policy.fallback, np.r_[0, fallback + 1])):
        precision = np.diag(np.concatenate(([0.3], feature_precision))[columns])
        for k, arm in enumerate(ARMS):
            z = np.array([s[0] for s in seen[arm]])[:, columns]
            y = np.array([s[1] for s in seen[arm]])
            theta0 = np.zeros((columns.size, 3))
            theta0[0] = normalized(prior if arm == "c" else DEFAULT_PRIOR, SCALES)
            a = precision + z.T @ z
            expected = np.linalg.solve(a, precision @ theta0 + z.T @ y)
            np.testing.assert_allclose(ridge.theta[k], expected, atol=1e-8, rtol=0)
            np.testing.assert_allclose(ridge.a_inv[k], np.linalg.inv(a), atol=1e-8, rtol=0)
            assert ridge.counts[k] == len(seen[arm])


@pytest.mark.parametrize("policy_type", [LinUCB, LinTS])
def test_state_round_trip_is_exact(policy_type):
    dim = 8
    rng = np.random.default_rng(2)
    policy = policy_type(ARMS, dim=dim, scales=SCALES, floor=0.02, fallback_features=[0, 3])
    stream = list(random_stream(rng, 300, dim))
    for x, arm, outcome in stream[:200]:
        policy.update(x, arm, outcome, Preference(), 1.0)
    restored = policy_type.from_state(policy.state())
    preferences = [Preference.from_cost_weight(c) for c in (0.0, 0.3, 0.9)] + [Preference(1, 1, 1)]
    for x, arm, outcome in stream[200:]:
        for w in preferences:
            np.testing.assert_array_equal(
                policy.probabilities(x, ARMS, w), restored.probabilities(x, ARMS, w)
            )
        policy.update(x, arm, outcome, Preference(), 1.0)
        restored.update(x, arm, outcome, Preference(), 1.0)
    for key, value in policy.state().items():
        np.testing.assert_array_equal(value, restored.state()[key], err_msg=key)


def test_content_is_used_only_once_it_predicts_better():
    """The full model takes over an outcome only when its held-out error beats the fallback's."""
    rng = np.random.default_rng(5)
    dim = 20
    signal = LinUCB(["a", "b"], dim=dim, scales=SCALES, fallback_features=[0], feature_precision=1.0)
    noise = LinUCB(["a", "b"], dim=dim, scales=SCALES, fallback_features=[0], feature_precision=1.0)
    weights = rng.normal(size=dim)
    for _ in range(400):
        x = rng.normal(size=dim) / np.sqrt(dim)
        arm = "ab"[rng.integers(2)]
        # quality depends on the content for `signal`, is pure noise for `noise`
        q = float(np.clip(0.5 + 0.4 * x @ weights, 0, 1))
        signal.update(x, arm, Outcome(q, cost=0.001), Preference(), 0.5)
        noise.update(x, arm, Outcome(float(rng.random()), cost=0.001), Preference(), 0.5)
    assert signal.uses_full_model()[0]
    assert not noise.uses_full_model()[0]


def test_state_of_another_policy_is_refused():
    state = LinUCB(ARMS, dim=2, scales=SCALES).state()
    with pytest.raises(ValueError, match="linucb"):
        LinTS.from_state(state)


@pytest.mark.parametrize("policy_type", [LinUCB, LinTS])
def test_probabilities_are_a_distribution_with_floor(policy_type):
    dim = 6
    rng = np.random.default_rng(3)
    policy = policy_type(ARMS, dim=dim, scales=SCALES, floor=0.05)
    for x, arm, outcome in random_stream(rng, 100, dim):
        policy.update(x, arm, outcome, Preference(), 1.0)
        for arms in (ARMS, ["c", "a"], ["b"]):
            p = policy.probabilities(x, arms, Preference.from_cost_weight(rng.random()))
            assert p.shape == (len(arms),)
            assert p.sum() == pytest.approx(1.0, abs=1e-12)
            assert p.min() >= 0.05 - 1e-12 or len(arms) == 1


def test_unknown_arm_and_empty_candidates_are_refused():
    policy = LinUCB(ARMS, dim=2, scales=SCALES)
    with pytest.raises(KeyError, match="zzz"):
        policy.probabilities(np.zeros(2), ["a", "zzz"], Preference())
    with pytest.raises(ValueError, match="candidate"):
        policy.probabilities(np.zeros(2), [], Preference())
    with pytest.raises(ValueError, match="features"):
        policy.probabilities(np.zeros(3), ["a"], Preference())
    with pytest.raises(ValueError, match="already"):
        policy.add_arm("a")


def test_unknown_cost_leaves_the_cost_estimate_alone():
    policy = LinUCB(["a"], dim=2, scales=SCALES)
    x = np.array([0.6, 0.8])
    policy.update(x, "a", Outcome(0.9, cost=0.005, latency_ms=100.0), Preference(), 1.0)
    before = policy.expected(x, ["a"])[0]
    policy.update(x, "a", Outcome(0.1), Preference(), 1.0)
    after = policy.expected(x, ["a"])[0]
    assert after[0] < before[0] - 0.1  # quality moved toward 0.1
    assert after[1] == pytest.approx(before[1], abs=1e-12)  # cost untouched
    assert after[2] == pytest.approx(before[2], abs=1e-12)  # latency untouched


def test_new_arm_starts_at_its_prior_and_is_routable():
    policy = LinUCB(["a"], dim=3, scales=SCALES, alpha=0.0, floor=0.0)
    x = np.array([0.0, 1.0, 0.0])
    for _ in range(30):
        policy.update(x, "a", Outcome(0.5, cost=0.005), Preference(), 1.0)
    policy.add_arm("new", prior=Outcome(quality=0.95, cost=0.001))
    np.testing.assert_allclose(policy.expected(x, ["new"])[0], [0.95, 0.1, 0.0])
    assert policy.probabilities(x, ["a", "new"], Preference.from_cost_weight(0.2))[1] == 1.0


def test_linucb_preference_changes_the_choice_without_retraining():
    rng = np.random.default_rng(4)
    policy = LinUCB(["cheap", "strong"], dim=2, scales=Scales(cost=1.0), floor=0.01)
    for _ in range(300):
        x = rng.normal(size=2)
        policy.update(x, "cheap", Outcome(0.6 + 0.05 * rng.normal(), cost=0.05), Preference(), 1.0)
        policy.update(x, "strong", Outcome(0.9 + 0.05 * rng.normal(), cost=0.8), Preference(), 1.0)
    x = rng.normal(size=2)
    assert policy.probabilities(x, ["cheap", "strong"], Preference.from_cost_weight(0.1))[1] == 0.99
    assert policy.probabilities(x, ["cheap", "strong"], Preference.from_cost_weight(0.9))[0] == 0.99


def test_lints_win_probabilities_match_the_posterior():
    """Two arms: P(arm b wins) = Phi((mu_b - mu_a) / sqrt(s_a^2 + s_b^2)) under the posterior."""
    policy = LinTS(["a", "b"], dim=1, scales=SCALES, scale=1.0, samples=20000, floor=0.0)
    x = np.array([1.0])
    for q_a, q_b in [(0.5, 0.6), (0.4, 0.55), (0.6, 0.5)]:
        policy.update(x, "a", Outcome(q_a), Preference(), 1.0)
        policy.update(x, "b", Outcome(q_b), Preference(), 1.0)
    means, widths = policy._scores(x, ["a", "b"], Preference())
    expected = norm.cdf((means[1] - means[0]) / np.sqrt(widths[0] ** 2 + widths[1] ** 2))
    p = policy.probabilities(x, ["a", "b"], Preference())
    assert p[1] == pytest.approx(expected, abs=3 * np.sqrt(0.25 / 20000))


def assert_states_equal(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(actual[key], value, err_msg=key)


def test_linucb_and_lints_sharing_one_model_learn_exactly_as_apart() -> None:
    rng = np.random.default_rng(3)
    dim, arms = 12, ["a", "b", "c"]
    kwargs = dict(arms=arms, dim=dim, scales=Scales(1.0, 1000.0), fallback_features=[0, 1])
    apart = [LinUCB(**kwargs), LinTS(**kwargs, seed=4)]
    together = [LinUCB(**kwargs), LinTS(**kwargs, seed=4)]
    assert together[1].share_model(together[0]) and together[1].model is together[0].model
    assert not together[1].share_model(together[0])  # already shared
    for step in range(300):
        if step == 100:  # an arm added at run time lands once in the shared model
            for policy in apart + together:
                policy.add_arm("d", Outcome(0.6, 0.1))
        x = rng.normal(size=dim)
        arm = (arms + ["d"])[step % (4 if step >= 100 else 3)]
        outcome = Outcome(float(rng.random()), float(rng.random()), float(rng.random()) * 500)
        preference = Preference.from_cost_weight(0.3)
        # The follower first, sometimes: whichever is updated first learns for both.
        for policy in (together if step % 2 else together[::-1]) + apart:
            policy.update(x, arm, outcome, preference, 0.25)
    assert together[0].model.events == 300 == together[1].updates
    for ours, theirs in zip(together, apart, strict=True):
        assert_states_equal(ours.state(), theirs.state())
    x = rng.normal(size=dim)
    for ours, theirs in zip(together, apart, strict=True):
        assert np.array_equal(
            ours.probabilities(x, arms, Preference.from_cost_weight(0.5)),
            theirs.probabilities(x, arms, Preference.from_cost_weight(0.5)),
        )
    # Different histories are never shared.
    apart[0].update(x, "a", Outcome(1.0), Preference.from_cost_weight(0.1), 1.0)
    assert not apart[1].share_model(apart[0])


@pytest.mark.parametrize("policy_type", [LinUCB, LinTS])
def test_expected_equals_the_predicted_means_when_only_some_outcomes_use_the_full_model(policy_type):
    # Quality depends on a hashed-style feature the fallback cannot see; cost and latency are noise.
    dim = 16
    rng = np.random.default_rng(3)
    policy = policy_type(ARMS, dim=dim, scales=SCALES, fallback_features=[0, 1])
    for i in range(300):
        x = rng.normal(size=dim)
        outcome = Outcome(quality=float(x[5] > 0), cost=float(rng.random() * 0.01), latency_ms=500.0)
        policy.update(x, ARMS[i % 3], outcome, Preference(), 1.0)
    assert policy.uses_full_model().tolist() == [True, False, False]
    x = rng.normal(size=dim)
    means = policy.predict(x)[0]
    np.testing.assert_array_equal(policy.expected(x, ["c", "a"]), means[[2, 0]])


def test_policies_sharing_a_model_score_a_context_with_one_prediction(monkeypatch):
    dim = 8
    rng = np.random.default_rng(4)
    ucb = LinUCB(ARMS, dim=dim, scales=SCALES, fallback_features=[0])
    ts = LinTS(ARMS, dim=dim, scales=SCALES, fallback_features=[0])
    assert ts.share_model(ucb)
    passes = []
    original = type(ucb.fallback).predict
    monkeypatch.setattr(
        type(ucb.fallback), "predict", lambda self, x: passes.append(1) or original(self, x)
    )
    x = rng.normal(size=dim)
    before = (ucb.probabilities(x, ARMS, Preference()), ts.probabilities(x, ARMS, Preference()))
    assert len(passes) == 1  # the second policy reused the first one's prediction
    ucb.probabilities(x.copy(), ARMS, Preference())  # equal values, another array: still cached
    assert len(passes) == 1
    # Learning (or a new arm) makes it stale: the next call predicts afresh and sees the change.
    for policy in (ucb, ts):
        policy.update(x, "a", Outcome(quality=1.0, cost=0.0, latency_ms=0.0), Preference(), 0.5)
    after = ucb.probabilities(x, ARMS, Preference())
    assert len(passes) == 2 and not np.array_equal(after, before[0])
    ucb.add_arm("d")
    assert ucb.probabilities(x, ARMS + ["d"], Preference()).shape == (4,) and len(passes) == 3
    with pytest.raises(ValueError, match="read-only"):
        ucb.predict(x)[0][0, 0] = 1.0
