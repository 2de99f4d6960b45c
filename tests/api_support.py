"""Helpers for the service tests: an app on a fresh SQLite file, polling with a deadline, and a
three-model world whose policies' true values are known."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from fastapi.testclient import TestClient

from bandit_router.api import create_app
from bandit_router.catalog import CatalogModel, typical_cost
from bandit_router.config import Settings
from policies import Outcome, Preference, Scales, utility

T = TypeVar("T")

FAST_LEARNER = {"snapshot_every_s": 0.05, "feature_dim": 64}

# Three models whose quality does not depend on the prompt: every policy's true value is known.
MODELS = (
    CatalogModel("small", price_per_call=0.0002, prior_quality=0.5),
    CatalogModel("medium", price_per_call=0.002, prior_quality=0.5),
    CatalogModel("large", price_per_call=0.01, prior_quality=0.5),
)
QUALITY = {"small": 0.3, "medium": 0.75, "large": 0.8}


def true_value(preference: Preference, scales: Scales, probabilities: dict[str, float]) -> float:
    """The mean utility of routing to each model with the given probability."""
    outcomes = {m.name: Outcome(QUALITY[m.name], typical_cost(m)) for m in MODELS}
    return sum(p * utility(outcomes[name], preference, scales) for name, p in probabilities.items())


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test: its own database file, a small context, quick checkpoints."""
    values: dict[str, Any] = {"database_url": f"sqlite:///{tmp_path / 'router.db'}"}
    values |= FAST_LEARNER | overrides
    return Settings(**values)


@contextmanager
def running_app(settings: Settings) -> Iterator[TestClient]:
    """A TestClient over a started app (learner thread running); stops it on exit."""
    with TestClient(create_app(settings)) as client:
        yield client


def wait_for(probe: Callable[[], T], timeout_s: float = 20.0, every_s: float = 0.02) -> T:
    """``probe()`` once it returns something truthy; fails the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout_s}s waiting; last value {value!r}")
        time.sleep(every_s)


def applied(client: TestClient, count: int) -> Callable[[], bool]:
    """A probe: /v1/stats shows at least ``count`` applied feedback."""
    return lambda: client.get("/v1/stats").json()["feedback_applied"] >= count
