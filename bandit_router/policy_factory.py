"""Builds policies by name with the project's tuned hyper-parameters and the featurizer's layout."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bandit_router.featurizer import Featurizer
from policies import BaRP, EpsilonGreedy, LinTS, LinUCB, Policy, Scales, UniformRandom, VowpalWabbit

POLICY_NAMES = ("linucb", "lints", "egreedy", "random", "vw", "barp")


@dataclass(frozen=True)
class PolicyParams:
    """Hyper-parameters of the built-in policies.

    The linear policies' fallback model reads the intercept and the dense prompt signals; the full
    model adds the hashed n-grams, with a stronger prior. The full model is used for an arm's outcome
    only once it predicts that outcome better than the fallback on data it had not yet seen, so on
    prompts whose text says little about which model wins the policy routes on the dense signals
    alone instead of chasing noise.
    """

    floor: float = 0.005
    # The intercept's prior is far weaker than the features': an arm's mean must live in its
    # intercept, or a feature that is constant on the rows an arm happened to get (say, "long
    # prompt") soaks up part of the mean and the arm is mispredicted everywhere else.
    intercept_precision: float = 0.01
    dense_precision: float = 1.0
    hashed_precision: float = 10.0
    alpha: float = 0.25
    ts_scale: float = 0.1
    epsilon: float = 0.05
    # Vowpal Wabbit: exploration strategy and its knobs (see policies.vw.VowpalWabbit). SquareCB's
    # gamma scale 50 (VW's default is 10) gave higher utility on synthetic replays (seeds 0-2).
    vw_explore: str = "squarecb"
    vw_gamma_scale: float = 50.0
    vw_epsilon: float = 0.05
    vw_learning_rate: float = 0.5
    barp_hidden: int = 64
    barp_preference_hidden: int = 16
    barp_learning_rate: float = 0.003
    barp_entropy: float = 0.1
    barp_value_weight: float = 1.0
    barp_weight_clip: float = 10.0
    barp_decay_steps: float = 500.0

    def feature_precision(self, featurizer: Featurizer) -> np.ndarray:
        """Prior precision per feature: hashed n-gram slots strong, dense signals weak."""
        precision = np.full(featurizer.dim, self.hashed_precision)
        precision[featurizer.dense_slice] = self.dense_precision
        return precision


def make_policy(
    name: str,
    arms: Sequence[str],
    featurizer: Featurizer,
    scales: Scales,
    params: PolicyParams = PolicyParams(),
    seed: int = 0,
) -> Policy:
    """A fresh policy called ``name`` (one of `POLICY_NAMES`) over ``arms``."""
    if name in ("linucb", "lints"):
        linear = dict(
            arms=arms,
            dim=featurizer.dim,
            scales=scales,
            floor=params.floor,
            intercept_precision=params.intercept_precision,
            feature_precision=params.feature_precision(featurizer),
            fallback_features=np.arange(featurizer.dim)[featurizer.dense_slice],
        )
        if name == "linucb":
            return LinUCB(**linear, alpha=params.alpha)
        return LinTS(**linear, scale=params.ts_scale, seed=seed)
    if name == "vw":
        return VowpalWabbit(
            arms,
            dim=featurizer.dim,
            scales=scales,
            floor=params.floor,
            explore=params.vw_explore,
            gamma_scale=params.vw_gamma_scale,
            epsilon=params.vw_epsilon,
            learning_rate=params.vw_learning_rate,
            seed=seed,
        )
    if name == "barp":
        return BaRP(
            arms,
            featurizer.dim,
            scales,
            floor=params.floor,
            hidden=params.barp_hidden,
            preference_hidden=params.barp_preference_hidden,
            learning_rate=params.barp_learning_rate,
            entropy=params.barp_entropy,
            value_weight=params.barp_value_weight,
            weight_clip=params.barp_weight_clip,
            decay_steps=params.barp_decay_steps,
            seed=seed,
        )
    if name == "egreedy":
        return EpsilonGreedy(arms, scales, epsilon=params.epsilon)
    if name == "random":
        return UniformRandom(arms, scales)
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")
