"""Throughput of our LinUCB/LinTS/Vowpal Wabbit/BaRP policies vs MABWiser and river on one seeded
stream and one BLAS thread.

Run ``python -m bench.policies``; writes ``policies.json`` and ``policies.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from mabwiser.mab import MAB, LearningPolicy
from river.bandit import LinUCBDisjoint
from threadpoolctl import threadpool_info, threadpool_limits
from tqdm import tqdm

from bandit_router.featurizer import N_DENSE
from policies import BaRP, LinTS, LinUCB, Outcome, Policy, Preference, Scales, VowpalWabbit

ARMS = 8
DIM = 256
ALPHA = 0.5  # LinUCB exploration and LinTS posterior scale, the same for every library
L2_LAMBDA = 1.0  # ridge prior precision, the same for every library
COST_WEIGHT = 0.2
NOISE = 0.1
WARMUP_PER_ARM = 4  # rows per arm fed to everyone before timing (MABWiser needs an initial fit)
WARMUP_CALLS = 3  # untimed calls before each timed loop
SANITY_CONTEXTS = 200
# MABWiser inverts a d x d matrix per update and its LinTS draws a d-dim multivariate normal per
# arm per decision: those loops get fewer calls so the run stays short. Each rate reports its calls.
CALL_CAPS: dict[tuple[str, str], tuple[int, int]] = {  # (decisions, updates)
    ("mabwiser", "LinUCB"): (3000, 1000),
    ("mabwiser", "LinTS"): (300, 1000),
}


@dataclass(frozen=True)
class Stream:
    """Contexts, a uniformly-logged arm per context and its outcome, from a hidden linear model."""

    contexts: np.ndarray  # (n, d)
    arms: np.ndarray  # (n,) logged arm index
    quality: np.ndarray  # (n,) observed quality of the logged arm
    weights: np.ndarray  # (d, K) hidden quality weights
    intercepts: np.ndarray  # (K,) hidden quality intercepts
    costs: np.ndarray  # (K,) cost of each arm (USD, scale 1)

    def utilities(self, contexts: np.ndarray) -> np.ndarray:
        """The noiseless utility ``(n, K)`` of every arm under the benchmark's preference."""
        quality = contexts @ self.weights + self.intercepts
        return (1.0 - COST_WEIGHT) * quality - COST_WEIGHT * self.costs

    @property
    def rewards(self) -> np.ndarray:
        """The observed utility of each logged decision: what the scalar-reward libraries learn."""
        return (1.0 - COST_WEIGHT) * self.quality - COST_WEIGHT * self.costs[self.arms]


def make_stream(rows: int, rng: np.random.Generator) -> Stream:
    contexts = rng.standard_normal((rows, DIM)) / np.sqrt(DIM)
    weights = 0.5 * rng.standard_normal((DIM, ARMS))
    intercepts = rng.uniform(0.2, 0.8, ARMS)
    costs = np.linspace(0.05, 0.9, ARMS)
    arms = rng.integers(0, ARMS, rows)
    quality = np.einsum("nd,dn->n", contexts, weights[:, arms]) + intercepts[arms]
    quality += NOISE * rng.standard_normal(rows)
    return Stream(contexts, arms, quality, weights, intercepts, costs)


