"""Real-data replay: GPT-4 vs Mixtral on 8,977 MMLU/GSM8K prompts (../shared/data/routellm).

Run: ``python -m bench.routellm [--data PATH --seeds 0,1,2 --out bench/results/routellm]``. Writes the
full replay report of the first seed (``results.{json,md}``, ``regret.png``, ``frontier.png``) and
``seeds.{json,md}``: LinUCB's margin over the better single model on every seed, so one lucky row
order cannot pass for the typical result.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits
from tqdm import tqdm

from bandit_router.dataset import load_routing_csv
from bandit_router.replay import ReplayConfig, replay
from bandit_router.report import write_report

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "routellm" / "mmlu_gsm8k_dev.csv"
COST_WEIGHTS = (0.1, 0.2)
POLICIES = ("linucb", "lints", "egreedy", "random")
MARGIN_TARGET = -0.005  # LinUCB's mean utility minus the better single model's


def margins(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each policy's mean utility minus the best single model's, per cost weight."""
    rows = []
    for weight in COST_WEIGHTS:
        best = max((m for m in results["models"] if m["cost_weight"] == weight),
                   key=lambda m: m["utility"])
        for run in (r for r in results["runs"] if r["cost_weight"] == weight):
            rows.append({
                "seed": results["seed"],
                "cost_weight": weight,
                "policy": run["policy"],
                "utility": run["utility"],
                "best_model": best["model"],
                "best_model_utility": best["utility"],
                "margin": run["utility"] - best["utility"],
            })
    return rows


def seeds_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Real data: margin over the better single model, per seed",
        "",
        "Margin = policy mean utility - best single model's mean utility (same rows). Target for "
        f"LinUCB: >= {MARGIN_TARGET} at every cost weight. Reproduce: `python -m bench.routellm`.",
        "",
        "| seed | cost weight | policy | utility | best model | its utility | margin |",
        "|---:|---:|---|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['cost_weight']:g} | {r['policy']} | {r['utility']:.4f} | "
            f"{r['best_model']} | {r['best_model_utility']:.4f} | {r['margin']:+.4f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", default="bench/results/routellm")
    args = parser.parse_args()
    out = Path(args.out)
    dataset = load_routing_csv(args.data)
    all_margins: list[dict[str, Any]] = []
    with threadpool_limits(limits=1, user_api="blas"):
        for i, seed in enumerate(tqdm([int(s) for s in args.seeds.split(",")], desc="seeds")):
            config = ReplayConfig(policies=POLICIES, cost_weights=COST_WEIGHTS, seed=seed)
            results = replay(dataset, config, progress=False)
            if i == 0:
                write_report(results, out, title="Replay of RouteLLM MMLU + GSM8K (8,977 prompts)")
            all_margins += margins(results)
    (out / "seeds.json").write_text(json.dumps(all_margins, indent=1) + "\n")
    (out / "seeds.md").write_text(seeds_markdown(all_margins))
    print((out / "results.md").read_text())
    print(seeds_markdown(all_margins))


if __name__ == "__main__":
    main()
