"""The outbox keeps every event while the bus is down and forwards them in order, once each."""

from __future__ import annotations

import doctest
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
