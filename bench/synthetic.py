"""Regret study on synthetic data: 6 models, 20,000 rows, 5 seeds, several cost weights.

Run: ``python -m bench.synthetic [--rows 20000 --seeds 0,1,2,3,4 --jobs 2 --out bench/results]``. Writes
``synthetic.json``, ``synthetic.md``, ``synthetic.png`` (mean cumulative regret per policy) and
``synthetic_loglog.png`` (the learned policies log-log, with the best a floored policy can do). Each
seed draws a new dataset (``bandit_router.synth.generate``) and a new row order, then replays it with
``bandit_router.replay`` exactly as ``bandit-router replay`` would, plus the generator's ground truth
(``bandit_router.synth.expected_outcomes``) so the regret can be split into outcome noise, the
probability floor's share and what is left to learning.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from bandit_router.replay import ReplayConfig, replay, replay_scales
from bandit_router.report import plot_regret
from bandit_router.synth import expected_outcomes, generate, to_dataset

POLICIES = ("linucb", "lints", "barp", "egreedy", "random")
LEARNED = ("linucb", "lints", "barp")
COST_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
REGRET_RATIO_TARGET = 0.25  # of uniform random's regret
SLOPE_TARGET = 0.8  # log-log slope of cumulative regret over the last decade of rows
# BaRP must beat every single model at cost weights up to this one, and come within the tolerance
# of the best single model (or beat it) above it.
BARP_BEAT_UP_TO = 0.5
BARP_TOLERANCE = 0.01


def barp_meets_target(weight: float, margins: list[float]) -> bool:
    """Whether BaRP's utility minus the best single model's meets its target on every seed."""
    return min(margins) > 0 if weight <= BARP_BEAT_UP_TO else min(margins) >= -BARP_TOLERANCE


def replay_seed(rows: int, models: int, seed: int) -> dict[str, Any]:
    """One seed's dataset and row order, replayed on one BLAS thread."""
    data = generate(models=models, rows=rows, seed=seed)
    dataset = to_dataset(data)
    config = ReplayConfig(policies=POLICIES, cost_weights=COST_WEIGHTS, seed=seed)
    truth = expected_outcomes(data, replay_scales(dataset, config))
    with threadpool_limits(limits=1, user_api="blas"):
        return replay(dataset, config, progress=False, expected_outcomes=truth)


def run(rows: int, models: int, seeds: list[int], jobs: int = 1) -> dict[str, Any]:
    """Replay every seed (``jobs`` at a time) and aggregate regret per (cost weight, policy)."""
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(replay_seed, rows, models, seed) for seed in seeds]
        per_seed = [f.result() for f in tqdm(futures, desc="seeds", unit="seed")]
    summary = []
    for weight in COST_WEIGHTS:
        random_regret = np.array(
            [_run(r, weight, "random")["regret"] for r in per_seed]
        )
        for policy in POLICIES:
            runs = [_run(r, weight, policy) for r in per_seed]
            regret = np.array([x["regret"] for x in runs])
            ratios = regret / random_regret
            slopes = np.array([x["regret_slope_last_decade"] for x in runs], dtype=float)
            entry = {
                "cost_weight": weight,
                "policy": policy,
                "regret_mean": float(regret.mean()),
                "regret_sd": float(regret.std(ddof=1)) if len(regret) > 1 else 0.0,
                "regret_ratio_to_random": ratios.tolist(),
                "slope_last_decade": slopes.tolist(),
                "utility_mean": float(np.mean([x["utility"] for x in runs])),
                "pseudo_regret_mean": float(np.mean([x["pseudo_regret"] for x in runs])),
                "pseudo_slope_last_decade": [x["pseudo_regret_slope_last_decade"] for x in runs],
                "floor_regret_mean": float(np.mean([x["floor_regret"] for x in runs])),
                "beyond_floor_slope_last_decade": [
                    x["beyond_floor_regret_slope_last_decade"] for x in runs
                ],
            }
            if policy in ("linucb", "lints"):
                entry["meets_targets"] = bool(
                    ratios.max() < REGRET_RATIO_TARGET and slopes.max() < SLOPE_TARGET
                )
            entry["utility_minus_best_model"] = [
                x["utility"] - _best_model(r, weight) for x, r in zip(runs, per_seed, strict=True)
            ]
            summary.append(entry)
    curves = _mean_curves(per_seed)
    return {
        "rows": rows,
        "models": models,
        "seeds": seeds,
        "targets": {"regret_ratio_to_random_below": REGRET_RATIO_TARGET, "slope_below": SLOPE_TARGET},
        "summary": summary,
        "reference": [
            _reference(per_seed, weight) for weight in COST_WEIGHTS
        ],
        "curves": curves,
    }


def _run(results: dict[str, Any], weight: float, policy: str) -> dict[str, Any]:
    return next(r for r in results["runs"] if r["cost_weight"] == weight and r["policy"] == policy)


def _best_model(results: dict[str, Any], weight: float) -> float:
    return max(m["utility"] for m in results["models"] if m["cost_weight"] == weight)


