"""Shared fixtures: paths to the real routing data beside the checkout, and MLflow off unless a test
turns it on."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "routellm" / "mmlu_gsm8k_dev.csv"
SAMPLE_DATA = REPO / "data" / "routellm_sample.csv"


@pytest.fixture(autouse=True)
def no_mlflow_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never log to MLflow (nor create mlflow.db in the checkout) unless they ask to."""
    monkeypatch.setenv("BANDIT_ROUTER_MLFLOW_ENABLED", "false")


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not REAL_DATA.is_file():
        pytest.fail(f"the real routing dataset is missing: {REAL_DATA} (../shared must be beside the repo)")
    return REAL_DATA
