"""Settings: defaults, precedence (arguments > environment > TOML file > defaults), validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bandit_router.config import ConfigError, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("BANDIT_ROUTER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_environment_or_file() -> None:
    settings = load_settings()
    assert settings.database_url == "sqlite:///bandit-router.db"
    assert settings.bus == "embedded"
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.kafka_partitions == 1 and settings.kafka_timeout_s == 5.0
    assert settings.serving_policy == "linucb"
    assert settings.policies == ["linucb", "lints", "egreedy", "random"]
    assert settings.feature_dim == 256
    assert settings.default_cost_weight == 0.2
    assert settings.cost_scale is None
    assert settings.latency_scale_ms == 10_000
    assert settings.floor == 0.005
    assert settings.join_horizon_s == 3600
    assert settings.snapshot_every_events == 20_000
    assert settings.learner_lease_s == 10.0
    assert settings.snapshot_every_s == 2.0
    assert settings.reload_every_s == 2.0
    assert settings.mlflow_enabled is True  # (tests/conftest.py turns it off for other tests)
    assert settings.mlflow_uri == f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    assert settings.ope_sample_every == 40 and settings.mlflow_log_every_s == 5.0
    assert (settings.seed, settings.host, settings.port, settings.keep_prompts) == (
        0,
        "127.0.0.1",
        8000,
        False,
    )
    # Every field documents itself (the CLI and README can list them).
    assert all(field.description for field in Settings.model_fields.values())


def test_environment_overrides_toml_which_overrides_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = write_toml(
        tmp_path / "router.toml",
        'feature_dim = 128\nport = 9000\nbus = "kafka"\ncost_scale = 0.05\n'
        'policies = ["linucb", "random"]\nserving_policy = "random"\n',
    )
    monkeypatch.setenv("BANDIT_ROUTER_CONFIG", str(config))
    monkeypatch.setenv("BANDIT_ROUTER_PORT", "9100")
    monkeypatch.setenv("BANDIT_ROUTER_KEEP_PROMPTS", "true")

    settings = load_settings()

    assert settings.port == 9100  # environment beats the file
    assert settings.keep_prompts is True  # environment only
    assert settings.feature_dim == 128  # file only
    assert settings.bus == "kafka"
    assert settings.cost_scale == 0.05
    assert settings.policies == ["linucb", "random"]
    assert settings.serving_policy == "random"
    assert settings.floor == 0.005  # neither: the default
    assert load_settings(port=1).port == 1  # explicit arguments beat everything


def test_explicit_config_file_beats_the_environment_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BANDIT_ROUTER_CONFIG", str(write_toml(tmp_path / "a.toml", "seed = 1")))
    explicit = write_toml(tmp_path / "b.toml", "seed = 2")
    assert load_settings().seed == 1
    assert load_settings(config_file=explicit).seed == 2
    assert load_settings().seed == 1  # the explicit file does not leak into later loads


def test_policies_from_the_environment_as_csv_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANDIT_ROUTER_POLICIES", "linucb, lints")
    assert load_settings().policies == ["linucb", "lints"]
    monkeypatch.setenv("BANDIT_ROUTER_POLICIES", '["random", "linucb"]')
    assert load_settings().policies == ["random", "linucb"]


def test_out_of_range_environment_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANDIT_ROUTER_FEATURE_DIM", "16")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "feature_dim" in message
    assert "BANDIT_ROUTER_FEATURE_DIM" in message
    assert "greater than or equal to 32" in message
    assert "16" in message


@pytest.mark.parametrize(
    ("toml", "field", "hint"),
    [
        ("default_cost_weight = 1.5", "default_cost_weight", "less than or equal to 1"),
        ("floor = 1.0", "floor", "less than 1"),
        ("cost_scale = 0", "cost_scale", "greater than 0"),
        ("port = 70000", "port", "65535"),
        ("snapshot_every_events = 0", "snapshot_every_events", "greater than or equal to 1"),
        ('bus = "rabbit"', "bus", "'embedded' or 'kafka'"),
        ('policies = ["linucb", "vw9"]', "policies", "unknown policy vw9"),
        ("policies = []", "policies", "at least one policy"),
        ('database_url = "not a url"', "database_url", "not a SQLAlchemy database URL"),
        ('kafka_bootstrap = "localhost"', "kafka_bootstrap", "not host:port"),
        ("feature_dims = 64", "feature_dims", "unknown setting"),
        ('serving_policy = "lints"\npolicies = ["linucb"]', "serving_policy", "must be one of"),
        ("decision_ttl_s = 60", "decision_ttl_s", "at least join_horizon_s"),
        ("max_pending_decisions = 0", "max_pending_decisions", "greater than or equal to 1"),
    ],
)
def test_invalid_toml_value_names_the_field(
    tmp_path: Path, toml: str, field: str, hint: str
) -> None:
    config = write_toml(tmp_path / "bad.toml", toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=config)
    assert field in str(caught.value)
    assert hint in str(caught.value)


def test_missing_or_malformed_config_file_is_reported_with_its_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.toml"
    monkeypatch.setenv("BANDIT_ROUTER_CONFIG", str(missing))
    with pytest.raises(
        ConfigError, match=r"nope\.toml \(from BANDIT_ROUTER_CONFIG\) does not exist"
    ):
        load_settings()
    broken = write_toml(tmp_path / "broken.toml", "port = = 1")
    with pytest.raises(ConfigError, match=r"broken\.toml is not valid TOML"):
        load_settings(config_file=broken)
