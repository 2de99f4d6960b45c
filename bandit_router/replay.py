"""Replays a routing dataset through online policies, revealing only the chosen model's outcome.

For every cost weight and policy it streams the rows in one seeded order, samples the model from the
policy's probabilities, reveals that model's outcome, and updates the policy; it reports mean utility,
quality and cost, cumulative regret against the per-row oracle, and the same numbers for every single
model, the per-task best model (chosen in hindsight) and the oracle.

Given the data's expected outcomes (synthetic data knows them, `bandit_router.synth.expected_outcomes`)
it also splits that regret: the expected-utility oracle's own regret (outcome noise no policy can
foresee), each run's pseudo-regret against the expected-utility oracle, and the part of it the
probability floor costs by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from bandit_router.dataset import RoutingDataset
from bandit_router.featurizer import Featurizer
from bandit_router.policy_factory import POLICY_NAMES, PolicyParams, make_policy
from policies import (
    BaRP,
    Outcome,
    Policy,
    Preference,
    Scales,
    normalize_columns,
    oracle_choices,
    utilities,
)

DEFAULT_LATENCY_SCALE_MS = 10_000.0
CURVE_POINTS = 200


@dataclass(frozen=True)
class ReplayConfig:
    """What to replay: policies, preferences, order and scales."""

    policies: Sequence[str] = ("linucb", "lints", "random")
    cost_weights: Sequence[float] = (0.1, 0.2)
    seed: int = 0
    limit: int | None = None
    cost_scale: float | None = None
    latency_scale_ms: float = DEFAULT_LATENCY_SCALE_MS
    dim: int = 256
    params: PolicyParams = field(default_factory=PolicyParams)
    # A BaRP state (`bandit-router train barp`) that every BaRP run starts from instead of scratch.
    barp_state: dict[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        unknown = [p for p in self.policies if p not in POLICY_NAMES]
        if unknown or not self.policies:
            raise ValueError(f"unknown policy {unknown}; choose from {', '.join(POLICY_NAMES)}")
        for weight in self.cost_weights:
            Preference.from_cost_weight(weight)
        if not self.cost_weights:
            raise ValueError("at least one cost weight is required")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.cost_scale is not None and self.cost_scale <= 0:
            raise ValueError(f"cost scale must be > 0, got {self.cost_scale}")


def default_cost_scale(dataset: RoutingDataset) -> float:
    """The mean per-call cost of the most expensive model in the data."""
    return float(dataset.cost.mean(axis=0).max())


def _summary(utility: np.ndarray, quality: np.ndarray, cost: np.ndarray) -> dict[str, float]:
    return {
        "utility": float(utility.mean()),
        "quality": float(quality.mean()),
        "cost": float(cost.mean()),
    }


def _pick(values: np.ndarray, choices: np.ndarray) -> np.ndarray:
    return values[np.arange(choices.size), choices]


def task_best_choices(utility: np.ndarray, eval_names: Sequence[str]) -> np.ndarray:
    """Per row, the model with the best mean utility on that row's task (hindsight, reads eval_name)."""
    tasks = np.asarray(eval_names)
    choices = np.empty(len(tasks), dtype=np.intp)
    for task in np.unique(tasks):
        rows = tasks == task
        choices[rows] = utility[rows].mean(axis=0).argmax()
    return choices


