"""One contract for every bus (in-memory, embedded SQLite, Kafka), and the embedded bus's durability.

The contract runs Kafka with one partition per topic, where every bus reads the same: offsets 0, 1,
2, ... of partition 0. What several partitions change is in test_kafka_bus.py.
"""

from __future__ import annotations

import asyncio
import doctest
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

import streams.embedded
import streams.memory
from streams.bus import BusClosedError, Consumer, Record
from streams.embedded import EmbeddedBus, metadata, sqlite_engine
from streams.kafka import KafkaBus
from streams.memory import InMemoryBus
from tests.services import TansuBroker

REPO = Path(__file__).resolve().parents[1]
AnyBus = InMemoryBus | EmbeddedBus | KafkaBus
LocalBus = InMemoryBus | EmbeddedBus


def from_start(topic: str, partition: int) -> int:
    return 0


def make_engine(path: Path) -> Engine:
    engine = sqlite_engine(f"sqlite:///{path}")
    metadata.create_all(engine)  # tests only: in the service, Alembic migrations create the table
    return engine


@pytest.fixture(params=["memory", "embedded", "kafka"])
def bus(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AnyBus]:
    if request.param == "memory":
        instance: AnyBus = InMemoryBus()
        yield instance
        instance.close()
    elif request.param == "embedded":
        engine = make_engine(tmp_path / "bus.db")
        instance = EmbeddedBus(engine)
        yield instance
        instance.close()
        engine.dispose()
    else:
        broker: TansuBroker = request.getfixturevalue("kafka_broker")
        instance = KafkaBus(broker.bootstrap, partitions=1)
        yield instance
        instance.close()


@pytest.fixture(params=["memory", "embedded"])
def local_bus(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalBus]:
    """The buses in this process, which can also look records up by key (``find``)."""
    if request.param == "memory":
        instance: LocalBus = InMemoryBus()
        yield instance
        instance.close()
    else:
        engine = make_engine(tmp_path / "bus.db")
        instance = EmbeddedBus(engine)
        yield instance
        instance.close()
        engine.dispose()


def drain(consumer: Consumer, expected: int, timeout_s: float = 5.0) -> list[Record]:
    """Poll until ``expected`` records arrived (a broker's consumer fetches over the network)."""
    records: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < expected and time.monotonic() < deadline:
        records.extend(consumer.poll(timeout_s=0.05))
    return records


# --- the contract ------------------------------------------------------------------------------
def test_publish_then_poll_in_offset_order(bus: AnyBus) -> None:
    offsets = [bus.publish("router.decisions", f"d{i}", f"v{i}".encode()) for i in range(5)]
    assert offsets == sorted(offsets) and len(set(offsets)) == 5
    consumer = bus.consumer(["router.decisions"], "learner", from_start)
    records = drain(consumer, 5)
    assert [(r.topic, r.partition, r.offset, r.key, r.value) for r in records] == [
        ("router.decisions", 0, offsets[i], f"d{i}", f"v{i}".encode()) for i in range(5)
    ]
    assert all(isinstance(r.ts, float) and r.ts > 1e9 for r in records)
    assert consumer.poll(timeout_s=0) == []
    later = bus.publish("router.decisions", "d5", b"v5")
    assert [r.offset for r in drain(consumer, 1)] == [later]


def test_start_offset_is_honoured(bus: AnyBus) -> None:
    offsets = [bus.publish("router.feedback", f"d{i}", b"x") for i in range(6)]
    asked: list[tuple[str, int]] = []

    def start(topic: str, partition: int) -> int:
        asked.append((topic, partition))
        return offsets[3]

    consumer = bus.consumer(["router.feedback"], "learner", start)
    assert asked == [("router.feedback", 0)]
    assert consumer.assignment() == [("router.feedback", 0)]
    assert [r.offset for r in drain(consumer, 3)] == offsets[3:]
    beyond = bus.consumer(["router.feedback"], "learner", lambda t, p: offsets[-1] + 1)
    assert beyond.poll(timeout_s=0.2) == []


