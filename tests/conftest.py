"""Shared fixtures: paths to the real routing data beside the checkout, and MLflow off unless a test
turns it on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "routellm" / "mmlu_gsm8k_dev.csv"
SAMPLE_DATA = REPO / "data" / "routellm_sample.csv"


@pytest.fixture(autouse=True, scope="session")
def no_mlflow_by_default() -> Iterator[None]:
    """Tests never log to MLflow (nor create mlflow.db in the checkout) unless they ask to.

    Session-scoped, so it is in force before any module- or session-scoped app fixture starts.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BANDIT_ROUTER_MLFLOW_ENABLED", "false")
        yield


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not REAL_DATA.is_file():
        pytest.fail(f"the real routing dataset is missing: {REAL_DATA} (../shared must be beside the repo)")
    return REAL_DATA
