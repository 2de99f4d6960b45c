"""Preferences, outcomes and the utility every policy maximises: the project's only definition of it.

BaRP's reward with latency added:
``u = w_q * quality - w_c * min(cost / cost_scale, 1) - w_l * min(latency_ms / latency_scale, 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

OBJECTIVES = ("quality", "cost", "latency")


@dataclass(frozen=True)
class Preference:
    """Non-negative weights on (quality, cost, latency), normalised to sum to one.

    >>> Preference.from_cost_weight(0.2).vector
    array([0.8, 0.2, 0. ])
    >>> Preference(quality=2, cost=1, latency=1).cost
    0.25
    """

    quality: float = 1.0
    cost: float = 0.0
    latency: float = 0.0

    def __post_init__(self) -> None:
        weights = np.array([self.quality, self.cost, self.latency], dtype=float)
        if not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError(f"preference weights must be finite and >= 0, got {weights.tolist()}")
        total = weights.sum()
        if total <= 0:
            raise ValueError("preference weights must not all be zero")
        weights = weights / total
        object.__setattr__(self, "quality", float(weights[0]))
        object.__setattr__(self, "cost", float(weights[1]))
        object.__setattr__(self, "latency", float(weights[2]))

    @classmethod
    def from_cost_weight(cls, cost_weight: float) -> Preference:
        """The scalar form: ``(1 - c, c, 0)`` for a cost weight ``c`` in [0, 1]."""
        c = float(cost_weight)
        if not 0.0 <= c <= 1.0:
            raise ValueError(f"cost_weight must be in [0, 1], got {cost_weight}")
        return cls(quality=1.0 - c, cost=c, latency=0.0)

    @classmethod
    def from_vector(cls, weights: Any) -> Preference:
        """From any length-3 sequence ``(quality, cost, latency)``."""
        w = np.asarray(weights, dtype=float).ravel()
        if w.shape != (3,):
            raise ValueError(f"a preference vector has 3 weights (quality, cost, latency), got {w.size}")
        return cls(quality=float(w[0]), cost=float(w[1]), latency=float(w[2]))

    @property
    def vector(self) -> np.ndarray:
        """The weights as an array ``[quality, cost, latency]``."""
        return np.array([self.quality, self.cost, self.latency])

    @property
    def signed(self) -> np.ndarray:
        """Weights to dot with a normalised outcome vector: quality counts up, cost and latency down."""
        return np.array([self.quality, -self.cost, -self.latency])


@dataclass(frozen=True)
class Scales:
    """What one unit of normalised cost and latency is worth: above the scale the penalty is capped."""

    cost: float = 1.0
    latency_ms: float = 10_000.0

    def __post_init__(self) -> None:
        if not (self.cost > 0 and self.latency_ms > 0):
            raise ValueError(f"scales must be > 0, got cost={self.cost}, latency_ms={self.latency_ms}")


@dataclass(frozen=True)
class Outcome:
    """How one call went. ``cost`` (USD) and ``latency_ms`` may be unknown (None)."""

    quality: float
    cost: float | None = None
    latency_ms: float | None = None


def normalized(outcome: Outcome, scales: Scales) -> np.ndarray:
    """The outcome as ``[quality, min(cost/scale, 1), min(latency/scale, 1)]``; unknown parts are NaN.

    >>> normalized(Outcome(0.9, cost=0.02, latency_ms=500), Scales(cost=0.01))
    array([0.9 , 1.  , 0.05])
    """
    cost = np.nan if outcome.cost is None else min(outcome.cost / scales.cost, 1.0)
    latency = np.nan if outcome.latency_ms is None else min(outcome.latency_ms / scales.latency_ms, 1.0)
    return np.array([outcome.quality, cost, latency], dtype=float)


def normalized_rows(outcomes: np.ndarray, scales: Scales) -> np.ndarray:
    """`normalized` for raw ``[quality, cost, latency_ms]`` rows ``(n, 3)``, NaN where unknown.

    >>> normalized_rows(np.array([[0.9, 0.02, np.nan]]), Scales(cost=0.01))
    array([[0.9, 1. , nan]])
    """
    rows = np.array(outcomes, dtype=float)
    rows[:, 1] = np.minimum(rows[:, 1] / scales.cost, 1.0)
    rows[:, 2] = np.minimum(rows[:, 2] / scales.latency_ms, 1.0)
    return rows


def utility(outcome: Outcome, preference: Preference, scales: Scales) -> float:
    """The reward of one call under one preference. Unknown cost or latency counts as zero.

    >>> round(utility(Outcome(1.0, cost=0.005), Preference.from_cost_weight(0.2), Scales(cost=0.01)), 6)
    0.7
    """
    return float(utilities(normalized(outcome, scales), preference))


def utilities(normalized_outcomes: np.ndarray, preference: Preference) -> np.ndarray:
    """Vectorised utility of normalised ``[..., 3]`` outcomes (from `normalized` or `normalize_columns`)."""
    values = np.nan_to_num(np.asarray(normalized_outcomes, dtype=float), nan=0.0)
    return values @ preference.signed


def normalize_columns(
    quality: np.ndarray, cost: np.ndarray, latency_ms: np.ndarray | None, scales: Scales
) -> np.ndarray:
    """Stack arrays of raw outcomes into normalised ``[..., 3]`` form (latency None means zero)."""
    quality = np.asarray(quality, dtype=float)
    cost_part = np.minimum(np.asarray(cost, dtype=float) / scales.cost, 1.0)
    if latency_ms is None:
        latency_part = np.zeros_like(quality)
    else:
        latency_part = np.minimum(np.asarray(latency_ms, dtype=float) / scales.latency_ms, 1.0)
    return np.stack([quality, cost_part, latency_part], axis=-1)
