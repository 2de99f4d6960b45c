"""The per-row oracle for replay: it sees every model's outcome, so no deployed policy can be it."""

from __future__ import annotations

import numpy as np

from policies.preference import Preference, utilities


def oracle_utilities(normalized_outcomes: np.ndarray, preference: Preference) -> np.ndarray:
    """Best achievable utility per row, from normalised outcomes of shape ``(rows, arms, 3)``.

    >>> outcomes = np.array([[[1.0, 1.0, 0.0], [0.6, 0.0, 0.0]]])
    >>> oracle_utilities(outcomes, Preference.from_cost_weight(0.5))
    array([0.3])
    """
    return utilities(normalized_outcomes, preference).max(axis=1)


def oracle_choices(normalized_outcomes: np.ndarray, preference: Preference) -> np.ndarray:
    """Index of the best arm per row (first one on ties)."""
    return utilities(normalized_outcomes, preference).argmax(axis=1)
