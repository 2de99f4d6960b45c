"""Off-policy value estimates from logged bandit data: IPS, self-normalised IPS and doubly robust.

Each returns the estimated mean reward of a target policy with its standard error, so an operator
can judge a candidate policy on logged traffic before switching to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """An estimated policy value and its standard error."""

    value: float
    stderr: float


def _importance_weights(target_propensities: np.ndarray, logged_propensities: np.ndarray) -> np.ndarray:
    target = np.asarray(target_propensities, dtype=float)
    logged = np.asarray(logged_propensities, dtype=float)
    if target.shape != logged.shape or target.ndim != 1 or target.size < 2:
        raise ValueError("need two or more rows of matching target and logged propensities")
    if np.any(logged <= 0) or np.any(logged > 1):
        raise ValueError("logged propensities must be in (0, 1]")
    return target / logged


def ips(
    rewards: np.ndarray, logged_propensities: np.ndarray, target_propensities: np.ndarray
) -> Estimate:
    """Inverse propensity scoring: ``mean(pi(a|x) / mu(a|x) * r)``.

    ``target_propensities`` is the target policy's probability of the *logged* action on each row.

    >>> ips(np.array([1.0, 0.0]), np.array([0.5, 0.5]), np.array([1.0, 0.0]))
    Estimate(value=1.0, stderr=1.0)
    """
    terms = _importance_weights(target_propensities, logged_propensities) * np.asarray(rewards, float)
    return Estimate(float(terms.mean()), float(terms.std(ddof=1) / np.sqrt(terms.size)))


def snips(
    rewards: np.ndarray, logged_propensities: np.ndarray, target_propensities: np.ndarray
) -> Estimate:
    """Self-normalised IPS: ``sum(w r) / sum(w)``; standard error by the delta method.

    >>> snips(np.array([1.0, 0.0, 1.0]), np.array([0.5, 0.5, 0.5]), np.array([1.0, 0.0, 1.0]))
    Estimate(value=1.0, stderr=0.0)
    """
    weights = _importance_weights(target_propensities, logged_propensities)
    rewards = np.asarray(rewards, dtype=float)
    if weights.sum() <= 0:
        raise ValueError("the target policy gives zero probability to every logged action")
    value = float((weights * rewards).sum() / weights.sum())
    stderr = float(np.sqrt(np.sum((weights * (rewards - value)) ** 2)) / weights.sum())
    return Estimate(value, stderr)


def doubly_robust(
    rewards: np.ndarray,
    logged_propensities: np.ndarray,
    target_probabilities: np.ndarray,
    actions: np.ndarray,
    predicted_rewards: np.ndarray,
) -> Estimate:
    """Doubly robust: the reward model's value under the target policy, corrected by IPS on its error.

    Parameters
    ----------
    rewards, logged_propensities
        Observed reward and logging probability of the logged action, per row.
    target_probabilities
        ``(rows, arms)``: the target policy's full distribution on each row.
    actions
        ``(rows,)``: index of the logged action.
    predicted_rewards
        ``(rows, arms)``: a reward model's prediction for every action.

    Examples
    --------
    >>> pi = np.array([[1.0, 0.0], [1.0, 0.0]])
    >>> r_hat = np.array([[0.5, 0.0], [0.5, 0.0]])
    >>> doubly_robust(np.array([1.0, 0.0]), np.array([0.5, 0.5]), pi, np.array([0, 1]), r_hat)
    Estimate(value=1.0, stderr=0.5)
    """
    target = np.asarray(target_probabilities, dtype=float)
    predicted = np.asarray(predicted_rewards, dtype=float)
    actions = np.asarray(actions, dtype=np.intp)
    rows = np.arange(actions.size)
    if target.shape != predicted.shape or target.shape[0] != actions.size:
        raise ValueError("target_probabilities, predicted_rewards and actions must agree in rows/arms")
    weights = _importance_weights(target[rows, actions], logged_propensities)
    direct = (target * predicted).sum(axis=1)
    terms = direct + weights * (np.asarray(rewards, dtype=float) - predicted[rows, actions])
    return Estimate(float(terms.mean()), float(terms.std(ddof=1) / np.sqrt(terms.size)))
