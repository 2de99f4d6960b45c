"""The policy interface every router policy implements, and the small pieces they share.

A policy maps (context, candidate arms, preference) to a probability vector, learns from one logged
outcome at a time, and round-trips its whole state through a dict of numpy arrays.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np

from policies.preference import Outcome, Preference, Scales

DEFAULT_FLOOR = 0.005


@dataclass(frozen=True)
class LoggedEvents:
    """Logged decisions with their outcomes, as arrays, learned in row order by `Policy.update_many`.

    ``outcomes`` are raw ``[quality, cost, latency_ms]`` with NaN where unknown; ``preferences``
    the ``(quality, cost, latency)`` weights as logged (`Preference` normalises them).

    >>> events = LoggedEvents(np.zeros((1, 2)), ["a"], np.array([[0.9, np.nan, 120.0]]),
    ...                       np.array([[0.8, 0.2, 0.0]]), np.array([0.5]))
    >>> next(events.rows())[2]
    Outcome(quality=0.9, cost=None, latency_ms=120.0)
    """

    contexts: np.ndarray  # (n, dim)
    arms: Sequence[str]  # the chosen arm of each row
    outcomes: np.ndarray  # (n, 3)
    preferences: np.ndarray  # (n, 3)
    propensities: np.ndarray  # (n,)

    def __len__(self) -> int:
        return len(self.arms)

    def rows(self) -> Iterator[tuple[np.ndarray, str, Outcome, Preference, float]]:
        """Each row as `Policy.update`'s arguments."""
        for x, arm, (quality, cost, latency), weights, propensity in zip(
            self.contexts, self.arms, self.outcomes.tolist(), self.preferences,
            self.propensities.tolist(), strict=True,
        ):
            outcome = Outcome(
                quality,
                None if math.isnan(cost) else cost,
                None if math.isnan(latency) else latency,
            )
            yield x, arm, outcome, Preference.from_vector(weights), propensity


class Policy(ABC):
    """A contextual bandit policy over named arms (models).

    Subclasses keep their per-arm state in dense numpy arrays indexed by ``self.arm_index``.
    """

    name: ClassVar[str]

    def __init__(self, arms: Sequence[str], scales: Scales, floor: float) -> None:
        if not 0.0 <= floor < 1.0:
            raise ValueError(f"floor must be in [0, 1), got {floor}")
        self.scales = scales
        self.floor = float(floor)
        self.arms: list[str] = []
        self.arm_index: dict[str, int] = {}
        self.updates = 0
        for arm in arms:
            self.add_arm(arm)

    @abstractmethod
    def probabilities(self, x: np.ndarray, arms: Sequence[str], preference: Preference) -> np.ndarray:
        """A distribution over ``arms`` (same order) with every entry >= the floor."""

    @abstractmethod
    def update(
        self, x: np.ndarray, arm: str, outcome: Outcome, preference: Preference, propensity: float
    ) -> None:
        """Learn from one logged decision: the chosen arm, its outcome, and the logging propensity."""

    def update_many(self, events: LoggedEvents) -> None:
        """Learn ``events`` in order: the same as one `update` per row (to rounding), and faster
        where a policy vectorises it."""
        for row in events.rows():
            self.update(*row)

    def add_arm(self, arm: str, prior: Outcome | None = None) -> None:
        """Make ``arm`` routable. ``prior`` is a guess of its outcome (e.g. from catalog prices)."""
        if arm in self.arm_index:
            raise ValueError(f"arm {arm!r} already exists")
        self.arm_index[arm] = len(self.arms)
        self.arms.append(arm)
        self._grow(prior)

    def _grow(self, prior: Outcome | None) -> None:  # noqa: B027 - an optional hook
        """Append state for the newest arm; policies without per-arm state need nothing."""

    def indices(self, arms: Sequence[str]) -> np.ndarray:
        """Positions of ``arms`` in this policy's state; unknown arms raise KeyError naming them."""
        if len(arms) == 0:
            raise ValueError("at least one candidate arm is required")
        try:
            return np.fromiter((self.arm_index[a] for a in arms), dtype=np.intp, count=len(arms))
        except KeyError as err:
            raise KeyError(f"unknown arm {err.args[0]!r}; known arms: {self.arms}") from None

    # --- state -----------------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """Everything needed to rebuild this policy exactly, as numpy arrays."""
        state = {
            "policy": np.array(self.name),
            "arms": np.array(self.arms, dtype=str),
            "cost_scale": np.array(self.scales.cost),
            "latency_scale": np.array(self.scales.latency_ms),
            "floor": np.array(self.floor),
            "updates": np.array(self.updates),
        }
        state.update({key: np.asarray(value) for key, value in self._config().items()})
        state.update(self._arrays())
        return state

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> Self:
        """Rebuild a policy saved by `state`; probabilities and future updates are identical."""
        if str(state["policy"]) != cls.name:
            raise ValueError(f"state is for policy {str(state['policy'])!r}, not {cls.name!r}")
        policy = cls.__new__(cls)
        policy.scales = Scales(float(state["cost_scale"]), float(state["latency_scale"]))
        policy.floor = float(state["floor"])
        policy.updates = int(state["updates"])
        policy.arms = [str(a) for a in state["arms"]]
        policy.arm_index = {arm: i for i, arm in enumerate(policy.arms)}
        policy._restore(state)
        return policy

    def _config(self) -> dict[str, Any]:
        """Scalar hyper-parameters to keep in the state."""
        return {}

    def _arrays(self) -> dict[str, np.ndarray]:
        """Learned arrays to keep in the state (copies)."""
        return {}

    def _restore(self, state: dict[str, np.ndarray]) -> None:  # noqa: B027 - an optional hook
        """Set hyper-parameters and learned arrays from a state dict."""


def with_floor(distribution: np.ndarray, floor: float) -> np.ndarray:
    """Mix a distribution with the uniform one so every entry is at least ``floor``.

    >>> with_floor(np.array([1.0, 0.0, 0.0]), 0.05)
    array([0.9 , 0.05, 0.05])
    """
    k = distribution.size
    if k * floor >= 1.0:
        return np.full(k, 1.0 / k)
    return floor + (1.0 - k * floor) * distribution


def argmax_distribution(scores: np.ndarray) -> np.ndarray:
    """All mass on the best score, split evenly among exact ties (so no arm wins by position).

    >>> argmax_distribution(np.array([0.2, 0.7, 0.7]))
    array([0. , 0.5, 0.5])
    """
    best = scores >= scores.max()
    return best / best.sum()
