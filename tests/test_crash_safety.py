"""A real `bandit-router serve` killed with SIGKILL mid-stream loses nothing it acknowledged and
applies every feedback exactly once after it restarts on the same database."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.api_support import wait_for

PROMPTS = [
    "Translate 'good morning' into French.",
    "Write a Python function that reverses a linked list.",
    "What is the derivative of x^3 + 2x?",
    "Summarise the plot of Hamlet in two sentences.",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def server(
    database: Path, log: Path, snapshot_every_s: float
) -> Iterator[tuple[subprocess.Popen[bytes], httpx.Client]]:
    port = free_port()
    env = os.environ | {
        "BANDIT_ROUTER_SNAPSHOT_EVERY_EVENTS": "64",
        "BANDIT_ROUTER_SNAPSHOT_EVERY_S": str(snapshot_every_s),
    }
    command = [sys.executable, "-m", "bandit_router.cli", "serve", "--port", str(port),
               "--database", f"sqlite:///{database}"]
    with open(log, "ab") as output:
        process = subprocess.Popen(
            command, cwd=database.parent, env=env, stdout=output, stderr=output,
            start_new_session=True,
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0)
    try:
        wait_for(lambda: _up(client, process), timeout_s=60, every_s=0.1)
        yield process, client
    finally:
        client.close()
        if process.poll() is None:
            process.kill()
        process.wait(10)


def _up(client: httpx.Client, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"the server exited with {process.returncode}")
    try:
        return client.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def send_feedback(client: httpx.Client, decisions: list[str], start: int) -> None:
    for i, decision_id in enumerate(decisions, start):
        body = {"decision_id": decision_id, "quality": (i % 10) / 10, "feedback_id": f"fb-{i}"}
        assert client.post("/v1/feedback", json=body).status_code == 202


def test_sigkill_then_restart_applies_every_feedback_exactly_once(tmp_path):
    database, log = tmp_path / "router.db", tmp_path / "server.log"
    # Commit rarely, so the kill lands with applied-but-uncommitted learner progress.
    with server(database, log, snapshot_every_s=3600) as (process, client):
        decisions = []
        for i in range(200):
            body = {"prompt": PROMPTS[i % len(PROMPTS)], "cost_weight": (i % 5) / 5}
            response = client.post("/v1/route", json=body)
            assert response.status_code == 200
            decisions.append(response.json()["decision_id"])
        send_feedback(client, decisions[:100], start=0)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    with sqlite3.connect(database) as db:
        committed = db.execute("select count(*) from applied_feedback").fetchone()[0]
    assert committed < 100, "expected the kill to land before the learner committed everything"

    with server(database, log, snapshot_every_s=0.1) as (process, client):
        send_feedback(client, decisions[100:], start=100)
        stats = wait_for(
            lambda: (s := client.get("/v1/stats").json())["feedback_applied"] >= 200 and s
        )
        assert stats["feedback_applied"] == 200
        assert stats["decisions"] == 200 and stats["feedback_received"] == 200
        assert {p["version"] for p in client.get("/v1/policies").json()} == {200}

        send_feedback(client, decisions[:10], start=0)  # redelivered ids: ignored
        stats = wait_for(
            lambda: (s := client.get("/v1/stats").json())["feedback_received"] >= 210 and s
        )
        assert stats["feedback_applied"] == 200 and stats["dead_letters"] == 0
        assert {p["version"] for p in client.get("/v1/policies").json()} == {200}
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal as its exit status.
        assert process.wait(30) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in log.read_text()

    with sqlite3.connect(database) as db:
        rows, decisions_applied, feedback_ids = db.execute(
            "select count(*), count(distinct decision_id), count(distinct feedback_id) "
            "from applied_feedback"
        ).fetchone()
        logged = dict(db.execute("select topic, count(*) from event_log group by topic").fetchall())
    assert rows == decisions_applied == feedback_ids == 200
    assert logged == {"router.decisions": 200, "router.feedback": 210}
    # The clean shutdown committed snapshots at the final version.
    with sqlite3.connect(database) as db:
        versions = dict(
            db.execute("select policy, max(version) from policy_snapshots group by policy")
        )
    assert set(versions.values()) == {200}


def test_sigkill_during_concurrent_routes_loses_no_acknowledged_decision(tmp_path):
    """Concurrent routes share group commits; a kill mid-stream must still leave every decision
    that got its answer in the log."""
    database, log = tmp_path / "router.db", tmp_path / "server.log"
    acknowledged: list[str] = []
    enough = threading.Event()
    with server(database, log, snapshot_every_s=3600) as (process, client):
        base_url = str(client.base_url)

        def keep_routing(worker: int) -> None:
            with httpx.Client(base_url=base_url, timeout=10.0) as own:
                for i in range(10_000):
                    body = {"prompt": PROMPTS[(worker + i) % len(PROMPTS)], "cost_weight": 0.3}
                    try:
                        response = own.post("/v1/route", json=body)
                    except httpx.TransportError:
                        return  # the server is gone
                    assert response.status_code == 200
                    acknowledged.append(response.json()["decision_id"])
                    if len(acknowledged) >= 300:
                        enough.set()

        workers = [threading.Thread(target=keep_routing, args=(w,)) for w in range(8)]
        for worker in workers:
            worker.start()
        assert enough.wait(120), "the routes did not get going"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        for worker in workers:
            worker.join(30)
    with sqlite3.connect(database) as db:
        logged = {key for (key,) in db.execute(
            "select key from event_log where topic = 'router.decisions'"
        )}
    assert len(acknowledged) >= 300
    assert set(acknowledged) <= logged