def test_each_consumer_keeps_its_own_position(bus: AnyBus) -> None:
    for i in range(4):
        bus.publish("t", f"k{i}", b"x")
    first = bus.consumer(["t"], "a", from_start)
    second = bus.consumer(["t"], "a", from_start)
    assert len(first.poll(max_records=3, timeout_s=5)) == 3
    assert len(drain(second, 4)) == 4
    assert len(first.poll(timeout_s=5)) == 1


def test_multiple_topics_are_read_together_and_others_ignored(bus: AnyBus) -> None:
    published = []
    for i in range(6):
        topic = ("router.decisions", "router.feedback", "router.deadletter")[i % 3]
        published.append((topic, bus.publish(topic, f"d{i}", str(i).encode())))
    consumer = bus.consumer(
        ["router.decisions", "router.feedback", "router.decisions"], "g", from_start
    )
    assert consumer.assignment() == [("router.decisions", 0), ("router.feedback", 0)]
    records = drain(consumer, 4)
    assert sorted((r.topic, r.offset) for r in records) == sorted(
        (t, o) for t, o in published if t != "router.deadletter"
    )
    for topic in ("router.decisions", "router.feedback"):
        per_topic = [r.offset for r in records if r.topic == topic]
        assert per_topic == sorted(per_topic)


def test_topics_start_at_their_own_offsets(bus: AnyBus) -> None:
    a = [bus.publish("a", "k", b"a%d" % i) for i in range(3)]
    b = [bus.publish("b", "k", b"b%d" % i) for i in range(3)]
    starts = {"a": a[2], "b": b[1]}
    consumer = bus.consumer(["a", "b"], "g", lambda topic, partition: starts[topic])
    assert sorted(r.value for r in drain(consumer, 3)) == [b"a2", b"b1", b"b2"]


def test_publish_many_is_one_ordered_write(bus: AnyBus) -> None:
    batch = [("t1", "k0", b"0"), ("t2", "k1", b"1"), ("t1", "k2", b"2")]
    offsets = bus.publish_many(batch)
    assert len(offsets) == 3
    assert offsets[0] < offsets[2]
    assert bus.publish_many([]) == []
    consumer = bus.consumer(["t1", "t2"], "g", from_start)
    got = {(r.topic, r.key, r.value): r.offset for r in drain(consumer, 3)}
    assert got == {record: offset for record, offset in zip(batch, offsets, strict=True)}


def test_publish_async_is_publish_for_coroutines(bus: AnyBus) -> None:
    async def publish_concurrently() -> list[int]:
        return list(
            await asyncio.gather(*(bus.publish_async("t", f"k{i}", b"%d" % i) for i in range(40)))
        )

    offsets = asyncio.run(publish_concurrently())
    assert len(set(offsets)) == 40
    consumer = bus.consumer(["t"], "g", from_start)
    got = {r.key: (r.offset, r.value) for r in drain(consumer, 40)}
    assert got == {f"k{i}": (offsets[i], b"%d" % i) for i in range(40)}
    with pytest.raises(TypeError, match="value must be bytes"):
        asyncio.run(bus.publish_async("t", "k", "text"))  # type: ignore[arg-type]
    bus.close()
    with pytest.raises(BusClosedError):
        asyncio.run(bus.publish_async("t", "k", b"x"))


def test_max_records_splits_the_backlog(bus: AnyBus) -> None:
    bus.publish_many([("t", f"k{i}", b"x") for i in range(7)])
    consumer = bus.consumer(["t"], "g", from_start)
    sizes = [len(consumer.poll(max_records=3, timeout_s=5)) for _ in range(3)]
    assert sizes == [3, 3, 1]
    assert consumer.poll(max_records=3, timeout_s=0.1) == []


