"""Writes a replay's results: results.json, results.md, regret.png and frontier.png in one folder."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402


def write_report(results: dict[str, Any], out: str | Path, title: str = "replay") -> Path:
    """Write every artefact of ``results`` into ``out`` (created if needed); returns the folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(markdown(results, title))
    plot_regret(results, out / "regret.png")
    plot_frontier(results, out / "frontier.png")
    return out


def _by_weight(entries: list[dict[str, Any]], weight: float) -> list[dict[str, Any]]:
    return [e for e in entries if e["cost_weight"] == weight]


def markdown(results: dict[str, Any], title: str) -> str:
    """One table per cost weight: policies, single models, per-task best and oracle, best first."""
    weights = sorted({r["cost_weight"] for r in results["oracle"]})
    lines = [
        f"# {title}",
        "",
        f"{results['rows']} rows, cost scale ${results['cost_scale']:.6g} per call, "
        f"seed {results.get('seed', 0)}. Utility = (1 - c) * quality - c * min(cost / scale, 1); "
        "regret is cumulative against the per-row oracle.",
    ]
    for weight in weights:
        oracle = _by_weight(results["oracle"], weight)[0]
        rows: list[tuple[str, dict[str, Any]]] = []
        rows += [(f"policy `{r['policy']}`", r) for r in _by_weight(results["runs"], weight)]
        rows += [(f"model `{m['model']}`", m) for m in _by_weight(results["models"], weight)]
        rows += [("per-task best model (hindsight)", _by_weight(results["task_best"], weight)[0])]
        rows += [("oracle (hindsight, per row)", oracle)]
        rows.sort(key=lambda item: -item[1]["utility"])
        lines += [
            "",
            f"## cost weight {weight:g}",
            "",
            "| router | utility | quality | cost per call ($) | regret | choices |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for label, entry in rows:
            regret = entry.get("regret")
            regret_text = "" if regret is None else f"{regret:.1f}"
            choices = ", ".join(f"{k}: {v}" for k, v in entry.get("choices", {}).items())
            lines.append(
                f"| {label} | {entry['utility']:.4f} | {entry['quality']:.4f} | "
                f"{entry['cost']:.6f} | {regret_text} | {choices} |"
            )
    return "\n".join(lines) + "\n"


def plot_regret(results: dict[str, Any], path: Path, note: str = "") -> None:
    """Cumulative regret against rows seen, one panel per cost weight, one line per policy.

    ``results["curves"]`` holds ``{"cost_weight", "policy", "rows", "regret"}`` entries; ``note``
    is added to each panel's title.
    """
    weights = sorted({c["cost_weight"] for c in results["curves"]})
    fig, axes = plt.subplots(1, len(weights), figsize=(5.5 * len(weights), 4.2), squeeze=False)
    for ax, weight in zip(axes[0], weights, strict=True):
        for curve in _by_weight(results["curves"], weight):
            ax.plot(curve["rows"], curve["regret"], label=curve["policy"])
        ax.set_title(f"cost weight {weight:g}{note}")
        ax.set_xlabel("rows seen")
        ax.set_ylabel("cumulative regret vs per-row oracle")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_frontier(results: dict[str, Any], path: Path) -> None:
    """Mean quality against mean cost: each policy across cost weights, each single model a point."""
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    # The cost weights are written next to the first policy's points only: every policy's points
    # crowd the same places, and one set of labels shows which end is which.
    for i, policy in enumerate(dict.fromkeys(r["policy"] for r in results["runs"])):
        runs = sorted((r for r in results["runs"] if r["policy"] == policy), key=lambda r: r["cost"])
        label = f"{policy} (c = cost weight)" if i == 0 else policy
        (line,) = ax.plot([r["cost"] for r in runs], [r["quality"] for r in runs], marker="o",
                          label=label)
        for r in runs if i == 0 else ():
            ax.annotate(f"c={r['cost_weight']:g}", (r["cost"], r["quality"]), fontsize=7,
                        color=line.get_color(), textcoords="offset points", xytext=(-6, 7),
                        ha="right")
    oracle = sorted(results["oracle"], key=lambda r: r["cost"])
    ax.plot([r["cost"] for r in oracle], [r["quality"] for r in oracle], "k--", marker="x",
            label="oracle (hindsight)")
    seen: dict[str, dict[str, Any]] = {}
    for m in results["models"]:
        seen.setdefault(m["model"], m)
    for (name, m), marker in zip(seen.items(), itertools.cycle("sDv^<>ph"), strict=False):
        ax.scatter([m["cost"]], [m["quality"]], marker=marker, color="grey", zorder=3,
                   label=f"model {name}")
    ax.set_xscale("log")
    ax.set_xlabel("mean cost per call ($, log scale)")
    ax.set_ylabel("mean quality")
    ax.set_title("cost / quality frontier across cost weights")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
