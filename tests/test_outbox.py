"""The outbox keeps every event while the bus is down and forwards them in order, once each."""

from __future__ import annotations

import asyncio
import doctest
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert

import streams.outbox
from streams.bus import BusUnavailableError, Record
from streams.embedded import metadata, sqlite_engine
from streams.memory import InMemoryBus
from streams.outbox import NOT_YET_PUBLISHED, OUTBOX, OutboxBus, outbox_rows


class FlakyBus(InMemoryBus):
    """An in-memory bus whose broker can be switched off."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def publish_many(self, records: Sequence[tuple[str, str, bytes]]) -> list[int]:
        if self.down:
            raise BusUnavailableError("broker 127.0.0.1:1 unreachable")
        return super().publish_many(records)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = sqlite_engine(f"sqlite:///{tmp_path / 'outbox.db'}")
    metadata.create_all(engine)  # tests only: migrations create the tables
    yield engine
    engine.dispose()


def read_all(bus: InMemoryBus, topic: str) -> list[Record]:
    return bus.consumer([topic], "test", lambda topic, partition: 0).poll(timeout_s=0)


def test_an_up_bus_is_used_directly(engine: Engine) -> None:
    inner = FlakyBus()
    bus = OutboxBus(inner, engine, retry_s=0.01)
    assert bus.publish_many([("t", "a", b"1"), ("t", "b", b"2")]) == [0, 1]
    assert bus.pending() == 0 and bus.status() == {"state": "ok", "pending": 0, "error": None}
    bus.close()


def test_an_outage_queues_events_and_they_are_forwarded_in_order_exactly_once(
    engine: Engine,
) -> None:
    inner = FlakyBus()
    bus = OutboxBus(inner, engine, retry_s=0.01)
    bus.publish("t", "k0", b"0")
    inner.down = True
    assert [bus.publish("t", f"k{i}", str(i).encode()) for i in range(1, 6)] == [
        NOT_YET_PUBLISHED
    ] * 5
    status = bus.status()
    assert status["state"] == "degraded" and status["pending"] == 5
    assert "127.0.0.1:1 unreachable" in status["error"]
    inner.down = False
    bus.publish("t", "k6", b"6")  # queued behind the backlog, not sent ahead of it
    assert bus.flush(timeout_s=5)
    assert [r.value for r in read_all(inner, "t")] == [str(i).encode() for i in range(7)]
    assert bus.pending() == 0 and bus.status()["state"] == "ok"
    assert bus.forwarded_total == 6
    bus.publish("t", "k7", b"7")  # straight through again
    assert len(read_all(inner, "t")) == 8
    bus.close()


def test_async_publishes_take_the_same_way_through_an_outage(engine: Engine) -> None:
    inner = FlakyBus()
    bus = OutboxBus(inner, engine, retry_s=0.01)
    assert asyncio.run(bus.publish_async("t", "k0", b"0")) == 0
    inner.down = True
    assert asyncio.run(bus.publish_async("t", "k1", b"1")) == NOT_YET_PUBLISHED
    inner.down = False
    assert asyncio.run(bus.publish_async("t", "k2", b"2")) == NOT_YET_PUBLISHED  # behind k1
    assert bus.flush(timeout_s=5)
    assert [r.value for r in read_all(inner, "t")] == [b"0", b"1", b"2"]
    assert asyncio.run(bus.publish_async("t", "k3", b"3")) == 3
    bus.close()


def test_records_left_by_an_earlier_run_or_queued_by_others_are_forwarded(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(insert(OUTBOX), outbox_rows([("t", "old", b"left")], now=1.0))
    inner = FlakyBus()
    bus = OutboxBus(inner, engine, retry_s=0.01)
    assert bus.flush(timeout_s=5)
    with engine.begin() as connection:
        connection.execute(insert(OUTBOX), outbox_rows([("dl", "x", b"letter")], now=2.0))
    bus.notify()
    assert bus.flush(timeout_s=5)
    assert [r.value for r in read_all(inner, "t")] == [b"left"]
    assert [r.value for r in read_all(inner, "dl")] == [b"letter"]
    bus.close()


def test_closing_keeps_what_could_not_be_sent(engine: Engine) -> None:
    inner = FlakyBus()
    inner.down = True
    bus = OutboxBus(inner, engine, retry_s=0.01)
    bus.publish("t", "k", b"v")
    assert not bus.flush(timeout_s=0.1)
    bus.close()
    assert OutboxBus(FlakyBus(), engine).pending() == 1


def test_bad_records_are_refused_before_anything_is_stored(engine: Engine) -> None:
    inner = FlakyBus()
    inner.down = True
    bus = OutboxBus(inner, engine, retry_s=0.01)
    with pytest.raises(TypeError, match="value must be bytes"):
        bus.publish("t", "k", "not bytes")  # type: ignore[arg-type]
    assert bus.pending() == 0
    bus.close()


def test_docstring_examples_run() -> None:
    assert doctest.testmod(streams.outbox).failed == 0


def test_a_partly_acknowledged_batch_is_not_sent_twice(engine: Engine) -> None:
    class HalfBus(FlakyBus):
        """Stores the first two records of a write, then fails (as Kafka may mid-batch)."""

        def publish_many(self, records: Sequence[tuple[str, str, bytes]]) -> list[int]:
            if self.down and len(records) > 2:
                InMemoryBus.publish_many(self, records[:2])
                raise BusUnavailableError("timed out after 2 acknowledgements", published=2)
            return super().publish_many(records)

    inner = HalfBus()
    inner.down = True
    bus = OutboxBus(inner, engine, retry_s=0.01)
    for i in range(6):
        bus.publish("t", f"k{i}", str(i).encode())  # all queued: each single write fails
    bus.notify()
    assert not bus.flush(timeout_s=0.3)
    inner.down = False
    assert bus.flush(timeout_s=5)
    assert [r.value for r in read_all(inner, "t")] == [str(i).encode() for i in range(6)]
    bus.close()


class LostAckBus(FlakyBus):
    """Stores some writes and then loses their acknowledgement, as a broker connection that
    drops after the broker stored a batch; `stored` can be switched off too."""

    def __init__(self) -> None:
        super().__init__()
        self.lose_ack_of_next = 0  # the next writes stored but reported as failed
        self.lookups_fail = False
        self.lookups: list[float] = []

    def publish_many(self, records: Sequence[tuple[str, str, bytes]]) -> list[int]:
        if self.lose_ack_of_next and not self.down:
            self.lose_ack_of_next -= 1
            InMemoryBus.publish_many(self, records)
            raise BusUnavailableError("connection reset before the acknowledgement", sent_at=7.0)
        return super().publish_many(records)

    def stored(self, records: Sequence[tuple[str, str, bytes]], since: float) -> list[bool]:
        self.lookups.append(since)
        if self.lookups_fail:
            raise BusUnavailableError("broker 127.0.0.1:1 unreachable")
        return super().stored(records, since)


def test_a_route_whose_acknowledgement_was_lost_reaches_the_bus_once(engine: Engine) -> None:
    inner = LostAckBus()
    bus = OutboxBus(inner, engine, retry_s=0.01)
    inner.lose_ack_of_next = 1
    assert bus.publish("t", "k0", b"0") == NOT_YET_PUBLISHED  # stored, but we cannot know
    bus.publish("t", "k1", b"1")  # queues behind it
    assert bus.flush(timeout_s=5)
    assert [(r.key, r.value) for r in read_all(inner, "t")] == [("k0", b"0"), ("k1", b"1")]
    assert inner.lookups == [7.0]  # looked up from when it was sent
    bus.close()


def test_a_flushed_batch_whose_acknowledgement_was_lost_is_not_sent_again(engine: Engine) -> None:
    inner = LostAckBus()
    inner.down = True
    bus = OutboxBus(inner, engine, retry_s=0.01)
    for i in range(5):
        bus.publish("t", f"k{i}", str(i).encode())
    inner.lookups_fail = True  # the first retry's lookup fails too: the doubt must survive it
    inner.lose_ack_of_next = 1
    inner.down = False
    bus.notify()
    deadline = time.monotonic() + 5
    while not inner.lookups and time.monotonic() < deadline:
        time.sleep(0.01)
    # Stored once, still queued. The doubtful batch is whatever the flusher had read when the bus
    # came back: all five, or fewer if its last retry read the outbox before the rest landed.
    stored = [r.key for r in read_all(inner, "t")]
    assert bus.pending() == 5 and stored
    assert stored == [f"k{i}" for i in range(len(stored))]
    inner.lookups_fail = False
    assert bus.flush(timeout_s=5)
    assert [r.key for r in read_all(inner, "t")] == [f"k{i}" for i in range(5)]
    assert bus.forwarded_total == 5
    bus.close()


def test_only_the_unstored_part_of_a_doubtful_batch_is_sent(engine: Engine) -> None:
    inner = LostAckBus()
    bus = OutboxBus(inner, engine, retry_s=0.01)
    with engine.begin() as connection:  # k1 reached the bus; k0 and k2 did not
        connection.execute(insert(OUTBOX), outbox_rows([("t", "k0", b"0")], 1.0, doubt_since=5.0))
        connection.execute(insert(OUTBOX), outbox_rows([("t", "k1", b"1")], 1.0, doubt_since=6.0))
        connection.execute(insert(OUTBOX), outbox_rows([("t", "k2", b"2")], 1.0))
    inner.publish("t", "k1", b"1")
    bus.notify()
    assert bus.flush(timeout_s=5)
    assert [r.key for r in read_all(inner, "t")] == ["k1", "k0", "k2"]
    assert inner.lookups == [5.0]  # the earliest doubt of the batch
    bus.close()
