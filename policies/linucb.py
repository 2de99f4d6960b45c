"""LinUCB (Li et al., 2010) over multi-objective ridge estimates, scored with each request's preference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from policies.base import DEFAULT_FLOOR, argmax_distribution, with_floor
from policies.linear import LinearPolicy
from policies.preference import Preference, Scales

DEFAULT_ALPHA = 0.1


class LinUCB(LinearPolicy):
    """Disjoint LinUCB: pick the arm with the highest ``w . y_hat + alpha * sqrt(z' A^-1 z)``.

    Each arm predicts quality, normalised cost and normalised latency from the context; the request's
    preference ``w`` turns them into one utility, so a new trade-off needs no retraining. The greedy
    choice is mixed with the uniform distribution so each candidate keeps at least ``floor``.

    References
    ----------
    Li, Chu, Langford, Schapire. "A Contextual-Bandit Approach to Personalized News Article
    Recommendation", WWW 2010.

    Examples
    --------
    >>> from policies import Outcome, Preference, Scales
    >>> policy = LinUCB(["cheap", "strong"], dim=2, scales=Scales(cost=1.0), floor=0.01)
    >>> x = np.array([1.0, 0.0])
    >>> for _ in range(50):
    ...     policy.update(x, "cheap", Outcome(0.6, cost=0.05), Preference(), 1.0)
    ...     policy.update(x, "strong", Outcome(0.9, cost=0.9), Preference(), 1.0)
    >>> policy.probabilities(x, ["cheap", "strong"], Preference.from_cost_weight(0.1)).round(2)
    array([0.01, 0.99])
    >>> policy.probabilities(x, ["cheap", "strong"], Preference.from_cost_weight(0.9)).round(2)
    array([0.99, 0.01])
    """

    name = "linucb"

    def __init__(
        self,
        arms: Sequence[str],
        dim: int,
        scales: Scales,
        floor: float = DEFAULT_FLOOR,
        intercept_precision: float = 1.0,
        feature_precision: float | np.ndarray = 1.0,
        fallback_features: Sequence[int] | np.ndarray = (),
        alpha: float = DEFAULT_ALPHA,
    ) -> None:
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        super().__init__(
            arms, dim, scales, floor, intercept_precision, feature_precision, fallback_features
        )

    def upper_bounds(self, x: np.ndarray, arms: Sequence[str], preference: Preference) -> np.ndarray:
        """The optimistic utility of each candidate arm."""
        means, widths = self._scores(x, arms, preference)
        return means + self.alpha * widths

    def probabilities(self, x: np.ndarray, arms: Sequence[str], preference: Preference) -> np.ndarray:
        return with_floor(argmax_distribution(self.upper_bounds(x, arms, preference)), self.floor)

    def _config(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def _restore_config(self, state: dict[str, np.ndarray]) -> None:
        self.alpha = float(state["alpha"])
