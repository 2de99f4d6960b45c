"""Per-arm multi-output ridge regression with rank-one (Sherman-Morrison) updates.

Shared by LinUCB and linear Thompson sampling: one design matrix per arm, one response column per
outcome (quality, normalised cost, normalised latency), so any preference can be applied afterwards.
"""

from __future__ import annotations

import numpy as np

N_OUTCOMES = 3


class RidgeArms:
    """Ridge estimates ``theta_k = (diag(precision) + Z_k'Z_k)^-1 (diag(precision) theta0_k + Z_k'Y_k)``.

    ``z = [1, x]``: an intercept is prepended to every context so its prior precision can differ
    from the content weights' (a weak intercept prior and a strong content prior make the model fall
    back to the best non-contextual arm when the content carries no signal).

    Parameters
    ----------
    dim
        Context length (without the intercept).
    precision
        Prior precision of ``[intercept, x_1 .. x_dim]``: an array of length ``dim + 1``.

    Examples
    --------
    >>> ridge = RidgeArms(2, np.array([1.0, 1.0, 1.0]))
    >>> ridge.add_arm(np.zeros(3))
    >>> ridge.update(0, np.array([1.0, 0.0]), np.array([1.0, 0.5, 0.0]))
    >>> ridge.predict(np.array([1.0, 0.0]))[0].round(3)
    array([[0.667, 0.333, 0.   ]])
    """

    def __init__(self, dim: int, precision: np.ndarray) -> None:
        precision = np.asarray(precision, dtype=float)
        if precision.shape != (dim + 1,) or np.any(precision <= 0):
            raise ValueError(f"precision must be {dim + 1} positive numbers (intercept first)")
        self.dim = dim
        self.precision = precision
        self.a_inv = np.empty((0, dim + 1, dim + 1))
        self.theta = np.empty((0, dim + 1, N_OUTCOMES))
        self.counts = np.empty(0, dtype=np.int64)

    def add_arm(self, prior_mean: np.ndarray) -> None:
        """Append an arm whose intercept starts at ``prior_mean`` (normalised outcomes)."""
        a_inv = np.diag(1.0 / self.precision)
        theta = np.zeros((self.dim + 1, N_OUTCOMES))
        theta[0] = prior_mean
        self.a_inv = np.concatenate([self.a_inv, a_inv[None]])
        self.theta = np.concatenate([self.theta, theta[None]])
        self.counts = np.append(self.counts, 0)

    def context(self, x: np.ndarray) -> np.ndarray:
        """The regression input ``[1, x]``; checks the context length."""
        x = np.asarray(x, dtype=float)
        if x.shape != (self.dim,):
            raise ValueError(f"context must have {self.dim} features, got shape {x.shape}")
        return np.concatenate(([1.0], x))

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predicted outcomes ``(arms, 3)`` and ``z' A^-1 z`` per arm, for every arm in one call."""
        z = self.context(x)
        means = z @ self.theta  # (arms, 3)
        widths = np.einsum("kj,j->k", self.a_inv @ z, z)
        return means, np.maximum(widths, 0.0)

    def update(self, arm: int, x: np.ndarray, y: np.ndarray) -> None:
        """One Sherman-Morrison step for ``arm``. NaN targets (unknown cost/latency) leave that column's
        estimate where it is: they are imputed with the current prediction.
        """
        z = self.context(x)
        a_inv = self.a_inv[arm]
        u = a_inv @ z
        denominator = 1.0 + z @ u
        predicted = z @ self.theta[arm]
        target = np.where(np.isnan(y), predicted, y)
        self.theta[arm] += np.outer(u, (target - predicted) / denominator)
        a_inv -= np.outer(u, u / denominator)
        self.counts[arm] += 1

    def arrays(self) -> dict[str, np.ndarray]:
        """Copies of the learned arrays, for a policy's state."""
        return {
            "precision": self.precision.copy(),
            "a_inv": self.a_inv.copy(),
            "theta": self.theta.copy(),
            "counts": self.counts.copy(),
        }

    @classmethod
    def from_arrays(cls, state: dict[str, np.ndarray]) -> RidgeArms:
        """Rebuild from `arrays` output."""
        precision = np.array(state["precision"], dtype=float)
        ridge = cls(precision.size - 1, precision)
        ridge.a_inv = np.array(state["a_inv"], dtype=float)
        ridge.theta = np.array(state["theta"], dtype=float)
        ridge.counts = np.array(state["counts"], dtype=np.int64)
        return ridge
