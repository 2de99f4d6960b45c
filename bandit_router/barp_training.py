"""Warm-starts BaRP offline from a routing dataset under bandit feedback, and saves or loads its snapshot.

Each step samples a preference, lets the policy pick a model from its own probabilities, reveals
only that model's outcome and updates, exactly as it would learn online; the file it writes is the
policy's state in the project's ``.npz`` state codec.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bandit_router.dataset import RoutingDataset
from bandit_router.featurizer import Featurizer
from bandit_router.policy_factory import PolicyParams, make_policy
from bandit_router.replay import default_cost_scale
from bandit_router.storage.errors import StateCodecError
from bandit_router.storage.state_codec import decode_state, encode_state
from policies import BaRP, Outcome, Preference, Scales


@dataclass(frozen=True)
class TrainConfig:
    """How to warm-start: which preferences, how many rows and passes, scales and seed.

    ``cost_weights`` None samples every step's preference uniformly from the simplex: over
    (quality, cost, latency) when the data has latency, else over (quality, cost).
    """

    cost_weights: Sequence[float] | None = None
    rows: int | None = None
    epochs: int = 1
    seed: int = 0
    cost_scale: float | None = None
    latency_scale_ms: float = 10_000.0
    dim: int = 256
    params: PolicyParams = field(default_factory=PolicyParams)

    def __post_init__(self) -> None:
        if self.cost_weights is not None:
            if not self.cost_weights:
                raise ValueError("cost_weights must list at least one weight (or be None)")
            for weight in self.cost_weights:
                Preference.from_cost_weight(weight)
        if self.rows is not None and self.rows < 1:
            raise ValueError(f"rows must be >= 1, got {self.rows}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.cost_scale is not None and self.cost_scale <= 0:
            raise ValueError(f"cost_scale must be > 0, got {self.cost_scale}")


def sample_preference(rng: np.random.Generator, config: TrainConfig, latency: bool) -> Preference:
    """One training preference: from ``config.cost_weights``, else uniform on the simplex."""
    if config.cost_weights is not None:
        return Preference.from_cost_weight(float(rng.choice(np.asarray(config.cost_weights))))
    if latency:
        return Preference.from_vector(rng.dirichlet(np.ones(3)))
    return Preference.from_cost_weight(float(rng.random()))


def train_barp(dataset: RoutingDataset, config: TrainConfig, progress: bool = True) -> BaRP:
    """A BaRP policy over the dataset's models, trained under bandit feedback (see module doc)."""
    rng = np.random.default_rng(config.seed)
    data = dataset.subset(np.arange(min(config.rows or dataset.rows, dataset.rows)))
    scales = Scales(
        cost=config.cost_scale or default_cost_scale(data), latency_ms=config.latency_scale_ms
    )
    featurizer = Featurizer(dim=config.dim)
    features = featurizer.transform_many(data.prompts)
    policy = make_policy("barp", data.models, featurizer, scales, config.params, config.seed)
    assert isinstance(policy, BaRP)
    models = list(data.models)
    latency = data.latency_ms
    total = data.rows * config.epochs
    with tqdm(total=total, desc="train barp", unit="row", disable=not progress, mininterval=0.5) as bar:
        for _ in range(config.epochs):
            for row in rng.permutation(data.rows):
                preference = sample_preference(rng, config, latency is not None)
                probabilities = policy.probabilities(features[row], models, preference)
                chosen = int(rng.choice(len(models), p=probabilities))
                outcome = Outcome(
                    quality=float(data.quality[row, chosen]),
                    cost=float(data.cost[row, chosen]),
                    latency_ms=None if latency is None else float(latency[row, chosen]),
                )
                policy.update(
                    features[row], models[chosen], outcome, preference, float(probabilities[chosen])
                )
                bar.update()
    return policy


def save_snapshot(policy: BaRP, path: str | Path) -> None:
    """Write the policy's state to ``path`` (``.npz`` bytes of the state codec)."""
    Path(path).write_bytes(encode_state(policy.state()))


def load_snapshot(path: str | Path) -> BaRP:
    """The BaRP policy saved at ``path``; ValueError naming the file if it is not one."""
    try:
        state = decode_state(Path(path).read_bytes())
    except StateCodecError as error:
        raise ValueError(f"BaRP snapshot {path}: {error}") from None
    if str(state.get("policy", "")) != BaRP.name:
        raise ValueError(f"{path} is not a BaRP snapshot (policy {str(state.get('policy'))!r})")
    return BaRP.from_state(state)