def _ref(results: dict[str, Any], key: str, weight: float) -> dict[str, Any]:
    return next(r for r in results[key] if r["cost_weight"] == weight)


def _reference(per_seed: list[dict[str, Any]], weight: float) -> dict[str, Any]:
    """The references at one cost weight over the seeds: oracles, best model, and the best a
    floored policy can do."""
    best_model = [_best_model(r, weight) for r in per_seed]
    expected = [_ref(r, "expected_oracle", weight) for r in per_seed]
    return {
        "cost_weight": weight,
        "oracle_utility": float(np.mean([_ref(r, "oracle", weight)["utility"] for r in per_seed])),
        "task_best_utility": float(
            np.mean([_ref(r, "task_best", weight)["utility"] for r in per_seed])
        ),
        "best_model_utility": float(np.mean(best_model)),
        "expected_oracle_utility": float(np.mean([x["utility"] for x in expected])),
        "noise_regret_mean": float(np.mean([x["regret"] for x in expected])),
        "floored_oracle_regret_mean": float(np.mean([x["floored_regret"] for x in expected])),
        "floored_oracle_minus_best_model": [
            x["floored_utility"] - best for x, best in zip(expected, best_model, strict=True)
        ],
        "floored_oracle_curve": np.mean([x["floored_regret_curve"] for x in expected], axis=0)
        .round(3)
        .tolist(),
        "floored_oracle_slopes": [x["floored_regret_slope_last_decade"] for x in expected],
    }


def _mean_curves(per_seed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    curves = []
    for weight in COST_WEIGHTS:
        for policy in POLICIES:
            matching = [
                c for r in per_seed for c in r["curves"]
                if c["cost_weight"] == weight and c["policy"] == policy
            ]
            curves.append({
                "cost_weight": weight,
                "policy": policy,
                "rows": matching[0]["rows"],
                "regret": np.mean([c["regret"] for c in matching], axis=0).round(3).tolist(),
            })
    return curves


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Synthetic regret study",
        "",
        f"{results['models']} models, {results['rows']} rows, seeds {results['seeds']} (a new dataset "
        "and row order per seed). Regret is cumulative against the per-row oracle. Targets for "
        f"LinUCB and LinTS: regret below {REGRET_RATIO_TARGET:.0%} of uniform random's on every seed, "
        f"and a log-log slope over the last decade of rows below {SLOPE_TARGET} (sublinear growth).",
        "",
        "Reproduce: `python -m bench.synthetic --jobs 2`",
        "",
        "| cost weight | policy | mean utility | regret (mean ± sd) | regret / random (per seed) | "
        "slope, last decade (per seed) | targets |",
        "|---:|---|---:|---:|---|---|---|",
    ]
    for s in results["summary"]:
        verdict = {True: "met", False: "**missed**"}.get(s.get("meets_targets"), "")
        lines.append(
            f"| {s['cost_weight']:g} | {s['policy']} | {s['utility_mean']:.4f} | "
            f"{s['regret_mean']:.0f} ± {s['regret_sd']:.0f} | "
            f"{', '.join(f'{v:.3f}' for v in s['regret_ratio_to_random'])} | "
            f"{', '.join(f'{v:.2f}' for v in s['slope_last_decade'])} | {verdict} |"
        )
    lines += [
        "",
        "## BaRP against the best single model",
        "",
        "Mean utility minus the best single model's (chosen in hindsight, per seed). BaRP's targets: "
        f"above it at cost weights <= {BARP_BEAT_UP_TO:g}, within {BARP_TOLERANCE:g} of it (or above) "
        "from there on. *Best possible with the floor* is the expected-utility oracle's choice with "
        "every other arm kept at the probability floor, as every policy here must: where even it "
        "misses the target on a seed, no policy can meet it there.",
        "",
        "| cost weight | policy | utility - best model (per seed) | mean | BaRP target |",
        "|---:|---|---|---:|---|",
    ]
    bounds = {r["cost_weight"]: r["floored_oracle_minus_best_model"] for r in results["reference"]}
    for s in results["summary"]:
        if s["policy"] not in ("barp", "linucb"):
            continue
        margins = s["utility_minus_best_model"]
        verdict = ""
        if s["policy"] == "barp":
            verdict = "met" if barp_meets_target(s["cost_weight"], margins) else "**missed**"
        lines.append(
            f"| {s['cost_weight']:g} | {s['policy']} | {', '.join(f'{v:+.4f}' for v in margins)} | "
            f"{np.mean(margins):+.4f} | {verdict} |"
        )
        if s["policy"] == "barp":  # after LinUCB and BaRP, the bound both live under
            bound = bounds[s["cost_weight"]]
            blocked = [
                str(seed) for seed, v in zip(results["seeds"], bound, strict=True)
                if not barp_meets_target(s["cost_weight"], [v])
            ]
            reachable = f"**unreachable** on seed {', '.join(blocked)}" if blocked else "reachable"
            lines.append(
                f"| {s['cost_weight']:g} | best possible with the floor | "
                f"{', '.join(f'{v:+.4f}' for v in bound)} | {np.mean(bound):+.4f} | {reachable} |"
            )
    lines += ["", "| cost weight | best single model | per-task best (hindsight) | "
              "expected-utility oracle | oracle |", "|---:|---:|---:|---:|---:|"]
    for r in results["reference"]:
        lines.append(f"| {r['cost_weight']:g} | {r['best_model_utility']:.4f} | "
                     f"{r['task_best_utility']:.4f} | {r['expected_oracle_utility']:.4f} | "
                     f"{r['oracle_utility']:.4f} |")
    return "\n".join(lines + regret_sources_markdown(results)) + "\n"


