"""Reference policies: uniform random, one fixed model, and non-contextual epsilon-greedy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from policies.base import DEFAULT_FLOOR, LoggedEvents, Policy, argmax_distribution, with_floor
from policies.preference import Outcome, Preference, Scales, normalized, normalized_rows
from policies.ridge import N_OUTCOMES


class _Unlearning(Policy):
    """A policy that learns nothing; it only checks the arms and counts the updates."""

    def update(
        self, x: np.ndarray, arm: str, outcome: Outcome, preference: Preference, propensity: float
    ) -> None:
        self.indices([arm])
        self.updates += 1

    def update_many(self, events: LoggedEvents) -> None:
        self.indices(events.arms)
        self.updates += len(events)


class UniformRandom(_Unlearning):
    """Every candidate with equal probability; the yardstick for regret.

    >>> from policies import Preference, Scales
    >>> UniformRandom(["a", "b"], Scales()).probabilities(np.zeros(3), ["a", "b"], Preference())
    array([0.5, 0.5])
    """

    name = "random"

    def __init__(self, arms: Sequence[str], scales: Scales, floor: float = 0.0) -> None:
        super().__init__(arms, scales, floor)

    def probabilities(self, x: np.ndarray, arms: Sequence[str], preference: Preference) -> np.ndarray:
        self.indices(arms)
        return np.full(len(arms), 1.0 / len(arms))


class FixedArm(_Unlearning):
    """Always the same model (apart from the exploration floor).

    >>> from policies import Preference, Scales
    >>> FixedArm(["a", "b"], Scales(), arm="b", floor=0.1).probabilities(None, ["a", "b"], Preference())
    array([0.1, 0.9])
    """

    name = "fixed"

    def __init__(
        self, arms: Sequence[str], scales: Scales, arm: str, floor: float = DEFAULT_FLOOR
    ) -> None:
        super().__init__(arms, scales, floor)
        self.indices([arm])
        self.arm = arm

    def probabilities(self, x: np.ndarray | None, arms: Sequence[str], preference: Preference) -> np.ndarray:
        self.indices(arms)
        if self.arm not in arms:
            raise KeyError(f"the fixed arm {self.arm!r} is not among the candidates {list(arms)}")
        return with_floor((np.asarray(arms) == self.arm).astype(float), self.floor)


    def _config(self) -> dict[str, Any]:
        return {"arm": self.arm}

    def _restore(self, state: dict[str, np.ndarray]) -> None:
        self.arm = str(state["arm"])


class EpsilonGreedy(Policy):
    """Non-contextual epsilon-greedy on each arm's running mean outcomes, scored per request.

    Arms never tried come first (their mean is unknown); ties split the greedy mass.

    >>> from policies import Outcome, Preference, Scales
    >>> policy = EpsilonGreedy(["a", "b"], Scales(), epsilon=0.2)
    >>> policy.update(None, "a", Outcome(0.2), Preference(), 1.0)
    >>> policy.update(None, "b", Outcome(0.9), Preference(), 1.0)
    >>> policy.probabilities(None, ["a", "b"], Preference())
    array([0.1, 0.9])
    """

    name = "egreedy"

    def __init__(self, arms: Sequence[str], scales: Scales, epsilon: float = 0.1) -> None:
        if not 0.0 < epsilon <= 1.0:
            raise ValueError(f"epsilon must be in (0, 1], got {epsilon}")
        self.sums = np.empty((0, N_OUTCOMES))
        self.counts = np.empty((0, N_OUTCOMES))
        # The floor of a uniform epsilon-mixture is epsilon / k; it is recorded per call.
        super().__init__(arms, scales, floor=0.0)
        self.epsilon = float(epsilon)

    def _grow(self, prior: Outcome | None) -> None:
        self.sums = np.vstack([self.sums, np.zeros(N_OUTCOMES)])
        self.counts = np.vstack([self.counts, np.zeros(N_OUTCOMES)])

    def probabilities(self, x: np.ndarray | None, arms: Sequence[str], preference: Preference) -> np.ndarray:
        idx = self.indices(arms)
        counts = self.counts[idx]
        untried = counts[:, 0] == 0
        means = self.sums[idx] / np.maximum(counts, 1)
        scores = np.where(untried, np.inf, means @ preference.signed)
        greedy = argmax_distribution(scores)
        return (1.0 - self.epsilon) * greedy + self.epsilon / len(arms)

    def update(
        self, x: np.ndarray | None, arm: str, outcome: Outcome, preference: Preference, propensity: float
    ) -> None:
        k = self.indices([arm])[0]
        y = normalized(outcome, self.scales)
        known = ~np.isnan(y)
        self.sums[k, known] += y[known]
        self.counts[k, known] += 1
        self.updates += 1

    def update_many(self, events: LoggedEvents) -> None:
        y = normalized_rows(events.outcomes, self.scales)
        k = self.indices(events.arms)
        known = ~np.isnan(y)
        np.add.at(self.sums, k, np.where(known, y, 0.0))  # unbuffered: row by row, as `update`
        np.add.at(self.counts, k, known)
        self.updates += len(events)

    def _config(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon}

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"sums": self.sums.copy(), "counts": self.counts.copy()}

    def _restore(self, state: dict[str, np.ndarray]) -> None:
        self.epsilon = float(state["epsilon"])
        self.sums = np.array(state["sums"], dtype=float)
        self.counts = np.array(state["counts"], dtype=float)
