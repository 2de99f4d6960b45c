"""The Kafka bus against a real Kafka-protocol broker (Tansu): partitioning, topic creation, start
offsets per partition, records produced by an application, and broker outages."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kafka import KafkaAdminClient, KafkaProducer

from streams import TOPIC_DEADLETTER, TOPIC_DECISIONS, TOPIC_FEEDBACK, BusUnavailableError, Record
from streams.kafka import KafkaBus, OffsetOutOfRangeError
from tests.services import TansuBroker
from tests.test_buses import drain, from_start

# murmur2 of these keys as computed by Apache Kafka's Java client (its own unit-test vectors); the
# Java default partitioner places a keyed record in (hash & 0x7fffffff) % partitions.
JAVA_MURMUR2 = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}


@pytest.fixture
def bus(kafka_broker: TansuBroker) -> Iterator[KafkaBus]:
    instance = KafkaBus(kafka_broker.bootstrap, partitions=8)
    yield instance
    instance.close()


def partition_counts(bootstrap: str) -> dict[str, int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return {topic["name"]: len(topic["partitions"]) for topic in admin.describe_topics()}
    finally:
        admin.close()


def test_a_decision_and_its_feedback_share_the_java_partition(bus: KafkaBus) -> None:
    for key in JAVA_MURMUR2:
        bus.publish(TOPIC_DECISIONS, key, b"decision")
        bus.publish(TOPIC_FEEDBACK, key, b"feedback")
    consumer = bus.consumer([TOPIC_DECISIONS, TOPIC_FEEDBACK], "learner", from_start)
    records = drain(consumer, 2 * len(JAVA_MURMUR2))
    placed = {(r.topic, r.key): r.partition for r in records}
    assert len(placed) == 2 * len(JAVA_MURMUR2)
    expected = {key: (h & 0x7FFFFFFF) % 8 for key, h in JAVA_MURMUR2.items()}
    assert len(set(expected.values())) > 1  # the keys really do spread over partitions
    for key, partition in expected.items():
        assert placed[(TOPIC_DECISIONS, key)] == placed[(TOPIC_FEEDBACK, key)] == partition


def test_topics_are_created_with_the_configured_partition_count(kafka_broker: TansuBroker) -> None:
    bus = KafkaBus(kafka_broker.bootstrap, partitions=3)
    counts = partition_counts(kafka_broker.bootstrap)  # created by the constructor, before any use
    assert {t: counts.get(t) for t in (TOPIC_DECISIONS, TOPIC_FEEDBACK, TOPIC_DEADLETTER)} == {
        TOPIC_DECISIONS: 3,
        TOPIC_FEEDBACK: 3,
        TOPIC_DEADLETTER: 3,
    }
    bus.publish("other", "k", b"x")  # any other topic on first use, the same way
    assert partition_counts(kafka_broker.bootstrap)["other"] == 3
    # A bus that finds the topics already there leaves them as they are.
    KafkaBus(kafka_broker.bootstrap, partitions=3).close()
    assert partition_counts(kafka_broker.bootstrap)[TOPIC_DECISIONS] == 3
    bus.close()


def test_start_offsets_are_honoured_per_partition(kafka_broker: TansuBroker) -> None:
    bus = KafkaBus(kafka_broker.bootstrap, partitions=4, topics=[TOPIC_DECISIONS])
    batch = [(TOPIC_DECISIONS, f"d{i}", b"%d" % i) for i in range(40)]
    offsets = bus.publish_many(batch)
    everything = drain(bus.consumer([TOPIC_DECISIONS], "g", from_start), 40)
    # publish_many's offsets are those the records were stored at, in the order given.
    stored_at = {key: offset for (_, key, _), offset in zip(batch, offsets, strict=True)}
    assert {r.key: r.offset for r in everything} == stored_at
    by_partition: dict[int, list[Record]] = {}
    for record in everything:
        by_partition.setdefault(record.partition, []).append(record)
    assert sorted(by_partition) == [0, 1, 2, 3]
    for records in by_partition.values():  # in offset order, which is the order they were sent in
        assert [r.offset for r in records] == list(range(len(records)))
        assert [r.key for r in records] == sorted((r.key for r in records), key=lambda k: int(k[1:]))

    starts = {p: min(p, len(held)) for p, held in by_partition.items()}  # 0, 1, 2, 3 where there are
    asked: list[tuple[str, int]] = []

    def start(topic: str, partition: int) -> int:
        asked.append((topic, partition))
        return starts[partition]

    consumer = bus.consumer([TOPIC_DECISIONS], "g", start)
    assert sorted(asked) == consumer.assignment() == [(TOPIC_DECISIONS, p) for p in range(4)]
    expected = [r for r in everything if r.offset >= starts[r.partition]]
    got = drain(consumer, len(expected))
    assert sorted((r.partition, r.offset, r.key) for r in got) == sorted(
        (r.partition, r.offset, r.key) for r in expected
    )
    assert consumer.poll(timeout_s=0.2) == []
    bus.close()


def test_a_record_an_application_produced_is_read_with_its_key_and_partition(bus: KafkaBus) -> None:
    decision_offset = bus.publish(TOPIC_DECISIONS, "d-123", b"decision")
    app = KafkaProducer(bootstrap_servers=bus.bootstrap, acks="all")  # kafka-python's defaults
    sent = app.send(TOPIC_FEEDBACK, key=b"d-123", value=b'{"schema":"feedback/1"}').get(timeout=10)
    app.close()
    before = time.time()
    records = drain(bus.consumer([TOPIC_DECISIONS, TOPIC_FEEDBACK], "learner", from_start), 2)
    decision = next(r for r in records if r.topic == TOPIC_DECISIONS)
    feedback = next(r for r in records if r.topic == TOPIC_FEEDBACK)
    assert (decision.key, decision.offset) == ("d-123", decision_offset)
    assert (feedback.key, feedback.offset) == ("d-123", sent.offset)
    assert feedback.value == b'{"schema":"feedback/1"}'
    assert feedback.partition == decision.partition == sent.partition
    assert before - 60 < feedback.ts <= time.time()


def test_publish_fails_fast_while_the_broker_is_down_and_recovers(kafka_broker: TansuBroker) -> None:
    bus = KafkaBus(kafka_broker.bootstrap, request_timeout_s=1.0)
    bus.publish(TOPIC_DECISIONS, "d1", b"before")
    kafka_broker.stop()
    for publish in (
        lambda: bus.publish(TOPIC_DECISIONS, "d2", b"during"),
        lambda: bus.publish_many([(TOPIC_DECISIONS, "d3", b"during"), (TOPIC_FEEDBACK, "d3", b"during")]),
    ):
        started = time.monotonic()
        with pytest.raises(BusUnavailableError, match=kafka_broker.bootstrap):
            publish()
        assert time.monotonic() - started < 1.0 + 2.0
    kafka_broker.restart()  # the same port, empty: Tansu keeps records in memory
    assert bus.publish(TOPIC_DECISIONS, "d4", b"after") == 0
    assert bus.publish_many([(TOPIC_FEEDBACK, "d4", b"after")]) == [0]
    assert [r.value for r in drain(bus.consumer([TOPIC_DECISIONS], "g", from_start), 1)] == [b"after"]
    bus.close()


def test_a_bus_and_consumer_built_while_the_broker_is_down_work_once_it_is_up(
    kafka_broker: TansuBroker,
) -> None:
    kafka_broker.stop()
    bus = KafkaBus(kafka_broker.bootstrap, request_timeout_s=0.5, metadata_refresh_s=0.1)
    consumer = bus.consumer([TOPIC_FEEDBACK], "learner", from_start)
    assert consumer.assignment() == []
    assert consumer.poll(timeout_s=0.05) == []
    with pytest.raises(BusUnavailableError):
        bus.publish(TOPIC_FEEDBACK, "d1", b"x")
    kafka_broker.start()
    bus.publish(TOPIC_FEEDBACK, "d1", b"x")
    assert [r.value for r in drain(consumer, 1)] == [b"x"]
    assert consumer.assignment() == [(TOPIC_FEEDBACK, p) for p in range(8)]
    bus.close()


def test_a_start_offset_beyond_the_partition_is_refused(kafka_broker: TansuBroker) -> None:
    bus = KafkaBus(kafka_broker.bootstrap, partitions=1)
    bus.publish(TOPIC_DECISIONS, "d1", b"x")
    consumer = bus.consumer([TOPIC_DECISIONS], "g", lambda topic, partition: 5)
    with pytest.raises(OffsetOutOfRangeError, match=r"next offset 5 of topic 'router.decisions' partition 0"):
        drain(consumer, 1)
    bus.close()


def test_a_recreated_topic_is_reported_not_silently_reread(kafka_broker: TansuBroker) -> None:
    bus = KafkaBus(kafka_broker.bootstrap, partitions=1, request_timeout_s=0.5, metadata_refresh_s=0.1)
    bus.publish_many([(TOPIC_DECISIONS, f"d{i}", b"x") for i in range(3)])
    consumer = bus.consumer([TOPIC_DECISIONS], "g", from_start)
    assert len(drain(consumer, 3)) == 3
    kafka_broker.restart()  # the topic comes back empty, as if deleted and created again
    with pytest.raises(OffsetOutOfRangeError, match=r"next offset 3 of topic 'router.decisions' partition 0"):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            consumer.poll(timeout_s=0.1)
    bus.close()


@pytest.mark.parametrize(
    ("option", "value", "field"),
    [("partitions", 0, "partitions"), ("replication_factor", 1.5, "replication_factor"),
     ("request_timeout_s", 0, "request_timeout_s"), ("metadata_refresh_s", -1, "metadata_refresh_s")],
)  # fmt: skip
def test_bad_settings_are_refused_before_connecting(option: str, value: float, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        KafkaBus("127.0.0.1:1", **{option: value})  # type: ignore[arg-type]


def test_stored_finds_exactly_the_records_that_reached_the_topics(bus: KafkaBus) -> None:
    """What the outbox asks after a write whose acknowledgement was lost."""
    before = time.time()
    sent = [(TOPIC_DECISIONS, f"d{i}", f"decision {i}".encode()) for i in range(40)]
    sent += [(TOPIC_FEEDBACK, f"d{i}", f"feedback {i}".encode()) for i in range(0, 40, 3)]
    bus.publish_many(sent)
    never = [
        (TOPIC_DECISIONS, "d-never", b"decision never"),
        (TOPIC_DECISIONS, "d3", b"another value under a sent key"),
        (TOPIC_FEEDBACK, "d1", b"feedback 1"),  # a key sent, but on the other topic only
    ]
    asked = [sent[5], never[0], sent[-1], never[1], sent[0], never[2]]
    assert bus.stored(asked, since=before) == [True, False, True, False, True, False]
    assert bus.stored([], since=before) == []