def test_poll_returns_empty_after_its_timeout(bus: AnyBus) -> None:
    consumer = bus.consumer(["nothing-here"], "g", from_start)
    started = time.monotonic()
    assert consumer.poll(timeout_s=0.15) == []
    elapsed = time.monotonic() - started
    assert 0.14 <= elapsed < 1.0
    started = time.monotonic()
    assert consumer.poll(timeout_s=0) == []
    assert time.monotonic() - started < 0.5


def test_poll_wakes_up_when_a_record_arrives(bus: AnyBus) -> None:
    consumer = bus.consumer(["t"], "g", from_start)
    timer = threading.Timer(0.05, lambda: bus.publish("t", "k", b"late"))
    timer.start()
    started = time.monotonic()
    records = consumer.poll(timeout_s=5.0)
    timer.join()
    assert [r.value for r in records] == [b"late"]
    assert time.monotonic() - started < 2.0


def test_find_returns_every_record_with_the_key(local_bus: LocalBus) -> None:
    bus = local_bus
    bus.publish("router.decisions", "d1", b"decision")
    bus.publish("router.feedback", "d1", b"feedback-a")
    bus.publish("router.decisions", "d2", b"other")
    bus.publish("router.feedback", "d1", b"feedback-b")
    assert [r.value for r in bus.find("router.decisions", "d1")] == [b"decision"]
    assert [r.value for r in bus.find("router.feedback", "d1")] == [b"feedback-a", b"feedback-b"]
    assert bus.find("router.decisions", "missing") == []


def test_reading_while_a_thread_publishes_misses_nothing(bus: AnyBus) -> None:
    consumer = bus.consumer(["t"], "g", from_start)

    def produce() -> None:
        for i in range(300):
            bus.publish("t", f"k{i}", b"%d" % i)

    producer = threading.Thread(target=produce)
    producer.start()
    records = drain(consumer, 300)
    producer.join()
    assert [r.value for r in records] == [b"%d" % i for i in range(300)]