def regret_slope(curve: np.ndarray) -> float:
    """Log-log slope of cumulative regret over the last decade of rows (< 1 means sublinear)."""
    n = curve.size
    if n < 10 or curve[n // 10 - 1] <= 0 or curve[-1] <= 0:
        return float("nan")
    return float(np.log10(curve[-1] / curve[n // 10 - 1]))


def run_policy(
    policy: Policy,
    data: RoutingDataset,
    features: np.ndarray,
    preference: Preference,
    uniforms: np.ndarray,
    progress: tqdm | None = None,
) -> np.ndarray:
    """Stream every row through ``policy`` (learning online); returns the chosen model per row.

    ``uniforms`` holds one U(0, 1) draw per row that picks the model from the probabilities.
    """
    models = list(data.models)
    choices = np.empty(data.rows, dtype=np.intp)
    latency = data.latency_ms
    for row in range(data.rows):
        x = features[row]
        probabilities = policy.probabilities(x, models, preference)
        chosen = min(int(np.searchsorted(np.cumsum(probabilities), uniforms[row])), len(models) - 1)
        outcome = Outcome(
            quality=float(data.quality[row, chosen]),
            cost=float(data.cost[row, chosen]),
            latency_ms=None if latency is None else float(latency[row, chosen]),
        )
        policy.update(x, models[chosen], outcome, preference, float(probabilities[chosen]))
        choices[row] = chosen
        if progress is not None:
            progress.update()
    return choices


def _start_policy(
    name: str, models: Sequence[str], featurizer: Featurizer, scales: Scales, config: ReplayConfig
) -> Policy:
    """A fresh policy, or BaRP from ``config.barp_state`` (models it lacks are added)."""
    if name != "barp" or config.barp_state is None:
        return make_policy(name, models, featurizer, scales, config.params, config.seed)
    policy = BaRP.from_state(config.barp_state)
    if policy.dim != featurizer.dim:
        raise ValueError(f"the BaRP snapshot reads {policy.dim} features, but dim is {featurizer.dim}")
    for model in models:
        if model not in policy.arm_index:
            policy.add_arm(model)
    return policy


def _floored_oracle(
    utility: np.ndarray,
    best: np.ndarray,
    expected_oracle: np.ndarray,
    floor: float,
    checkpoints: np.ndarray,
) -> dict[str, Any]:
    """Expected utility and regret (against the per-row oracle) of the best a policy with a
    probability floor can do: play the expected-utility oracle's choice, every other arm with the
    floor. The regret curve is sampled at ``checkpoints`` like the policies' curves."""
    arms = utility.shape[1]
    gained = (1.0 - arms * floor) * _pick(utility, expected_oracle) + floor * utility.sum(axis=1)
    curve = np.cumsum(best - gained)
    return {
        "floored_utility": float(gained.mean()),
        "floored_regret": float(curve[-1]),
        "floored_regret_slope_last_decade": regret_slope(curve),
        "floored_regret_curve": curve[checkpoints].tolist(),
    }


def replay_scales(dataset: RoutingDataset, config: ReplayConfig) -> Scales:
    """The utility's scales a replay of ``dataset`` under ``config`` uses."""
    return _scales(dataset.subset(_row_order(dataset, config)), config)


def _scales(replayed: RoutingDataset, config: ReplayConfig) -> Scales:
    cost = config.cost_scale or default_cost_scale(replayed)
    return Scales(cost=cost, latency_ms=config.latency_scale_ms)


def _row_order(dataset: RoutingDataset, config: ReplayConfig) -> np.ndarray:
    return np.random.default_rng(config.seed).permutation(dataset.rows)[: config.limit]


def replay(
    dataset: RoutingDataset,
    config: ReplayConfig,
    progress: bool = True,
    expected_outcomes: np.ndarray | None = None,
) -> dict[str, Any]:
    """Run every (cost weight, policy) pair and return the results document (see the README).

    ``expected_outcomes`` (optional, ``(rows, models, 3)`` in ``dataset``'s row order, normalised
    with `replay_scales`): the ground truth, which adds ``expected_oracle`` and each run's
    ``pseudo_regret``, its slope and ``floor_regret`` (see the module docstring).
    """
    order = _row_order(dataset, config)
    data = dataset.subset(order)
    scales = _scales(data, config)
    truth = None if expected_outcomes is None else np.asarray(expected_outcomes)[order]
    featurizer = Featurizer(dim=config.dim)
    features = featurizer.transform_many(data.prompts)
    outcomes = normalize_columns(data.quality, data.cost, data.latency_ms, scales)
    total = data.rows * len(config.cost_weights) * len(config.policies)
    bar = tqdm(total=total, desc="replay", unit="row", disable=not progress, mininterval=0.5)
    checkpoints = np.unique(np.linspace(1, data.rows, CURVE_POINTS).astype(int)) - 1
    results: dict[str, Any] = {
        "rows": data.rows,
        "cost_scale": scales.cost,
        "latency_scale_ms": scales.latency_ms,
        "seed": config.seed,
        "models_order": list(data.models),
        "runs": [],
        "models": [],
        "oracle": [],
        "task_best": [],
        "curves": [],
    }
    if truth is not None:
        results["expected_oracle"] = []
    for weight in config.cost_weights:
        preference = Preference.from_cost_weight(weight)
        utility = utilities(outcomes, preference)  # (rows, models)
        oracle = oracle_choices(outcomes, preference)
        best = _pick(utility, oracle)
        for reference, choices in (
            ("oracle", oracle),
            ("task_best", task_best_choices(utility, data.eval_names)),
        ):
            results[reference].append(
                {"cost_weight": weight}
                | _summary(_pick(utility, choices), _pick(data.quality, choices), _pick(data.cost, choices))
            )
        if truth is not None:
            expected = utilities(truth, preference)  # (rows, models)
            expected_best = expected.max(axis=1)
            expected_oracle = expected.argmax(axis=1)
            # Every arm keeps the floor of the probability whatever a policy learned: per row,
            # each unit of floor costs the sum of every arm's gap to the best.
            gap_sums = (expected_best[:, None] - expected).sum(axis=1)
            results["expected_oracle"].append(
                {"cost_weight": weight}
                | _summary(
                    _pick(utility, expected_oracle),
                    _pick(data.quality, expected_oracle),
                    _pick(data.cost, expected_oracle),
                )
                | {"regret": float((best - _pick(utility, expected_oracle)).sum())}
                | _floored_oracle(utility, best, expected_oracle, config.params.floor, checkpoints)
            )
        for m, model in enumerate(data.models):
            results["models"].append(
                {"cost_weight": weight, "model": model}
                | _summary(utility[:, m], data.quality[:, m], data.cost[:, m])
                | {"regret": float((best - utility[:, m]).sum())}
            )
        for name in config.policies:
            policy = _start_policy(name, data.models, featurizer, scales, config)
            uniforms = np.random.default_rng([config.seed, POLICY_NAMES.index(name)]).random(data.rows)
            choices = run_policy(policy, data, features, preference, uniforms, bar)
            regret = np.cumsum(best - _pick(utility, choices))
            seen = checkpoints + 1
            results["runs"].append(
                {"cost_weight": weight, "policy": name}
                | _summary(_pick(utility, choices), _pick(data.quality, choices), _pick(data.cost, choices))
                | {
                    "regret": float(regret[-1]),
                    "regret_slope_last_decade": regret_slope(regret),
                    "choices": {m: int((choices == i).sum()) for i, m in enumerate(data.models)},
                }
            )
            pseudo = {}
            if truth is not None:
                pseudo_regret = np.cumsum(expected_best - _pick(expected, choices))
                floor_regret = np.cumsum(policy.floor * gap_sums)
                results["runs"][-1] |= {
                    "pseudo_regret": float(pseudo_regret[-1]),
                    "pseudo_regret_slope_last_decade": regret_slope(pseudo_regret),
                    "floor_regret": float(floor_regret[-1]),
                    "beyond_floor_regret_slope_last_decade": regret_slope(pseudo_regret - floor_regret),
                }
                pseudo = {"pseudo_regret": pseudo_regret[checkpoints].tolist()}
            results["curves"].append(
                {
                    "cost_weight": weight,
                    "policy": name,
                    "rows": seen.tolist(),
                    "regret": regret[checkpoints].tolist(),
                }
                | pseudo
                | {
                    key: (np.cumsum(_pick(values, choices))[checkpoints] / seen).tolist()
                    for key, values in (("utility", utility), ("quality", data.quality), ("cost", data.cost))
                }
                | {
                    "shares": {
                        model: (np.cumsum(choices == m)[checkpoints] / seen).tolist()
                        for m, model in enumerate(data.models)
                    }
                }
            )
    bar.close()
    return results
