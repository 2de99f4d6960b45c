"""MLflow tracking read back with MlflowClient: one run per replayed policy whose last values are the
replay's results, and the embedded service's live metrics, shadow-policy estimates included."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from bandit_router.catalog import typical_cost
from bandit_router.cli import main
from bandit_router.config import Settings
from bandit_router.featurizer import Featurizer
from bandit_router.policy_set import PolicySet
from bandit_router.service import RouterService
from bandit_router.tracking import LEARNER_EXPERIMENT, REPLAY_EXPERIMENT, LearnerTracker
from policies import LoggedEvents, Outcome, Preference, snips, utility
from streams import DecisionEvent, SparseFeatures
from tests.api_support import MODELS, QUALITY, settings_for, true_value, wait_for
from tests.conftest import SAMPLE_DATA

PAIRS = 2000


def test_replay_logs_one_run_per_policy_ending_at_its_results(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out"
    code = main(["replay", str(SAMPLE_DATA), "--policies", "linucb,random", "--cost-weights", "0.2",
                 "--limit", "400", "--dim", "64", "--out", str(out), "--quiet", "--mlflow-uri", uri])
    assert code == 0, capsys.readouterr().err
    assert "logged 2 MLflow runs" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(REPLAY_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 3 and sorted(r.data.params["policy"] for r in children) == ["linucb", "random"]
    for run in children:
        expected = next(r for r in results["runs"] if r["policy"] == run.data.params["policy"])
        for metric in ("regret", "utility", "quality", "cost"):
            history = client.get_metric_history(run.info.run_id, metric)
            steps = [m.step for m in history]
            assert len(history) >= 100 and steps == sorted(steps) and steps[-1] == 400
            assert history[-1].value == pytest.approx(expected[metric], rel=1e-12, abs=1e-12)
        shares = {k: v for k, v in run.data.metrics.items() if k.startswith("share.")}
        assert sum(shares.values()) == pytest.approx(1.0)
        assert shares == {f"share.{m}": n / 400 for m, n in expected["choices"].items()}


def test_no_mlflow_logs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BANDIT_ROUTER_MLFLOW_ENABLED", "true")
    code = main(["replay", str(SAMPLE_DATA), "--limit", "50", "--dim", "64", "--quiet", "--no-mlflow",
                 "--out", str(tmp_path / "out")])
    assert code == 0 and "MLflow" not in capsys.readouterr().out
    assert not (tmp_path / "mlflow.db").exists()


def test_embedded_service_logs_live_metrics_and_shadow_estimates(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = settings_for(
        tmp_path, mlflow_enabled=True, mlflow_uri=uri, ope_sample_every=4, mlflow_log_every_s=0.0
    )
    service = RouterService.open(settings, seed_models=MODELS)
    service.start()
    rng = np.random.default_rng(0)
    utilities = []
    scales = service.policies.serving_policy.scales
    preference = Preference.from_cost_weight(settings.default_cost_weight)
    try:
        run_id = service.learner.tracker.run.wait_started()
        assert run_id is not None, service.learner.tracker.run.error
        for _ in range(PAIRS):
            routed = service.route(features=rng.normal(size=settings.feature_dim).tolist())
            quality = QUALITY[routed.model]
            service.feedback(decision_id=routed.decision_id, quality=quality)
            cost = typical_cost(next(m for m in MODELS if m.name == routed.model))
            utilities.append(utility(Outcome(quality, cost), preference, scales))
        client = MlflowClient(uri)

        def logged_everything():
            history = client.get_metric_history(run_id, "utility")
            return history and history[-1].step == PAIRS

        wait_for(logged_everything, timeout_s=60)  # read while the service still serves
    finally:
        service.close()

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["catalog"] == "large,medium,small"
    assert run.info.experiment_id == client.get_experiment_by_name(LEARNER_EXPERIMENT).experiment_id
    metrics = run.data.metrics
    assert metrics["utility"] == pytest.approx(np.mean(utilities), abs=1e-9)
    assert sum(v for k, v in metrics.items() if k.startswith("share.")) == pytest.approx(1.0)
    assert metrics["ope.rows"] == PAIRS // 4
    uniform = true_value(preference, scales, {m.name: 1 / 3 for m in MODELS})
    for policy in settings.policies:
        for estimator in ("snips", "dr"):
            assert metrics[f"ope.{policy}.{estimator}_se"] > 0
            assert len(client.get_metric_history(run_id, f"ope.{policy}.{estimator}")) >= 2
    # The uniform policy never learns: its estimates must cover its known true value.
    for estimator in ("snips", "dr"):
        value, se = metrics[f"ope.random.{estimator}"], metrics[f"ope.random.{estimator}_se"]
        assert abs(value - uniform) < 4 * se, (estimator, value, se, uniform)
    # Shadow policies that learned find the better models: above uniform routing.
    assert metrics["ope.linucb.snips"] > uniform


class RecordingRun:
    """Stands in for an MlflowRun: keeps what the tracker logs."""

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict[str, float], dict[str, str] | None]] = []
        self.closed = False

    def log(self, step, metrics, tags=None):
        self.logged.append((step, dict(metrics), tags))

    def close(self):
        self.closed = True


def test_live_estimates_use_each_policys_probabilities_from_before_it_learned():
    settings = Settings(feature_dim=64, policies=["linucb", "random"])
    featurizer = Featurizer(64)
    policies = PolicySet.load(settings, featurizer, MODELS, {})
    twin = PolicySet.load(settings, featurizer, MODELS, {})  # replays the same events, by hand
    run = RecordingRun()
    tracker = LearnerTracker(run, settings.policies, sample_every=2)
    arms = tuple(m.name for m in MODELS)
    preference = Preference.from_cost_weight(0.2)
    scales = policies.serving_policy.scales
    rng = np.random.default_rng(3)
    rewards, logged, targets, after = [], [], {"linucb": [], "random": []}, []
    for i in range(200):
        x = rng.normal(size=64)
        chosen = int(rng.integers(3))
        outcome = Outcome(QUALITY[arms[chosen]] + rng.normal(0, 0.1), 0.001)
        decision = DecisionEvent(
            decision_id=f"d{i}", ts=0.0, policy="linucb", policy_version=i, arms=arms,
            chosen=arms[chosen], propensity=1 / 3, probabilities=(1 / 3,) * 3,
            preference=(0.8, 0.2, 0.0), features=SparseFeatures.from_dense(x),
        )
        event = LoggedEvents(
            x[None], [decision.chosen], np.array([[outcome.quality, outcome.cost, np.nan]]),
            np.array([decision.preference]), np.array([decision.propensity]),
        )
        tracker.observe(policies, [decision], event)
        if (i + 1) % 2 == 0:
            rewards.append(utility(outcome, preference, scales))
            logged.append(1 / 3)
            for name in targets:
                targets[name].append(twin[name].probabilities(x, arms, preference)[chosen])
        for group in (policies, twin):
            for _, policy in group.items():
                policy.update(x, arms[chosen], outcome, preference, 1 / 3)
        if (i + 1) % 2 == 0:
            after.append(twin["linucb"].probabilities(x, arms, preference)[chosen])
    tracker.flush("linucb")
    tracker.close()
    [(step, metrics, tags)] = run.logged
    assert step == 200 and tags == {"serving_policy": "linucb"} and run.closed
    assert metrics["ope.rows"] == 100
    for name, target in targets.items():
        expected = snips(np.array(rewards), np.array(logged), np.array(target))
        assert metrics[f"ope.{name}.snips"] == pytest.approx(expected.value, abs=1e-12)
        assert metrics[f"ope.{name}.snips_se"] == pytest.approx(expected.stderr, abs=1e-12)
    # Scored after learning each event instead, LinUCB's numbers would differ: the order matters.
    assert not np.allclose(after, targets["linucb"])


def test_batches_sample_the_same_events_as_single_events():
    """Every ``sample_every``-th event is estimated, wherever the learner's batches split."""
    settings = Settings(feature_dim=32, policies=["linucb", "random"])
    arms = tuple(m.name for m in MODELS)
    rng = np.random.default_rng(5)
    decisions = [
        DecisionEvent(
            decision_id=f"d{i}", ts=0.0, policy="linucb", policy_version=0, arms=arms,
            chosen=arms[i % 3], propensity=1 / 3, probabilities=(1 / 3,) * 3,
            preference=(0.7, 0.3, 0.0), features=SparseFeatures.from_dense(rng.normal(size=32)),
        )
        for i in range(11)
    ]
    counts = []
    for sizes in ([11], [1] * 11, [2, 5, 4]):
        policies = PolicySet.load(settings, Featurizer(32), MODELS, {})
        run = RecordingRun()
        tracker = LearnerTracker(run, settings.policies, sample_every=3)
        start = 0
        for size in sizes:
            batch = decisions[start : start + size]
            tracker.observe(policies, batch, LoggedEvents(
                np.array([d.features.to_dense() for d in batch]), [d.chosen for d in batch],
                np.tile([0.6, 0.001, np.nan], (size, 1)), np.array([d.preference for d in batch]),
                np.full(size, 1 / 3),
            ))
            start += size
        tracker.flush("linucb")
        tracker.close()
        [(step, metrics, _)] = run.logged
        counts.append((step, metrics["ope.rows"]))
    assert counts == [(11, 3)] * 3  # events 3, 6 and 9
