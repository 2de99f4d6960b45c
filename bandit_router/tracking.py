"""MLflow tracking: one run per learner process (live utility, traffic shares and every policy's
off-policy value) and one run per replayed policy (true regret against the oracle).

MLflow is imported only here and only when a run starts (it takes seconds); metrics go out in
``log_batch`` calls from a background thread, never from the learner's loop.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy.engine import make_url

from bandit_router.config import Settings
from bandit_router.ope import OffPolicyLog, reward_model
from bandit_router.policy_factory import PolicyParams
from policies import (
    LoggedEvents,
    Outcome,
    Preference,
    Scales,
    normalize_columns,
    utilities,
    utility,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from bandit_router.policy_set import PolicySet
    from bandit_router.storage import Storage
    from streams import DecisionEvent

log = logging.getLogger(__name__)

LEARNER_EXPERIMENT = "bandit-router"
REPLAY_EXPERIMENT = "bandit-router-replay"
BATCH_LIMIT = 1000  # metrics per log_batch call (MLflow's own limit)
MOVING_AVERAGE_EVENTS = 1000  # utility_ma is the mean utility of this many newest events
OPE_WINDOW = 10_000  # sampled events the live off-policy estimates are computed over (the newest)


def mlflow_client(uri: str) -> MlflowClient:
    """A client of the tracking store at ``uri`` (imports MLflow)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment ``name``, created if missing; a local SQLite store keeps its
    artifacts in ``mlartifacts`` beside the database file rather than in the working directory."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = None
    url = make_url(uri) if uri.startswith("sqlite:") else None
    if url is not None and url.database:
        location = (Path(url.database).parent / "mlartifacts").absolute().as_uri()
    return str(client.create_experiment(name, artifact_location=location))


class MlflowRun:
    """One MLflow run fed through a queue by a daemon thread, so `log` never waits for MLflow.

    The thread imports MLflow, creates the run with ``params`` and ``tags``, then writes queued
    metrics with ``log_batch``. If MLflow fails, the error is logged and kept in ``error``; the
    caller (the router) keeps running and later metrics are dropped.
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        params: Mapping[str, object],
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self.uri = uri
        self.run_id: str | None = None
        self.error: BaseException | None = None
        self._queue: queue.Queue[tuple[int, dict[str, float], dict[str, str]] | None] = queue.Queue()
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run,
            args=(experiment, run_name, dict(params), dict(tags or {})),
            name="bandit-router-mlflow",
            daemon=True,
        )
        self._thread.start()

    def log(self, step: int, metrics: Mapping[str, float], tags: Mapping[str, str] | None = None) -> None:
        """Queue ``metrics`` at ``step`` (and tags to set); returns at once."""
        self._queue.put((step, dict(metrics), dict(tags or {})))

    def wait_started(self, timeout_s: float = 60.0) -> str | None:
        """Wait until the run exists; its id (None if MLflow failed)."""
        self._ready.wait(timeout_s)
        return self.run_id

    def close(self, timeout_s: float = 60.0) -> None:
        """Write what is queued, mark the run finished and stop the thread (idempotent)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout_s)

    def _run(self, experiment: str, run_name: str, params: dict[str, object], tags: dict[str, str]) -> None:
        try:
            from mlflow.entities import Metric, Param, RunTag

            client = mlflow_client(self.uri)
            run = client.create_run(experiment_id(client, experiment, self.uri), run_name=run_name, tags=tags)
            self.run_id = run.info.run_id
            client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        except Exception as error:  # tracking must never take the router down
            self.error = error
            log.exception("MLflow tracking at %s is off: the run could not start", self.uri)
        finally:
            self._ready.set()
        done = False
        while not done:
            items = [self._queue.get()]
            while True:  # everything queued meanwhile goes out in the same batches
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            done = None in items
            if self.run_id is None:
                continue
            metrics, run_tags = [], {}
            for item in items:
                if item is None:
                    continue
                step, values, new_tags = item
                stamp = _now_ms()
                metrics += [Metric(k, float(v), stamp, step) for k, v in values.items() if np.isfinite(v)]
                run_tags.update(new_tags)
            try:
                for start in range(0, len(metrics), BATCH_LIMIT):
                    client.log_batch(self.run_id, metrics=metrics[start : start + BATCH_LIMIT])
                if run_tags:
                    client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in run_tags.items()])
                if done:
                    client.set_terminated(self.run_id)
            except Exception as error:
                self.error = error
                log.exception("MLflow tracking at %s failed to log %d metrics", self.uri, len(metrics))


