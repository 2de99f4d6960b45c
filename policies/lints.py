"""Linear Thompson sampling (Agrawal & Goyal, 2013) with win probabilities as the propensities."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from policies.base import DEFAULT_FLOOR, with_floor
from policies.linear import LinearPolicy
from policies.preference import Preference, Scales

DEFAULT_SCALE = 0.1
DEFAULT_SAMPLES = 512


class LinTS(LinearPolicy):
    """Linear Thompson sampling reporting each arm's probability of being the posterior's best.

    The sampled utility of arm ``k`` for context ``z`` is ``w . y_hat_k + v * sqrt(z' A_k^-1 z) * e``
    with ``e ~ N(0, 1)``: sampling that one-dimensional projection is exactly sampling the parameter
    posterior ``N(theta_k, v^2 A_k^-1)`` and projecting it, at O(d^2) instead of O(d^3). ``samples``
    draws are taken for every arm at once and the share of draws each arm wins is its probability
    (then floored). The draws are fixed by ``seed``, so the probability vector is a deterministic
    function of the state: the service samples from it and the logged propensity is exact.

    References
    ----------
    Agrawal, Goyal. "Thompson Sampling for Contextual Bandits with Linear Payoffs", ICML 2013.

    Examples
    --------
    >>> from policies import Outcome, Preference, Scales
    >>> policy = LinTS(["a", "b"], dim=1, scales=Scales(), floor=0.01)
    >>> x = np.array([1.0])
    >>> for _ in range(200):
    ...     policy.update(x, "a", Outcome(0.4), Preference(), 1.0)
    ...     policy.update(x, "b", Outcome(0.8), Preference(), 1.0)
    >>> policy.probabilities(x, ["a", "b"], Preference()).round(2)
    array([0.01, 0.99])
    """

    name = "lints"

    def __init__(
        self,
        arms: Sequence[str],
        dim: int,
        scales: Scales,
        floor: float = DEFAULT_FLOOR,
        intercept_precision: float = 1.0,
        feature_precision: float | np.ndarray = 1.0,
        fallback_features: Sequence[int] | np.ndarray = (),
        scale: float = DEFAULT_SCALE,
        samples: int = DEFAULT_SAMPLES,
        seed: int = 0,
    ) -> None:
        if scale < 0 or samples < 1:
            raise ValueError(f"scale must be >= 0 and samples >= 1, got {scale}, {samples}")
        self.scale = float(scale)
        self.samples = int(samples)
        self.seed = int(seed)
        self._draws: dict[int, np.ndarray] = {}
        super().__init__(
            arms, dim, scales, floor, intercept_precision, feature_precision, fallback_features
        )

    def draws(self, k: int) -> np.ndarray:
        """The fixed standard-normal draws ``(samples, k)`` used for ``k`` candidates."""
        if k not in self._draws:
            rng = np.random.default_rng([self.seed, k])
            self._draws[k] = rng.standard_normal((self.samples, k))
        return self._draws[k]

    def win_probabilities(
        self, x: np.ndarray, arms: Sequence[str], preference: Preference
    ) -> np.ndarray:
        """The share of posterior draws in which each candidate has the highest utility."""
        means, widths = self._scores(x, arms, preference)
        sampled = means + self.scale * widths * self.draws(len(arms))
        wins = np.bincount(sampled.argmax(axis=1), minlength=len(arms))
        return wins / self.samples

    def probabilities(self, x: np.ndarray, arms: Sequence[str], preference: Preference) -> np.ndarray:
        return with_floor(self.win_probabilities(x, arms, preference), self.floor)

    def _config(self) -> dict[str, Any]:
        return {"scale": self.scale, "samples": self.samples, "seed": self.seed}

    def _restore_config(self, state: dict[str, np.ndarray]) -> None:
        self.scale = float(state["scale"])
        self.samples = int(state["samples"])
        self.seed = int(state["seed"])
        self._draws = {}
