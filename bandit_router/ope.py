"""Off-policy evaluation of every policy on logged decisions: collects, per logged row, what each
policy would have done and what a reward model predicts, and estimates values with `policies.offpolicy`.

Used live by the learner's tracker (on a sample of events, before the policies learn from them) and
offline by ``bandit-router evaluate``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from policies import Estimate, LinearPolicy, Policy, Preference, doubly_robust, ips, snips, utilities

INITIAL_ROWS = 1024
INITIAL_WIDTH = 8  # candidate slots per row; grows when a decision offers more models


def reward_model(policies: Mapping[str, Policy]) -> LinearPolicy | None:
    """The reward model of the doubly robust estimate: the first linear policy (None without any).

    One model for every target policy, so their DR estimates differ only in the policies.
    """
    return next((p for p in policies.values() if isinstance(p, LinearPolicy)), None)


class OffPolicyLog:
    """Logged rows for off-policy estimates: reward, logging propensity, the logged candidate, and
    per policy its distribution over the row's candidates (slot ``j`` = the row's ``j``-th arm).

    With ``capacity`` set it keeps the newest ``capacity`` rows (a ring); otherwise every row.

    Examples
    --------
    >>> from policies import FixedArm, Scales, UniformRandom
    >>> pols = {"a": FixedArm(["a", "b"], Scales(), arm="a"), "uniform": UniformRandom(["a", "b"], Scales())}
    >>> log = OffPolicyLog(list(pols))
    >>> rows = [(0, 1.0), (1, 0.0), (0, 1.0), (1, 0.0)]  # logged uniformly: arm "a" pays 1, "b" 0
    >>> all(log.add(pols, None, np.zeros(1), ["a", "b"], Preference(), a, 0.5, r) for a, r in rows)
    True
    >>> {name: round(e["snips"].value, 3) for name, e in log.estimates(with_dr=False).items()}
    {'a': 0.995, 'uniform': 0.5}
    """

    def __init__(self, policies: Sequence[str], capacity: int | None = None) -> None:
        if capacity is not None and capacity < 2:
            raise ValueError(f"capacity must be >= 2 rows, got {capacity}")
        self.policies = list(policies)
        self.capacity = capacity
        self.added = 0  # rows ever added (the ring keeps the newest `capacity`)
        rows = INITIAL_ROWS if capacity is None else capacity
        self._rewards = np.zeros(rows)
        self._logged = np.ones(rows)
        self._actions = np.zeros(rows, dtype=np.intp)
        self._targets = np.zeros((len(self.policies), rows, INITIAL_WIDTH))
        self._predicted = np.zeros((rows, INITIAL_WIDTH))

    def __len__(self) -> int:
        return self.added if self.capacity is None else min(self.added, self.capacity)

    def add(
        self,
        policies: Mapping[str, Policy],
        model: LinearPolicy | None,
        x: np.ndarray,
        arms: Sequence[str],
        preference: Preference,
        chosen: int,
        propensity: float,
        reward: float,
    ) -> bool:
        """Record one logged decision; False (nothing recorded) if a policy lacks one of ``arms``.

        Call it before the policies learn from this row, or the estimates are optimistic.
        """
        try:
            targets = [policies[name].probabilities(x, arms, preference) for name in self.policies]
            predicted = None if model is None else utilities(model.expected(x, arms), preference)
        except KeyError:
            return False
        row = self._next_row(len(arms))
        self._rewards[row] = reward
        self._logged[row] = propensity
        self._actions[row] = chosen
        self._targets[:, row, :] = 0.0
        for p, target in enumerate(targets):
            self._targets[p, row, : len(arms)] = target
        self._predicted[row, :] = 0.0
        if predicted is not None:
            self._predicted[row, : len(arms)] = predicted
        self.added += 1
        return True

    def estimates(self, with_dr: bool = True) -> dict[str, dict[str, Estimate]]:
        """Per policy ``{"ips", "snips", "dr"}`` estimates of its mean utility (``dr`` only with a
        reward model's predictions); empty below two rows."""
        n = len(self)
        if n < 2:
            return {}
        rewards, logged, actions = self._rewards[:n], self._logged[:n], self._actions[:n]
        predicted = self._predicted[:n]
        rows = np.arange(n)
        result: dict[str, dict[str, Estimate]] = {}
        for p, name in enumerate(self.policies):
            target = self._targets[p, :n]
            chosen = target[rows, actions]
            result[name] = {"ips": ips(rewards, logged, chosen)}
            if chosen.sum() > 0:
                result[name]["snips"] = snips(rewards, logged, chosen)
            if with_dr:
                result[name]["dr"] = doubly_robust(rewards, logged, target, actions, predicted)
        return result

    def _next_row(self, width: int) -> int:
        if width > self._predicted.shape[1]:
            grow = width - self._predicted.shape[1]
            self._targets = np.pad(self._targets, ((0, 0), (0, 0), (0, grow)))
            self._predicted = np.pad(self._predicted, ((0, 0), (0, grow)))
        if self.capacity is not None:
            return self.added % self.capacity
        if self.added == self._rewards.size:
            size = self._rewards.size
            self._rewards = np.pad(self._rewards, (0, size))
            self._logged = np.pad(self._logged, (0, size), constant_values=1.0)
            self._actions = np.pad(self._actions, (0, size))
            self._targets = np.pad(self._targets, ((0, 0), (0, size), (0, 0)))
            self._predicted = np.pad(self._predicted, ((0, 0), (0, size)))
        return self.added