class LearnerTracker:
    """The learner's side of tracking: per event a few list appends (cheap); on one event in
    ``sample_every`` every policy's probabilities for the off-policy estimates; after a commit, at
    most once per ``log_every_s``, the metrics, computed vectorised, handed to an `MlflowRun`
    (step = events applied by this process). MLflow's own writes cost CPU (and the GIL) too, which
    is why they are rate-limited rather than sent at every commit.

    Metrics: ``utility`` (cumulative mean), ``utility_ma`` (mean of the newest
    `MOVING_AVERAGE_EVENTS`), ``quality``, ``cost`` (USD per call), ``latency_ms``,
    ``share.<model>``, and per policy ``ope.<policy>.snips``/``.dr`` with ``_se`` standard errors
    over the newest `OPE_WINDOW` sampled events. Each estimate uses the policy's probabilities
    *before* it learned from the event (progressive validation), so it is unbiased for the policy
    as it was at that moment.
    """

    def __init__(
        self,
        run: MlflowRun,
        policies: Sequence[str],
        sample_every: int,
        log_every_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if sample_every < 1:
            raise ValueError(f"sample_every must be >= 1, got {sample_every}")
        self.run = run
        self.sample_every = sample_every
        self.log_every_s = log_every_s
        self._clock = clock
        self._last_log = -float("inf")
        self.ope = OffPolicyLog(policies, capacity=OPE_WINDOW)
        self.events = 0
        self._logged_at = 0
        # Since the last flush: one entry per event (turned into utilities at the flush).
        self._batch: list[tuple[float, float, float, tuple[float, float, float], str]] = []
        self._scales: Scales | None = None
        self._recent = np.zeros(0)
        self._sums = {"utility": 0.0, "quality": 0.0, "cost": 0.0, "latency_ms": 0.0}
        self._known = {"cost": 0, "latency_ms": 0}
        self._chosen: dict[str, int] = {}
        self._has_model = False
        self._serving = ""

    @classmethod
    def start(cls, settings: Settings, models: Sequence[str], group: str) -> LearnerTracker:
        """A tracker with a new run in experiment `LEARNER_EXPERIMENT` at ``settings.mlflow_uri``."""
        params: dict[str, object] = {
            "policies": ",".join(settings.policies),
            "serving_policy": settings.serving_policy,
            "feature_dim": settings.feature_dim,
            "catalog": ",".join(models),
            "default_cost_weight": settings.default_cost_weight,
            "cost_scale": settings.cost_scale,
            "latency_scale_ms": settings.latency_scale_ms,
            "ope_sample_every": settings.ope_sample_every,
            "bus": settings.bus,
            "group": group,
        } | {f"policy.{k}": v for k, v in asdict(PolicyParams(floor=settings.floor)).items()}
        name = f"learner {group} {socket.gethostname()} pid {os.getpid()}"
        run = MlflowRun(settings.mlflow_uri, LEARNER_EXPERIMENT, name, params, {"component": "learner"})
        return cls(run, settings.policies, settings.ope_sample_every, settings.mlflow_log_every_s)

    @classmethod
    def for_learner(cls, settings: Settings, storage: Storage, group: str) -> LearnerTracker | None:
        """The tracker of a learner process on ``storage``'s catalog; None with tracking off."""
        if not settings.mlflow_enabled:
            return None
        return cls.start(settings, [model.name for model in storage.list_models()], group)

    def observe(
        self, policies: PolicySet, decisions: Sequence[DecisionEvent], events: LoggedEvents
    ) -> None:
        """Account joined events (``events`` row i is ``decisions[i]`` with its outcome); call it
        under ``policies.lock`` before any policy learns them. Sampled events are estimated with
        the policies as they are now."""
        if self._scales is None:
            self._scales = policies.serving_policy.scales
        outcomes = events.outcomes.tolist()
        self._batch += [
            (quality, cost, latency, decision.preference, decision.chosen)
            for (quality, cost, latency), decision in zip(outcomes, decisions, strict=True)
        ]
        first = self.events  # events before this batch; event number n is sampled if n % every == 0
        self.events += len(decisions)
        every = self.sample_every
        sampled = range(every - 1 - first % every, len(decisions), every)
        model = reward_model(policies.policies) if sampled else None
        for i in sampled:
            decision, (quality, cost, latency) = decisions[i], outcomes[i]
            outcome = Outcome(quality, _known(cost), _known(latency))
            preference = Preference(*decision.preference)
            reward = utility(outcome, preference, self._scales)
            chosen = decision.arms.index(decision.chosen)
            x = events.contexts[i]
            if self.ope.add(
                policies.policies, model, x, decision.arms, preference, chosen, decision.propensity, reward
            ):
                self._has_model = model is not None

    def metrics(self) -> dict[str, float]:
        """The current values of every metric (empty before the first event)."""
        self._absorb()
        n = self.events
        if n == 0:
            return {}
        values = {
            "utility": self._sums["utility"] / n,
            "utility_ma": float(self._recent.mean()),
            "quality": self._sums["quality"] / n,
        }
        for key in ("cost", "latency_ms"):
            if self._known[key]:
                values[key] = self._sums[key] / self._known[key]
        values |= {f"share.{model}": count / n for model, count in sorted(self._chosen.items())}
        values["ope.rows"] = float(len(self.ope))
        for policy, estimates in self.ope.estimates(with_dr=self._has_model).items():
            for estimator in ("snips", "dr"):
                if estimator in estimates:
                    values[f"ope.{policy}.{estimator}"] = estimates[estimator].value
                    values[f"ope.{policy}.{estimator}_se"] = estimates[estimator].stderr
        return values

    def flush(self, serving: str, force: bool = False) -> None:
        """Hand the metrics to the run if events arrived since the last time and ``log_every_s``
        has passed (or ``force``); the learner calls it after each commit."""
        now = self._clock()
        if self.events == self._logged_at or (not force and now - self._last_log < self.log_every_s):
            return
        tags = {"serving_policy": serving} if serving != self._serving else None
        self._serving = serving
        self.run.log(self.events, self.metrics(), tags)
        self._logged_at = self.events
        self._last_log = now

    def close(self) -> None:
        """Log what is left and finish the run (after the learner's last commit; idempotent)."""
        self.flush(self._serving, force=True)
        self.run.close()

    def _absorb(self) -> None:
        """Fold the events since the last flush into the totals, vectorised."""
        if not self._batch or self._scales is None:
            return
        quality, cost, latency, weights, chosen = zip(*self._batch, strict=True)
        self._batch = []
        normalized = normalize_columns(np.array(quality), np.array(cost), np.array(latency), self._scales)
        values = np.empty(len(quality))
        rows_of: dict[tuple[float, float, float], list[int]] = {}
        for row, weight in enumerate(weights):
            rows_of.setdefault(weight, []).append(row)
        for weight, rows in rows_of.items():  # requests share a few preferences
            values[rows] = utilities(normalized[rows], Preference(*weight))
        self._recent = np.concatenate([self._recent, values])[-MOVING_AVERAGE_EVENTS:]
        self._sums["utility"] += float(values.sum())
        self._sums["quality"] += float(np.sum(quality))
        for key, column in (("cost", np.array(cost)), ("latency_ms", np.array(latency))):
            known = ~np.isnan(column)
            self._sums[key] += float(column[known].sum())
            self._known[key] += int(known.sum())
        for model in chosen:
            self._chosen[model] = self._chosen.get(model, 0) + 1


def _known(value: float) -> float | None:
    return None if math.isnan(value) else value


def log_replay(results: Mapping[str, Any], uri: str, dataset: str) -> list[str]:
    """Log a replay's results: a parent run with the setup, one child run per (policy, cost weight)
    with ``regret``, ``utility``, ``quality``, ``cost`` and ``share.<model>`` per row seen.

    Every metric is a running value (regret cumulative, the rest means so far), so its last value
    is the replay's result. Returns the child run ids.
    """
    from mlflow.entities import Metric, Param

    client = mlflow_client(uri)
    experiment = experiment_id(client, REPLAY_EXPERIMENT, uri)
    parent = client.create_run(experiment, run_name=f"replay {Path(dataset).name}")
    setup = {
        "dataset": dataset,
        "rows": results["rows"],
        "cost_scale": results["cost_scale"],
        "latency_scale_ms": results["latency_scale_ms"],
        "seed": results["seed"],
        "models": ",".join(results["models_order"]),
    }
    client.log_batch(parent.info.run_id, params=[Param(k, str(v)) for k, v in setup.items()])
    children = []
    for curve in results["curves"]:
        name, weight = curve["policy"], curve["cost_weight"]
        run = client.create_run(
            experiment,
            run_name=f"{name} c={weight:g}",
            tags={"mlflow.parentRunId": parent.info.run_id, "policy": name},
        )
        run_id = run.info.run_id
        params = setup | {"policy": name, "cost_weight": weight}
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        series = {key: curve[key] for key in ("regret", "utility", "quality", "cost")}
        series |= {f"share.{model}": shares for model, shares in curve["shares"].items()}
        stamp = _now_ms()
        metrics = [
            Metric(key, float(value), stamp, int(step))
            for key, values in series.items()
            for step, value in zip(curve["rows"], values, strict=True)
        ]
        for start in range(0, len(metrics), BATCH_LIMIT):
            client.log_batch(run_id, metrics=metrics[start : start + BATCH_LIMIT])
        client.set_terminated(run_id)
        children.append(run_id)
    client.set_terminated(parent.info.run_id)
    return children


def _now_ms() -> int:
    return int(time.time() * 1000)