def test_misuse_is_refused_with_a_clear_error(bus: AnyBus) -> None:
    with pytest.raises(TypeError, match="value must be bytes"):
        bus.publish("t", "k", "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="topic must be a non-empty string"):
        bus.publish("", "k", b"x")
    with pytest.raises(ValueError, match="at least one topic"):
        bus.consumer([], "g", from_start)
    with pytest.raises(TypeError, match="not the string"):
        bus.consumer("router.decisions", "g", from_start)
    with pytest.raises(ValueError, match="returned -1"):
        bus.consumer(["t"], "g", lambda topic, partition: -1)
    consumer = bus.consumer(["t"], "g", from_start)
    with pytest.raises(ValueError, match="max_records"):
        consumer.poll(max_records=0)
    consumer.close()
    with pytest.raises(BusClosedError):
        consumer.poll()
    still_open = bus.consumer(["t"], "g", from_start)
    bus.close()
    for use in (
        lambda: bus.publish("t", "k", b"x"),
        lambda: bus.publish_many([("t", "k", b"x")]),
        lambda: bus.consumer(["t"], "g", from_start),
        lambda: still_open.poll(timeout_s=0),
    ):
        with pytest.raises(BusClosedError):
            use()


def test_docstring_examples_run() -> None:
    assert doctest.testmod(streams.memory).failed == 0
    assert doctest.testmod(streams.embedded).failed == 0


# --- the embedded bus in particular -------------------------------------------------------------
def test_sqlite_engine_sets_wal_normal_and_busy_timeout(tmp_path: Path) -> None:
    engine = sqlite_engine(f"sqlite:///{tmp_path / 'x.db'}", busy_timeout_ms=1234)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1234
    engine.dispose()
    with pytest.raises(ValueError, match="sqlite://"):
        sqlite_engine("postgresql://localhost/test")


def test_embedded_bus_refuses_an_in_memory_database() -> None:
    with pytest.raises(ValueError, match="needs a SQLite database file"):
        EmbeddedBus(sqlite_engine("sqlite://"))


def test_embedded_bus_never_creates_its_table(tmp_path: Path) -> None:
    engine = sqlite_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    bus = EmbeddedBus(engine)
    with pytest.raises(OperationalError, match="no such table: event_log"):
        bus.publish("t", "k", b"x")
    # A failed write does not poison the bus: once the migration ran, publishing works.
    metadata.create_all(engine)
    assert [r.value for r in bus.find("t", "k")] == []
    offset = bus.publish("t", "k", b"x")
    assert [r.offset for r in bus.find("t", "k")] == [offset]
    engine.dispose()


def test_a_second_bus_on_the_same_file_sees_the_records(tmp_path: Path) -> None:
    engine = make_engine(tmp_path / "shared.db")
    writer = EmbeddedBus(engine)
    other_engine = sqlite_engine(f"sqlite:///{tmp_path / 'shared.db'}")
    reader = EmbeddedBus(other_engine).consumer(["t"], "g", from_start)
    assert reader.poll(timeout_s=0) == []
    # No in-process wake-up crosses buses: the reader finds it by polling the table.
    threading.Timer(0.05, lambda: writer.publish("t", "k", b"hello")).start()
    assert [r.value for r in reader.poll(timeout_s=2.0)] == [b"hello"]
    engine.dispose()
    other_engine.dispose()


def test_an_idle_poll_reads_the_table_only_when_something_was_committed(tmp_path: Path) -> None:
    engine = make_engine(tmp_path / "idle.db")
    consumer = EmbeddedBus(engine).consumer(["t"], "g", from_start)
    reads = 0
    read = consumer._read

    def counted(max_records: int) -> list[Record]:
        nonlocal reads
        reads += 1
        return read(max_records)

    consumer._read = counted  # type: ignore[method-assign]
    assert consumer.poll(timeout_s=0.3) == []
    assert reads == 1  # not once per POLL_STEP_S
    other = EmbeddedBus(sqlite_engine(f"sqlite:///{tmp_path / 'idle.db'}"))
    threading.Timer(0.05, lambda: other.publish("t", "k", b"x")).start()
    assert [r.value for r in consumer.poll(timeout_s=2.0)] == [b"x"]
    assert reads == 3
    other.close()
    other.engine.dispose()
    engine.dispose()


CHILD = """
import json, sys
from streams.embedded import EmbeddedBus, sqlite_engine
bus = EmbeddedBus(sqlite_engine(sys.argv[1]))
for k in range(int(sys.argv[2])):
    value = json.dumps({"k": k, "pad": "x" * (k % 300)}).encode()
    bus.publish("router.decisions", f"d{k}", value)
    print(f"published {k}", flush=True)
"""


def test_concurrent_async_writes_share_commits(tmp_path: Path) -> None:
    engine = make_engine(tmp_path / "group.db")
    bus = EmbeddedBus(engine)
    commits: list[int] = []
    commit = bus._commit

    def counted(writes):  # type: ignore[no-untyped-def]
        commits.append(len(writes))
        return commit(writes)

    bus._commit = counted  # type: ignore[method-assign]

    async def requests() -> list[int]:
        async def one(i: int) -> int:
            await asyncio.sleep(0)
            return await bus.publish_async("router.decisions", f"d{i}", b"%d" % i)

        return list(await asyncio.gather(*(one(i) for i in range(200))))

    offsets = asyncio.run(requests())
    bus.close()
    assert sum(commits) == 200 and len(commits) < 100, commits
    records = drain(EmbeddedBus(engine).consumer(["router.decisions"], "g", from_start), 200)
    assert {r.key: r.offset for r in records} == {f"d{i}": offsets[i] for i in range(200)}
    engine.dispose()


def test_a_failed_write_fails_only_its_own_request(tmp_path: Path) -> None:
    engine = make_engine(tmp_path / "fail.db")
    bus = EmbeddedBus(engine)
    commit = bus._commit

    def refuse_poison(writes):  # type: ignore[no-untyped-def]
        if any(key == "poison" for records in writes for _, key, _ in records):
            raise OSError("disk on fire")
        return commit(writes)

    bus._commit = refuse_poison  # type: ignore[method-assign]

    async def requests() -> list[object]:
        keys = ["a", "b", "poison", "c", "d"]
        return list(
            await asyncio.gather(
                *(bus.publish_async("t", key, b"x") for key in keys), return_exceptions=True
            )
        )

    outcomes = asyncio.run(requests())
    assert isinstance(outcomes[2], OSError) and "disk on fire" in str(outcomes[2])
    assert all(isinstance(o, int) for i, o in enumerate(outcomes) if i != 2)
    assert sorted(r.key for r in bus.find("t", "a") + bus.find("t", "d")) == ["a", "d"]
    assert bus.find("t", "poison") == []
    bus.close()
    engine.dispose()


def test_close_commits_the_writes_already_queued(tmp_path: Path) -> None:
    engine = make_engine(tmp_path / "close.db")
    bus = EmbeddedBus(engine)

    async def publish_then_close() -> list[int]:
        tasks = [asyncio.ensure_future(bus.publish_async("t", f"k{i}", b"x")) for i in range(50)]
        await asyncio.sleep(0)  # every task has queued its write
        await asyncio.to_thread(bus.close)
        return list(await asyncio.gather(*tasks))

    offsets = asyncio.run(publish_then_close())
    assert len(set(offsets)) == 50
    records = drain(EmbeddedBus(engine).consumer(["t"], "g", from_start), 50)
    assert sorted(r.offset for r in records) == sorted(offsets)
    engine.dispose()


def test_acknowledged_events_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "durable.db"
    make_engine(path).dispose()
    url = f"sqlite:///{path}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, "10000000"], stdout=subprocess.PIPE, cwd=REPO, env=env
    )
    assert child.stdout is not None
    acknowledged = -1
    try:
        for line in child.stdout:
            acknowledged = int(line.split()[1])
            if acknowledged >= 400:
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)
    # Acks already in the pipe count too: the child printed them after its commits.
    for line in child.stdout.read().decode().splitlines():
        acknowledged = max(acknowledged, int(line.split()[1]))
    assert child.returncode == -signal.SIGKILL
    assert acknowledged >= 400

    engine = sqlite_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    records = drain(
        EmbeddedBus(engine).consumer(["router.decisions"], "check", from_start), 10**9, 1
    )
    engine.dispose()
    # Every acknowledged event is there, intact, in order; at most one more committed unacked.
    assert len(records) in (acknowledged + 1, acknowledged + 2)
    for k, record in enumerate(records):
        assert record.key == f"d{k}"
        assert json.loads(record.value) == {"k": k, "pad": "x" * (k % 300)}
    offsets = [r.offset for r in records]
    assert offsets == sorted(set(offsets))


def test_publish_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine = make_engine(tmp_path / "rate.db")
    bus = EmbeddedBus(engine)
    value = b'{"schema":"feedback/1","feedback_id":"f","decision_id":"d","ts":1.0,"quality":0.5}'
    started = time.perf_counter()
    for i in range(2000):
        bus.publish("router.feedback", f"d{i}", value)
    single = 2000 / (time.perf_counter() - started)
    started = time.perf_counter()
    for start in range(0, 2000, 100):
        bus.publish_many([("router.feedback", f"d{i}", value) for i in range(start, start + 100)])
    batched = 2000 / (time.perf_counter() - started)
    engine.dispose()
    with capsys.disabled():
        print(
            f"\nEmbeddedBus: publish {single:,.0f} events/s;"
            f" publish_many(100) {batched:,.0f} events/s"
        )