def regret_sources_markdown(results: dict[str, Any]) -> list[str]:
    """The split of the linear policies' regret into noise, the floor's share and learning."""
    noise = {r["cost_weight"]: r["noise_regret_mean"] for r in results["reference"]}
    lines = [
        "",
        "## Where the linear policies' regret comes from",
        "",
        "Regret against the per-row oracle = **noise** + **pseudo-regret** (realised). Noise is the "
        "regret of the expected-utility oracle, which picks each row's best model in expectation "
        "from the generator's ground truth: rows whose draws made another model best, which no "
        "policy can foresee. Pseudo-regret is against the expected-utility oracle, the regret of "
        "bandit theory; the **floor** is the part of it that the probability floor (every arm keeps "
        "its share whatever was learned) costs by construction. Noise and floor grow linearly in "
        "the rows, so they pull the per-row-oracle slope toward 1 whatever a policy learns.",
        "",
        "| cost weight | policy | regret | noise | floor | pseudo-regret | "
        "pseudo-regret slope (per seed) | slope of pseudo-regret minus floor (per seed) | "
        "regret slope (per seed) |",
        "|---:|---|---:|---:|---:|---:|---|---|---|",
    ]
    for s in results["summary"]:
        if s["policy"] not in ("linucb", "lints"):
            continue
        lines.append(
            f"| {s['cost_weight']:g} | {s['policy']} | {s['regret_mean']:.0f} | "
            f"{noise[s['cost_weight']]:.0f} | {s['floor_regret_mean']:.0f} | "
            f"{s['pseudo_regret_mean']:.0f} | "
            f"{', '.join(f'{v:.2f}' for v in s['pseudo_slope_last_decade'])} | "
            f"{', '.join(f'{v:.2f}' for v in s['beyond_floor_slope_last_decade'])} | "
            f"{', '.join(f'{v:.2f}' for v in s['slope_last_decade'])} |"
        )
    lines += [
        "",
        "The best any policy can do while keeping the floor is to play the expected-utility oracle's "
        "choice and every other arm with the floor. Its expected regret against the per-row oracle "
        "is all noise and floor, so it grows linearly: a policy can only get a lower slope by losing "
        "more in the first tenth of the rows.",
        "",
        "| cost weight | best possible with the floor: regret | its slope (per seed) |",
        "|---:|---:|---|",
    ]
    for r in results["reference"]:
        lines.append(
            f"| {r['cost_weight']:g} | {r['floored_oracle_regret_mean']:.0f} | "
            f"{', '.join(f'{v:.2f}' for v in r['floored_oracle_slopes'])} |"
        )
    return lines


def plot_loglog(results: dict[str, Any], path: Path) -> None:
    """Mean regret of the learned policies against rows, log-log, one panel per cost weight, with
    the best a floored policy can do: a slope of 1 there is linear growth."""
    weights = [r["cost_weight"] for r in results["reference"]]
    fig, axes = plt.subplots(1, len(weights), figsize=(3.6 * len(weights), 3.8), squeeze=False)
    for ax, reference in zip(axes[0], results["reference"], strict=True):
        weight = reference["cost_weight"]
        rows = None
        for curve in results["curves"]:
            if curve["cost_weight"] == weight and curve["policy"] in LEARNED:
                rows = curve["rows"]
                ax.plot(rows, np.maximum(curve["regret"], 1e-3), label=curve["policy"])
        ax.plot(rows, np.maximum(reference["floored_oracle_curve"], 1e-3), "k--",
                label="best possible\nwith the floor")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(100, rows[-1])
        ax.set_ylim(bottom=1)
        ax.axvspan(rows[-1] / 10, rows[-1], color="grey", alpha=0.08)
        ax.set_title(f"cost weight {weight:g}", fontsize=10)
        ax.set_xlabel("rows seen")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("cumulative regret vs per-row oracle")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Regret, log-log (mean of {len(results['seeds'])} seeds; shaded: the last decade, "
                 "where the slope is measured)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--jobs", type=int, default=1, help="seeds replayed in parallel")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run(args.rows, args.models, [int(s) for s in args.seeds.split(",")], args.jobs)
    (out / "synthetic.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "synthetic.md").write_text(markdown(results))
    plot_regret(results, out / "synthetic.png", note=f" (mean of {len(results['seeds'])} seeds)")
    plot_loglog(results, out / "synthetic_loglog.png")
    print(markdown(results))


if __name__ == "__main__":
    main()
