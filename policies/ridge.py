"""Per-arm multi-output ridge regression with rank-one (Sherman-Morrison) updates.

Shared by LinUCB and linear Thompson sampling: one design matrix per arm, one response column per
outcome (quality, normalised cost, normalised latency), so any preference can be applied afterwards.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import cholesky, solve_triangular
from scipy.linalg.blas import dgemm, dger

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
        Prior precision of ``[intercept, x[columns]]``: an array of length ``len(columns) + 1``.
    columns
        Which context entries the model reads (default: all of them).

    Examples
    --------
    >>> ridge = RidgeArms(2, np.array([1.0, 1.0, 1.0]))
    >>> ridge.add_arm(np.zeros(3))
    >>> ridge.update(0, np.array([1.0, 0.0]), np.array([1.0, 0.5, 0.0]))
    >>> ridge.predict(np.array([1.0, 0.0]))[0].round(3)
    array([[0.667, 0.333, 0.   ]])
    """

    def __init__(self, dim: int, precision: np.ndarray, columns: np.ndarray | None = None) -> None:
        self.columns = None if columns is None else np.asarray(columns, dtype=np.intp)
        width = dim if self.columns is None else self.columns.size
        precision = np.asarray(precision, dtype=float)
        if precision.shape != (width + 1,) or np.any(precision <= 0):
            raise ValueError(f"precision must be {width + 1} positive numbers (intercept first)")
        if self.columns is not None and np.any((self.columns < 0) | (self.columns >= dim)):
            raise ValueError(f"columns must index a context of length {dim}")
        self.dim = dim
        self.precision = precision
        self.a_inv = np.empty((0, width + 1, width + 1))
        self.theta = np.empty((0, width + 1, N_OUTCOMES))
        self.counts = np.empty(0, dtype=np.int64)

    def add_arm(self, prior_mean: np.ndarray) -> None:
        """Append an arm whose intercept starts at ``prior_mean`` (normalised outcomes)."""
        a_inv = np.diag(1.0 / self.precision)
        theta = np.zeros((self.precision.size, N_OUTCOMES))
        theta[0] = prior_mean
        self.a_inv = np.concatenate([self.a_inv, a_inv[None]])
        self.theta = np.concatenate([self.theta, theta[None]])
        self.counts = np.append(self.counts, 0)

    def context(self, x: np.ndarray) -> np.ndarray:
        """The regression input ``[1, x[columns]]``; checks the context length."""
        x = np.asarray(x, dtype=float)
        if x.shape != (self.dim,):
            raise ValueError(f"context must have {self.dim} features, got shape {x.shape}")
        return np.concatenate(([1.0], x if self.columns is None else x[self.columns]))

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predicted outcomes ``(arms, 3)`` and ``z' A^-1 z`` per arm, for every arm in one call."""
        z = self.context(x)
        arms, width, _ = self.a_inv.shape
        means = z @ self.theta  # (arms, 3)
        # One matrix-vector product over the stacked inverses: memory-bound, so one pass matters.
        a_inv_z = (self.a_inv.reshape(arms * width, width) @ z).reshape(arms, width)
        return means, np.maximum(a_inv_z @ z, 0.0)

    def predict_arm(self, arm: int, x: np.ndarray) -> np.ndarray:
        """Predicted outcomes of one arm."""
        return self.context(x) @ self.theta[arm]

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
        # In-place rank-one BLAS update. a_inv is symmetric, so updating its transpose (the
        # Fortran-ordered view BLAS wants) updates it, without a d x d temporary.
        dger(-1.0 / denominator, u, u, a=a_inv.T, overwrite_a=True)
        self.counts[arm] += 1

    def update_many(self, arm: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Learn the rows of ``x`` ``(n, dim)`` and ``y`` ``(n, 3)`` for ``arm`` in order, as ``n``
        `update` calls would (to rounding), with O(n d^2) matrix-matrix work instead of ``2n``
        passes over ``A^-1``. Returns each row's prediction error ``y - prediction`` made just
        before learning it (0 where the target is NaN), as `update` would have seen it.

        The sequential updates' prediction errors are the innovations of the rows' joint
        covariance ``S = I + Z A^-1 Z' = L D L'`` (``L`` unit lower triangular): ``L e = r`` for the
        residuals ``r`` under the current estimate. Then ``theta += A^-1 Z' L^-T D^-1 e`` and, by
        Woodbury, ``A^-1 -= W W'`` with ``W = A^-1 Z' C^-T`` for the Cholesky factor ``C``.
        """
        z = np.concatenate([np.ones((len(x), 1)), x if self.columns is None else x[:, self.columns]], 1)
        a_inv = self.a_inv[arm]
        u = a_inv @ z.T  # (width, n)
        covariance = z @ u
        covariance[np.diag_indices_from(covariance)] += 1.0
        factor = cholesky(covariance, lower=True, check_finite=False)  # C, with S = C C'
        scale = np.diag(factor).copy()  # sqrt(D)
        unit = factor / scale  # L
        residuals = y - z @ self.theta[arm]
        errors = _innovations(unit, residuals)
        gains = solve_triangular(unit, errors / (scale**2)[:, None], lower=True, trans="T",
                                 unit_diagonal=True, check_finite=False)
        self.theta[arm] += u @ gains
        w = solve_triangular(factor, u.T, lower=True, check_finite=False)  # W' (n, width)
        # In place, as in `update`: a_inv is symmetric, so its transpose is the F-ordered operand.
        dgemm(-1.0, w, w, beta=1.0, c=a_inv.T, trans_a=True, overwrite_c=True)
        self.counts[arm] += len(x)
        return errors

    def arrays(self) -> dict[str, np.ndarray]:
        """Copies of the learned arrays, for a policy's state."""
        arrays = {
            "dim": np.array(self.dim),
            "precision": self.precision.copy(),
            "a_inv": self.a_inv.copy(),
            "theta": self.theta.copy(),
            "counts": self.counts.copy(),
        }
        if self.columns is not None:
            arrays["columns"] = self.columns.copy()
        return arrays

    @classmethod
    def from_arrays(cls, state: dict[str, np.ndarray]) -> RidgeArms:
        """Rebuild from `arrays` output."""
        ridge = cls(int(state["dim"]), np.array(state["precision"], dtype=float), state.get("columns"))
        ridge.a_inv = np.array(state["a_inv"], dtype=float)
        ridge.theta = np.array(state["theta"], dtype=float)
        ridge.counts = np.array(state["counts"], dtype=np.int64)
        return ridge


def _innovations(unit: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """Solve ``unit @ e = residuals`` column by column (``unit`` unit lower triangular), except that
    where a residual is NaN (unknown target) that row's ``e`` is 0: `RidgeArms.update` imputes an
    unknown target with its prediction, so it teaches nothing."""
    errors = np.zeros_like(residuals)
    known = ~np.isnan(residuals)
    complete = known.all(axis=0)
    if complete.any():
        errors[:, complete] = solve_triangular(
            unit, residuals[:, complete], lower=True, unit_diagonal=True, check_finite=False
        )
    for column in np.flatnonzero(known.any(axis=0) & ~complete):
        e, r, rows = errors[:, column], residuals[:, column], known[:, column]
        for i in np.flatnonzero(rows):
            e[i] = r[i] - unit[i, :i] @ e[:i]
    return errors
