"""Helpers for the service tests: an app on a fresh SQLite file, and polling with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from fastapi.testclient import TestClient

from bandit_router.api import create_app
from bandit_router.config import Settings

T = TypeVar("T")

FAST_LEARNER = {"snapshot_every_s": 0.05, "feature_dim": 64}


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
