"""`bandit-router evaluate`: every policy's off-policy value on logged decisions, the --since window,
and its written table, JSON and chart."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bandit_router.cli import main
from bandit_router.evaluate import parse_since
from bandit_router.service import RouterService
from policies import Preference
from tests.api_support import FAST_LEARNER, MODELS, QUALITY, settings_for, true_value, wait_for

PAIRS = 600


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A database with 600 routed decisions, each with feedback, all learned."""
    tmp_path = tmp_path_factory.mktemp("evaluate")
    settings = settings_for(tmp_path, mlflow_enabled=False)
    service = RouterService.open(settings, seed_models=MODELS)
    service.start()
    rng = np.random.default_rng(1)
    try:
        for _ in range(PAIRS):
            routed = service.route(features=rng.normal(size=settings.feature_dim).tolist())
            service.feedback(decision_id=routed.decision_id, quality=QUALITY[routed.model])
        wait_for(lambda: service.stats()["feedback_applied"] == PAIRS)
        scales = service.policies.serving_policy.scales
    finally:
        service.close()
    return settings, scales


@pytest.fixture(autouse=True)
def same_feature_dim(monkeypatch):
    monkeypatch.setenv("BANDIT_ROUTER_FEATURE_DIM", str(FAST_LEARNER["feature_dim"]))


def test_evaluate_estimates_every_policy_on_the_logged_decisions(logged, tmp_path, capsys):
    settings, scales = logged
    out = tmp_path / "eval"
    code = main(["evaluate", "--database", settings.database_url, "--since", "1h", "--out", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert "| `linucb` | yes | 600 |" in stdout and "optimistic" in stdout
    results = json.loads((out / "evaluation.json").read_text())
    assert results["rows"] == PAIRS and results["skipped"] == 0
    assert results["logged"]["policies"] == {"linucb": PAIRS}
    assert [p["policy"] for p in results["policies"]] == settings.policies
    preference = Preference.from_cost_weight(settings.default_cost_weight)
    uniform = true_value(preference, scales, {m.name: 1 / 3 for m in MODELS})
    best = max(true_value(preference, scales, {m.name: 1.0}) for m in MODELS)
    for entry in results["policies"]:
        assert {"ips", "snips", "dr"} <= set(entry) and entry["events_learned"] == PAIRS
        for estimator in ("snips", "dr"):
            assert 0 < entry[estimator]["stderr"] < 0.1
    random = next(p for p in results["policies"] if p["policy"] == "random")
    for estimator in ("ips", "snips", "dr"):
        assert abs(random[estimator]["value"] - uniform) < 4 * random[estimator]["stderr"]
    linucb = next(p for p in results["policies"] if p["policy"] == "linucb")
    assert uniform < linucb["snips"]["value"] <= best + 4 * linucb["snips"]["stderr"]
    # The trained snapshot is rated above what its earlier, still-learning self earned.
    assert linucb["snips"]["value"] > results["logged"]["utility"]
    assert (out / "evaluation.md").read_text().startswith("# Off-policy evaluation")
    assert (out / "evaluation.png").stat().st_size > 5000


def test_evaluate_since_excludes_older_decisions(logged, capsys):
    settings, _ = logged
    code = main(["evaluate", "--database", settings.database_url, "--since", "2999-01-01"])
    stdout, _ = capsys.readouterr()
    assert code == 0 and "0 decisions since 2999-01-01T00:00:00+00:00" in stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90s", 910.0), ("30m", -800.0), ("2h", 1000 - 7200.0), ("1.5d", 1000 - 129600.0),
     ("1w", 1000 - 604800.0), ("1970-01-01T00:10", 600.0), ("1970-01-01T01:00+01:00", 0.0)],
)
def test_parse_since(text, expected):
    assert parse_since(text, now=1000.0) == expected


def test_bad_since_exits_2_with_one_line(logged, capsys):
    settings, _ = logged
    assert main(["evaluate", "--database", settings.database_url, "--since", "yesterday"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--since 'yesterday' is neither an age" in err
