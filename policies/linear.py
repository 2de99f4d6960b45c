"""What LinUCB and linear Thompson sampling share: per-arm ridge state, updates and snapshots.

The two differ only in how they turn predicted outcomes and their uncertainty into probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
import numpy as np

from policies.base import DEFAULT_FLOOR, Policy
from policies.preference import Outcome, Preference, Scales, normalized
from policies.ridge import RidgeArms

# A new arm's outcome guess when nobody gives one: a coin-flip quality, cost and latency unknown (0).
DEFAULT_PRIOR = Outcome(quality=0.5, cost=0.0, latency_ms=0.0)


class LinearPolicy(Policy):
    """Base for the linear bandits: ridge predictions of every outcome, combined per request.

    Parameters
    ----------
    arms
        Initial arm names.
    dim
        Context length.
    scales
        Cost and latency scales of the utility.
    floor
        Minimum probability of every candidate arm.
    intercept_precision
        Prior precision of each arm's intercept (small: the arm's mean is learnt fast).
    feature_precision
        Prior precision of the content weights, a scalar or one value per feature (large: content
        must earn its influence with evidence).
    """

    def __init__(
        self,
        arms: Sequence[str],
        dim: int,
        scales: Scales,
        floor: float = DEFAULT_FLOOR,
        intercept_precision: float = 1.0,
        feature_precision: float | np.ndarray = 1.0,
    ) -> None:
        features = np.broadcast_to(np.asarray(feature_precision, dtype=float), (dim,))
        self.ridge = RidgeArms(dim, np.concatenate(([intercept_precision], features)))
        super().__init__(arms, scales, floor)

    @property
    def dim(self) -> int:
        return self.ridge.dim

    def _grow(self, prior: Outcome | None) -> None:
        self.ridge.add_arm(np.nan_to_num(normalized(prior or DEFAULT_PRIOR, self.scales)))

    def update(
        self, x: np.ndarray, arm: str, outcome: Outcome, preference: Preference, propensity: float
    ) -> None:
        # Regressing outcomes on the context is unbiased whatever the logging policy was, so the
        # preference and propensity are not needed here.
        self.ridge.update(self.indices([arm])[0], x, normalized(outcome, self.scales))
        self.updates += 1

    def expected(self, x: np.ndarray, arms: Sequence[str]) -> np.ndarray:
        """Predicted normalised outcomes ``(len(arms), 3)``: quality, cost/scale, latency/scale."""
        means, _ = self.ridge.predict(x)
        return means[self.indices(arms)]

    def _scores(
        self, x: np.ndarray, arms: Sequence[str], preference: Preference
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean utility and its standard-deviation proxy ``sqrt(z' A^-1 z)`` for the candidates."""
        idx = self.indices(arms)
        means, widths = self.ridge.predict(x)
        return means[idx] @ preference.signed, np.sqrt(widths[idx])

    def _arrays(self) -> dict[str, np.ndarray]:
        return self.ridge.arrays()

    def _restore(self, state: dict[str, np.ndarray]) -> None:
        self.ridge = RidgeArms.from_arrays(state)
        self._restore_config(state)

    def _restore_config(self, state: dict[str, np.ndarray]) -> None:
        """Set the subclass's own hyper-parameters from a state dict."""
