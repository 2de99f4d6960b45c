"""Off-policy evaluation of every policy on logged traffic (``bandit-router evaluate``): reads the
logged decisions and feedback back from the bus, joins them, and estimates what each policy's current
snapshot would have earned on them (IPS, SNIPS, DR with standard errors).

Caveat: a snapshot that has already learned from these decisions is evaluated on its own training
data, so its estimate is optimistic; the live ``ope.*`` metrics in MLflow are progressive (each
event scored before the policies learn it) and unbiased.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bandit_router.ope import OffPolicyLog, reward_model
from bandit_router.policy_set import PolicySet
from policies import Outcome, Preference, utility
from streams import TOPIC_DECISIONS, TOPIC_FEEDBACK, Bus, DecisionEvent, EventError, FeedbackEvent, decode

GROUP = "evaluate"
IDLE_S = 1.0  # a poll that waits this long and finds nothing means the reader has caught up
ESTIMATORS = ("ips", "snips", "dr")
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class LoggedPair:
    """A logged decision and the first feedback that arrived for it."""

    decision: DecisionEvent
    feedback: FeedbackEvent


def parse_since(text: str, now: float | None = None) -> float:
    """Unix time from a relative age (``90s``, ``30m``, ``2h``, ``7d``, ``1w``) or an ISO date or
    time (``2024-12-01``, ``2024-12-01T08:00``, ``...+02:00``; without a zone it is UTC).

    >>> parse_since("2h", now=10_000.0)
    2800.0
    >>> parse_since("1970-01-02")
    86400.0
    """
    match = _RELATIVE.match(text)
    if match:
        now = time.time() if now is None else now
        return now - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r} is neither an age like 30m, 2h, 7d nor an ISO date/time like "
            "2024-12-01 or 2024-12-01T08:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def read_logged(bus: Bus, idle_s: float = IDLE_S) -> list[LoggedPair]:
    """Every decision with feedback on the bus, read from offset 0 until caught up, joined by
    decision id (the first feedback per decision wins, as in the learner); unreadable records and
    unmatched events are left out."""
    consumer = bus.consumer([TOPIC_DECISIONS, TOPIC_FEEDBACK], GROUP, lambda topic, partition: 0)
    decisions: dict[str, DecisionEvent] = {}
    feedback: dict[str, FeedbackEvent] = {}
    try:
        while records := consumer.poll(max_records=5000, timeout_s=idle_s):
            for record in records:
                try:
                    event = decode(record.value)
                except EventError:
                    continue
                if isinstance(event, DecisionEvent):
                    decisions.setdefault(event.decision_id, event)
                elif isinstance(event, FeedbackEvent):
                    feedback.setdefault(event.decision_id, event)
    finally:
        consumer.close()
    return [
        LoggedPair(decision, feedback[decision_id])
        for decision_id, decision in decisions.items()
        if decision_id in feedback
    ]


def evaluate(pairs: Iterable[LoggedPair], policies: PolicySet, since: float | None = None) -> dict[str, Any]:
    """Estimate every policy's mean utility on the decisions logged at or after ``since``.

    The reward is the utility of the observed outcome under the request's own preference (the
    serving policy's scales); the doubly robust estimate's reward model is the first linear
    policy. Returns the results document (written by `write_evaluation`).
    """
    names = list(policies)
    log = OffPolicyLog(names)
    model = reward_model(policies.policies)
    scales = policies.serving_policy.scales
    rewards: list[float] = []
    logging_policies: dict[str, int] = {}
    skipped = 0
    for pair in pairs:
        decision, feedback = pair.decision, pair.feedback
        if since is not None and decision.ts < since:
            continue
        preference = Preference(*decision.preference)
        outcome = Outcome(feedback.quality, feedback.cost, feedback.latency_ms)
        reward = utility(outcome, preference, scales)
        x = decision.features.to_dense()
        chosen = decision.arms.index(decision.chosen)
        fits = model is None or x.size == model.dim
        if not (fits and log.add(policies.policies, model, x, decision.arms, preference, chosen,
                                 decision.propensity, reward)):
            skipped += 1
            continue
        rewards.append(reward)
        logging_policies[decision.policy] = logging_policies.get(decision.policy, 0) + 1
    estimates = log.estimates(with_dr=model is not None)
    observed = np.asarray(rewards)
    return {
        "since": since,
        "rows": len(rewards),
        "skipped": skipped,
        "logged": {
            "utility": float(observed.mean()) if observed.size else None,
            "stderr": float(observed.std(ddof=1) / np.sqrt(observed.size)) if observed.size > 1 else None,
            "policies": logging_policies,
        },
        "reward_model": None if model is None else model.name,
        "policies": [
            {
                "policy": name,
                "serving": name == policies.serving,
                "events_learned": policies[name].updates,
            }
            | {
                estimator: {"value": e.value, "stderr": e.stderr}
                for estimator, e in estimates.get(name, {}).items()
            }
            for name in names
        ],
    }


def markdown(results: dict[str, Any]) -> str:
    """The results as a Markdown table, the logging policies' observed utility first."""
    since = results["since"]
    when = "all logged decisions" if since is None else (
        "decisions since " + datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds")
    )
    logged = results["logged"]
    lines = [
        "# Off-policy evaluation",
        "",
        f"{results['rows']} {when} with feedback ({results['skipped']} skipped: unknown model or "
        "feature length). Value = estimated mean utility per request; +- one standard error.",
        "A policy that already learned from these decisions is rated optimistically; compare the "
        "live, progressive `ope.*` metrics in MLflow.",
    ]
    if logged["utility"] is not None:
        mix = ", ".join(f"{k}: {v}" for k, v in sorted(logged["policies"].items()))
        lines += ["", f"Observed mean utility of the logged choices ({mix}): "
                  f"{_cell(logged['utility'], logged['stderr'])}."]
    lines += [
        "",
        "| policy | serving | events learned | IPS | SNIPS | DR |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for entry in results["policies"]:
        cells = [
            _cell(entry[e]["value"], entry[e]["stderr"]) if e in entry else "n/a" for e in ESTIMATORS
        ]
        serving = "yes" if entry["serving"] else ""
        head = f"| `{entry['policy']}` | {serving} | {entry['events_learned']} | "
        lines.append(head + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_evaluation(results: dict[str, Any], out: str | Path) -> Path:
    """Write evaluation.json, evaluation.md and evaluation.png (estimates with error bars) into
    ``out`` (created if needed); returns the folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "evaluation.md").write_text(markdown(results))
    entries = results["policies"]
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    width = 0.8 / len(ESTIMATORS)
    for i, estimator in enumerate(ESTIMATORS):
        shown = [(j, e[estimator]) for j, e in enumerate(entries) if estimator in e]
        ax.bar(
            [j + (i - 1) * width for j, _ in shown],
            [est["value"] for _, est in shown],
            width,
            yerr=[1.96 * est["stderr"] for _, est in shown],
            capsize=3,
            label=estimator.upper(),
        )
    logged = results["logged"]["utility"]
    if logged is not None:
        ax.axhline(logged, color="k", linestyle="--", linewidth=1, label="logged (observed)")
    ax.set_xticks(range(len(entries)))
    ax.set_xticklabels([e["policy"] + (" (serving)" if e["serving"] else "") for e in entries])
    ax.set_ylabel("estimated mean utility (95% interval)")
    ax.set_title(f"off-policy evaluation on {results['rows']} logged decisions")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="lower left", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(out / "evaluation.png", dpi=110)
    plt.close(fig)
    return out


def _cell(value: float, stderr: float | None) -> str:
    return f"{value:.4f}" if stderr is None else f"{value:.4f} +- {stderr:.4f}"