def fresh_contexts(rows: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((rows, DIM)) / np.sqrt(DIM)


@dataclass(frozen=True)
class Contender:
    """One library's policy, reduced to the three calls the benchmark makes.

    ``warm_up`` learns rows ``[0, w)``; ``decide(i)`` and ``learn(i)`` use stream row ``w + i``.
    """

    library: str
    policy: str
    warm_up: Callable[[], None]
    decide: Callable[[int], Any]
    learn: Callable[[int], None]


def ours(policy: Policy, stream: Stream, warm: int) -> Contender:
    names = list(policy.arms)
    preference = Preference.from_cost_weight(COST_WEIGHT)
    contexts = stream.contexts
    outcomes = [
        Outcome(quality=float(q), cost=float(stream.costs[a]))
        for q, a in zip(stream.quality, stream.arms, strict=True)
    ]
    logged = [names[a] for a in stream.arms]

    def learn_row(row: int) -> None:
        policy.update(contexts[row], logged[row], outcomes[row], preference, 1.0 / ARMS)

    def warm_up() -> None:
        for row in range(warm):
            learn_row(row)

    return Contender(
        "ours",
        type(policy).__name__,
        warm_up,
        lambda i: policy.probabilities(contexts[warm + i], names, preference),
        lambda i: learn_row(warm + i),
    )


def mabwiser(learning_policy: Any, stream: Stream, warm: int, seed: int) -> Contender:
    arms = list(range(ARMS))
    mab = MAB(arms, learning_policy, seed=seed)
    rows = [stream.contexts[r : r + 1] for r in range(len(stream.contexts))]  # (1, d) C-contiguous
    logged = [[int(a)] for a in stream.arms]
    rewards = [[float(r)] for r in stream.rewards]

    def warm_up() -> None:
        mab.fit(stream.arms[:warm], stream.rewards[:warm], stream.contexts[:warm])

    def learn(i: int) -> None:
        mab.partial_fit(logged[warm + i], rewards[warm + i], rows[warm + i])

    return Contender(
        "mabwiser",
        type(learning_policy).__name__,
        warm_up,
        lambda i: mab.predict(rows[warm + i]),
        learn,
    )


def river(stream: Stream, warm: int, seed: int) -> Contender:
    # river's prior precision ``alpha`` and noise precision ``beta`` give the same ridge posterior
    # as l2_lambda = 1; its upper bound is mean + 1 sd (no exploration coefficient to set).
    policy = LinUCBDisjoint(alpha=L2_LAMBDA, beta=1.0, seed=seed)
    arms: list[int | str] = list(range(ARMS))
    contexts = [dict(enumerate(row.tolist())) for row in stream.contexts]
    logged = stream.arms.tolist()
    rewards = stream.rewards.tolist()

    def learn_row(row: int) -> None:
        policy.update(logged[row], contexts[row], rewards[row])

    def warm_up() -> None:
        for row in range(warm):
            learn_row(row)

    return Contender(
        "river",
        "LinUCBDisjoint",
        warm_up,
        lambda i: policy.pull(arms, context=contexts[warm + i]),
        lambda i: learn_row(warm + i),
    )


def per_second(step: Callable[[int], Any], calls: int) -> float:
    """Calls per second of ``step(0..calls-1)``, timed as one loop after a few untimed calls."""
    for i in range(WARMUP_CALLS):
        step(i)
    start = time.perf_counter()
    for i in range(calls):
        step(i)
    return calls / (time.perf_counter() - start)


def greedy_agreement(policy: LinUCB, stream: Stream, contexts: np.ndarray) -> float:
    """Share of contexts where the learned mean utility picks the hidden model's best arm."""
    preference = Preference.from_cost_weight(COST_WEIGHT)
    picks = [int(np.argmax(policy.expected(x, policy.arms) @ preference.signed)) for x in contexts]
    best = stream.utilities(contexts).argmax(axis=1)
    return float(np.mean(np.array(picks) == best))


def ratio(
    results: Sequence[dict[str, Any]], ours_policy: str, other: tuple[str, str], metric: str
) -> float:
    rate = {(r["library"], r["policy"]): r[metric] for r in results}
    return round(rate[("ours", ours_policy)] / rate[other], 1)


def machine(blas_threads: list[int]) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "mabwiser": version("mabwiser"),
        "river": version("river"),
        "vowpalwabbit": version("vowpalwabbit"),
        "cpu_count": os.cpu_count(),
        "blas_threads": blas_threads,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def code_state() -> dict[str, Any]:
    """The commit and the `policies/` files changed since it: the working tree is what is timed."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
        return done.stdout.rstrip() if done.returncode == 0 else ""

    modified = [line[3:] for line in git("status", "--porcelain", "policies").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD") or None, "policies_modified": modified}


def run(decisions: int, updates: int, seed: int) -> dict[str, Any]:
    warm = WARMUP_PER_ARM * ARMS
    rows = warm + WARMUP_CALLS + max(decisions, updates)
    stream = make_stream(rows, np.random.default_rng(seed))
    arms = [f"m{k}" for k in range(ARMS)]
    # As in the service: the fallback model reads the last N_DENSE (dense-signal) slots.
    fallback = np.arange(DIM - N_DENSE, DIM)
    linucb = LinUCB(arms, DIM, Scales(cost=1.0), alpha=ALPHA, fallback_features=fallback)
    lints = LinTS(arms, DIM, Scales(cost=1.0), scale=ALPHA, seed=seed, fallback_features=fallback)
    vw = VowpalWabbit(arms, DIM, Scales(cost=1.0), seed=seed)
    barp = BaRP(arms, DIM, Scales(cost=1.0), seed=seed)
    contenders = [
        ours(linucb, stream, warm),
        ours(lints, stream, warm),
        ours(vw, stream, warm),
        ours(barp, stream, warm),
        mabwiser(LearningPolicy.LinUCB(alpha=ALPHA, l2_lambda=L2_LAMBDA), stream, warm, seed),
        mabwiser(LearningPolicy.LinTS(alpha=ALPHA, l2_lambda=L2_LAMBDA), stream, warm, seed),
        river(stream, warm, seed),
    ]
    results: list[dict[str, Any]] = []
    steps = tqdm(total=3 * len(contenders), desc="bench", unit="step")
    with threadpool_limits(limits=1):
        blas_threads = [lib["num_threads"] for lib in threadpool_info()]
        for contender in contenders:
            name = f"{contender.library} {contender.policy}"
            decision_cap, update_cap = CALL_CAPS.get(
                (contender.library, contender.policy), (decisions, updates)
            )
            decision_calls, update_calls = min(decisions, decision_cap), min(updates, update_cap)
            steps.set_postfix_str(f"{name}: warm-up")
            contender.warm_up()
            steps.update()
            steps.set_postfix_str(f"{name}: {update_calls} updates")
            updates_per_s = per_second(contender.learn, update_calls)
            steps.update()
            steps.set_postfix_str(f"{name}: {decision_calls} decisions")
            decisions_per_s = per_second(contender.decide, decision_calls)
            steps.update()
            results.append(
                {
                    "library": contender.library,
                    "policy": contender.policy,
                    "decisions_per_s": round(decisions_per_s, 1),
                    "updates_per_s": round(updates_per_s, 1),
                    "decision_calls": decision_calls,
                    "update_calls": update_calls,
                }
            )
    steps.close()

    agreement = greedy_agreement(
        linucb, stream, fresh_contexts(SANITY_CONTEXTS, np.random.default_rng(seed + 1))
    )
    print(
        f"sanity: our LinUCB's greedy arm matches the hidden best arm on {agreement:.0%} of "
        f"{SANITY_CONTEXTS} fresh contexts (chance {1 / ARMS:.0%})"
    )

    mab_ucb, mab_ts = ("mabwiser", "LinUCB"), ("mabwiser", "LinTS")
    riv = ("river", "LinUCBDisjoint")
    ratios = {
        "linucb_updates_vs_mabwiser": ratio(results, "LinUCB", mab_ucb, "updates_per_s"),
        "lints_updates_vs_mabwiser": ratio(results, "LinTS", mab_ts, "updates_per_s"),
        "linucb_decisions_vs_mabwiser": ratio(results, "LinUCB", mab_ucb, "decisions_per_s"),
        "lints_decisions_vs_mabwiser": ratio(results, "LinTS", mab_ts, "decisions_per_s"),
        "linucb_updates_vs_river": ratio(results, "LinUCB", riv, "updates_per_s"),
        "linucb_decisions_vs_river": ratio(results, "LinUCB", riv, "decisions_per_s"),
    }
    linucb_decisions = next(r["decisions_per_s"] for r in results if r["policy"] == "LinUCB")
    return {
        "machine": machine(blas_threads),
        "code": code_state(),
        "config": {
            "K": ARMS,
            "d": DIM,
            "decisions": decisions,
            "updates": updates,
            "seed": seed,
            "alpha": ALPHA,
            "l2_lambda": L2_LAMBDA,
            "warmup_rows": warm,
            "cost_weight": COST_WEIGHT,
        },
        "results": results,
        "ratios": ratios,
        "targets": {
            "linucb_decisions_per_s >= 5000": linucb_decisions >= 5000,
            "updates >= 10x mabwiser": min(
                ratios["linucb_updates_vs_mabwiser"], ratios["lints_updates_vs_mabwiser"]
            )
            >= 10,
        },
        "sanity": {
            "linucb_greedy_agreement": agreement,
            "contexts": SANITY_CONTEXTS,
            # which of our two nested models the timed decisions used, per outcome: the full one
            # (scores every arm's d x d inverse) is the expensive path, and the one timed here
            "linucb_full_model_in_use": linucb.uses_full_model().tolist(),
            "lints_full_model_in_use": lints.uses_full_model().tolist(),
        },
    }


def markdown(report: dict[str, Any]) -> str:
    config, machine_info, ratios = report["config"], report["machine"], report["ratios"]
    lines = [
        "# Policy throughput: ours (LinUCB, LinTS, Vowpal Wabbit) vs MABWiser vs river",
        "",
        "BaRP has no counterpart in those libraries; its row is for comparison with our linear "
        "policies (a forward pass per decision; a forward pass, backward pass and Adam step per "
        "update).",
        "",
        f"K={config['K']} arms, d={config['d']} dense float64 contexts, seed {config['seed']}, "
        f"{config['warmup_rows']} warm-up rows for every library; one BLAS thread "
        f"({machine_info['blas_threads']}), Python {machine_info['python']}, numpy "
        f"{machine_info['numpy']}, mabwiser {machine_info['mabwiser']}, river "
        f"{machine_info['river']}, vowpalwabbit {machine_info['vowpalwabbit']}, "
        f"{machine_info['cpu_count']} CPUs, 1-min load average "
        f"{machine_info['load_average_1min']} when the run ended (the benchmark itself keeps one core busy).",
        "",
        "| library | policy | decisions/s | updates/s | decision calls | update calls |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['library']} | {r['policy']} | {r['decisions_per_s']:,.0f} | "
            f"{r['updates_per_s']:,.0f} | {r['decision_calls']} | {r['update_calls']} |"
        )
    lines += [
        "",
        "Slower libraries get fewer calls (the call columns); rates are per second either way.",
        "",
        "Timed calls (decision / update):",
        "- ours: `probabilities(x, arms, preference)` / `update(x, arm, outcome, preference, p)`;",
        "  VowpalWabbit is `policies.vw` (`--cb_explore_adf --squarecb`, x*a, w*a and w*x*a",
        "  interactions), which writes each call as VW text and lets VW parse it",
        "- MABWiser: `predict(row)` / `partial_fit([arm], [reward], row)`, row a (1, d) array,",
        "  after one `fit` on the warm-up rows",
        "- river: `pull(arms, context=c)` / `update(arm, c, reward)`, c a dict built untimed",
        "",
        f"Code: commit {report['code']['commit']}, `policies/` files modified in the working tree: "
        f"{', '.join(report['code']['policies_modified']) or 'none'}.",
        "",
        "## Ratios (ours / theirs)",
        "",
        *(f"- {name}: {value}x" for name, value in ratios.items()),
        "",
        "## Targets",
        "",
    ]
    linucb = next(r for r in report["results"] if r["policy"] == "LinUCB")
    targets = report["targets"]
    lines += [
        f"- LinUCB decisions/s >= 5000: {linucb['decisions_per_s']:,.0f} -> "
        f"{'met' if targets['linucb_decisions_per_s >= 5000'] else 'NOT met'}",
        f"- updates >= 10x MABWiser: LinUCB {ratios['linucb_updates_vs_mabwiser']}x, LinTS "
        f"{ratios['lints_updates_vs_mabwiser']}x -> "
        f"{'met' if targets['updates >= 10x mabwiser'] else 'NOT met'}",
        "",
        f"Sanity: our LinUCB's greedy arm matched the hidden best arm on "
        f"{report['sanity']['linucb_greedy_agreement']:.0%} of {report['sanity']['contexts']} "
        "fresh contexts.",
        "",
        f"Reproduce: `python -m bench.policies --decisions {config['decisions']} --updates "
        f"{config['updates']} --seed {config['seed']}` (needs the `[bench]` extra).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--decisions", type=int, default=3000, help="timed decisions per policy")
    parser.add_argument("--updates", type=int, default=3000, help="timed updates per policy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    if args.decisions < 1 or args.updates < 1:
        parser.error("--decisions and --updates must be >= 1")

    report = run(args.decisions, args.updates, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "policies.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "policies.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
