"""Baselines: uniform, fixed and epsilon-greedy give valid distributions and learn what they should."""

from __future__ import annotations

import numpy as np
import pytest

from policies import EpsilonGreedy, FixedArm, Outcome, Preference, Scales, UniformRandom

ARMS = ["a", "b", "c"]


def test_uniform_and_fixed():
    x = np.zeros(2)
    assert UniformRandom(ARMS, Scales()).probabilities(x, ARMS, Preference()).tolist() == [1 / 3] * 3
    fixed = FixedArm(ARMS, Scales(), arm="c", floor=0.01)
    np.testing.assert_allclose(fixed.probabilities(x, ARMS, Preference()), [0.01, 0.01, 0.98])
    with pytest.raises(KeyError, match="not among"):
        fixed.probabilities(x, ["a", "b"], Preference())
    restored = FixedArm.from_state(fixed.state())
    assert restored.arm == "c" and restored.floor == 0.01


def test_epsilon_greedy_finds_the_best_arm_for_each_preference():
    rng = np.random.default_rng(0)
    policy = EpsilonGreedy(ARMS, Scales(cost=1.0), epsilon=0.1)
    truth = {"a": (0.5, 0.05), "b": (0.7, 0.3), "c": (0.9, 0.9)}
    for _ in range(3000):
        w = Preference.from_cost_weight(rng.choice([0.1, 0.8]))
        p = policy.probabilities(None, ARMS, w)
        assert p.min() >= 0.1 / 3 - 1e-12 and p.sum() == pytest.approx(1.0)
        arm = ARMS[rng.choice(3, p=p)]
        q, c = truth[arm]
        policy.update(None, arm, Outcome(q + 0.05 * rng.normal(), cost=c), w, p[ARMS.index(arm)])
    # at cost weight 0.1: c has utility 0.72, b 0.6; at 0.8: a has 0.06, b -0.1, c -0.54
    assert policy.probabilities(None, ARMS, Preference.from_cost_weight(0.1)).argmax() == 2
    assert policy.probabilities(None, ARMS, Preference.from_cost_weight(0.8)).argmax() == 0
    restored = EpsilonGreedy.from_state(policy.state())
    np.testing.assert_array_equal(
        restored.probabilities(None, ARMS, Preference()), policy.probabilities(None, ARMS, Preference())
    )


def test_untried_arms_come_first():
    policy = EpsilonGreedy(ARMS, Scales(), epsilon=0.3)
    policy.update(None, "a", Outcome(1.0), Preference(), 1.0)
    np.testing.assert_allclose(policy.probabilities(None, ARMS, Preference()), [0.1, 0.45, 0.45])
