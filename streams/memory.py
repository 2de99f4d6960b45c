"""A thread-safe in-process bus for unit tests: one partition (0) per topic, offsets 0, 1, 2, ...

Nothing survives the process; the service's embedded mode uses ``streams.embedded.EmbeddedBus``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from streams.bus import (
    BusClosedError,
    Record,
    StartOffset,
    check_poll,
    check_record,
    check_start,
    check_subscription,
)


class InMemoryBus:
    """Lists of records per topic behind one lock.

    Every consumer is assigned partition 0 of each of its topics: ``group`` is accepted for
    interface compatibility but does not split partitions between consumers.

    >>> bus = InMemoryBus()
    >>> bus.publish_many([("t", "a", b"1"), ("t", "b", b"2")])
    [0, 1]
    >>> consumer = bus.consumer(["t"], group="g", start_offset=lambda topic, partition: 1)
    >>> [(r.offset, r.key, r.value) for r in consumer.poll(timeout_s=0)]
    [(1, 'b', b'2')]
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._logs: dict[str, list[Record]] = {}
        self._changed = threading.Condition()
        self._generation = 0  # bumped by every write, so a poller cannot sleep through one
        self._closed = False

    def publish(self, topic: str, key: str, value: bytes) -> int:
        """Append one record; returns its offset."""
        return self.publish_many([(topic, key, value)])[0]

    async def publish_async(self, topic: str, key: str, value: bytes) -> int:
        """`publish`, inline: appending to a list never blocks the event loop."""
        return self.publish(topic, key, value)

    def publish_many(self, records: Sequence[tuple[str, str, bytes]]) -> list[int]:
        """Append records atomically; returns their offsets in order."""
        for topic, key, value in records:
            check_record(topic, key, value)
        with self._changed:
            if self._closed:
                raise BusClosedError("cannot publish: the InMemoryBus is closed")
            ts = self._clock()
            offsets = []
            for topic, key, value in records:
                log = self._logs.setdefault(topic, [])
                log.append(Record(topic, 0, len(log), key, value, ts))
                offsets.append(len(log) - 1)
            self._generation += 1
            self._changed.notify_all()
        return offsets

    def find(self, topic: str, key: str) -> list[Record]:
        """Every record of ``topic`` with ``key``, in offset order (as ``EmbeddedBus.find``)."""
        with self._changed:
            return [record for record in self._logs.get(topic, []) if record.key == key]

    def stored(self, records: Sequence[tuple[str, str, bytes]], since: float) -> list[bool]:
        """Whether each record is in the log (looked up by key; ``since`` is not needed)."""
        return [any(r.value == value for r in self.find(topic, key)) for topic, key, value in records]

    def consumer(
        self, topics: Sequence[str], group: str, start_offset: StartOffset
    ) -> InMemoryConsumer:
        """A consumer of ``topics`` from ``start_offset(topic, 0)``."""
        if self._closed:
            raise BusClosedError("cannot subscribe: the InMemoryBus is closed")
        return InMemoryConsumer(self, check_subscription(topics), start_offset)

    def close(self) -> None:
        """Refuse further publishing and wake any waiting consumer."""
        with self._changed:
            self._closed = True
            self._generation += 1
            self._changed.notify_all()

    def _read(
        self, next_offsets: dict[str, int], max_records: int, first: int
    ) -> tuple[list[Record], int]:
        """Records at or after ``next_offsets`` (topics round-robin from index ``first``), and
        the write generation they reflect."""
        topics = list(next_offsets)
        topics = topics[first:] + topics[:first]
        records: list[Record] = []
        with self._changed:
            for topic in topics:
                log = self._logs.get(topic, [])
                start = next_offsets[topic]
                records.extend(log[start : start + max_records - len(records)])
            return records, self._generation

    def _wait(self, generation: int, timeout_s: float) -> None:
        """Sleep until a write after ``generation``, or ``timeout_s``."""
        with self._changed:
            if self._generation == generation:
                self._changed.wait(timeout_s)


class InMemoryConsumer:
    """Reads partition 0 of each subscribed topic of an ``InMemoryBus``."""

    def __init__(self, bus: InMemoryBus, topics: list[str], start_offset: StartOffset) -> None:
        self._bus = bus
        self._next = {topic: check_start(topic, 0, start_offset(topic, 0)) for topic in topics}
        self._caught_up = False
        self._turn = 0
        self._closed = False

    def poll(self, max_records: int = 500, timeout_s: float = 0.1) -> list[Record]:
        """Up to ``max_records`` records; ``[]`` after waiting ``timeout_s`` if there are none."""
        check_poll(max_records, timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            if self._closed or self._bus._closed:
                raise BusClosedError("cannot poll: the consumer or its bus is closed")
            # Rotating the starting topic keeps a busy topic from starving the others.
            self._turn = (self._turn + 1) % len(self._next)
            records, generation = self._bus._read(self._next, max_records, self._turn)
            self._caught_up = not records
            if records:
                for record in records:
                    self._next[record.topic] = record.offset + 1
                return records
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self._bus._wait(generation, remaining)

    def assignment(self) -> list[tuple[str, int]]:
        """``(topic, 0)`` for each subscribed topic."""
        return [(topic, 0) for topic in self._next]

    def caught_up(self) -> bool:
        """Whether the last poll found nothing left to read."""
        return self._caught_up

    def close(self) -> None:
        """Stop reading."""
        self._closed = True
