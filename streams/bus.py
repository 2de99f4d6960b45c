"""The event bus interface: publish keyed records durably, read them back by offset.

Consumers never commit offsets to the bus: the caller passes the next offset to read per partition
and stores its progress in its own database, in one transaction with its state (DESIGN section 6).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Record:
    """One record read from a topic partition; ``ts`` is when the bus accepted it (unix seconds)."""

    topic: str
    partition: int
    offset: int
    key: str
    value: bytes
    ts: float


StartOffset = Callable[[str, int], int]
"""``start_offset(topic, partition)``: the next offset to read, from the caller's own store."""


class BusClosedError(RuntimeError):
    """A bus or consumer was used after ``close()``."""


class BusUnavailableError(RuntimeError):
    """The bus could not take a write in time (e.g. the broker is down).

    ``published`` leading records of the write were acknowledged (stored). If ``sent_at`` is set,
    the rest were handed to the broker from that time (wall clock, seconds) on and any of them may
    have been stored: a caller that keeps them for a retry asks `Bus.stored` first, or accepts
    duplicates. With ``sent_at`` None none of the rest was sent. The same bus works again once the
    broker is back.
    """

    def __init__(self, message: str, published: int = 0, sent_at: float | None = None) -> None:
        super().__init__(message)
        self.published = published
        self.sent_at = sent_at


class Consumer(Protocol):
    """Reads the partitions assigned to it, from the offsets its caller chose."""

    def poll(self, max_records: int = 500, timeout_s: float = 0.1) -> list[Record]:
        """Up to ``max_records`` records of assigned partitions, in offset order per partition.

        Waits up to ``timeout_s`` when nothing is there and then returns ``[]``.
        """
        ...

    def assignment(self) -> list[tuple[str, int]]:
        """The (topic, partition) pairs this consumer reads."""
        ...

    def caught_up(self) -> bool:
        """Whether the records polled so far reach the end of every assigned partition, as far as
        the consumer knows (a networked consumer may only know it as of its last fetch)."""
        ...

    def close(self) -> None:
        """Stop reading; polling afterwards raises ``BusClosedError``."""
        ...


class Bus(Protocol):
    """A durable, partitioned, append-only log of keyed records."""

    def publish(self, topic: str, key: str, value: bytes) -> int:
        """Append one record and return its offset; it is durable when this returns.

        A networked bus raises ``BusUnavailableError`` when it cannot store the record in time.
        """
        ...

    async def publish_async(self, topic: str, key: str, value: bytes) -> int:
        """`publish` for a coroutine (an API request): durable when it returns, and the event
        loop is not blocked meanwhile. A bus without a native one uses `publish_in_thread`."""
        ...

    def publish_many(self, records: Sequence[tuple[str, str, bytes]]) -> list[int]:
        """Append ``(topic, key, value)`` records in one durable write; their offsets, in order."""
        ...

    def consumer(self, topics: Sequence[str], group: str, start_offset: StartOffset) -> Consumer:
        """A consumer of ``topics`` starting at ``start_offset(topic, partition)`` per partition."""
        ...

    def stored(self, records: Sequence[tuple[str, str, bytes]], since: float) -> list[bool]:
        """Whether the log holds each ``(topic, key, value)`` record, for records sent at or after
        ``since`` (wall clock) whose acknowledgement was lost: a retry then resends only the others.
        """
        ...

    def close(self) -> None:
        """Release the bus's resources; using it or its consumers afterwards raises
        ``BusClosedError``."""
        ...


async def publish_in_thread(bus: Bus, topic: str, key: str, value: bytes) -> int:
    """The plain `Bus.publish_async`: the blocking ``publish`` in a worker thread."""
    return await asyncio.to_thread(bus.publish, topic, key, value)


def check_record(topic: str, key: str, value: bytes) -> None:
    """Reject a record no adapter can store, with a message saying which part is wrong."""
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"topic must be a non-empty string, got {topic!r}")
    if not isinstance(key, str):
        raise TypeError(f"key must be a string (a decision id), got {type(key).__name__}")
    if not isinstance(value, bytes):
        raise TypeError(f"value must be bytes (an encoded event), got {type(value).__name__}")


def check_subscription(topics: Sequence[str]) -> list[str]:
    """The distinct topics of a subscription, in the given order; at least one is required."""
    if isinstance(topics, str):
        raise TypeError(f"topics must be a sequence of topic names, not the string {topics!r}")
    distinct = list(dict.fromkeys(topics))
    if not distinct:
        raise ValueError("a consumer needs at least one topic")
    for topic in distinct:
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"topic must be a non-empty string, got {topic!r}")
    return distinct


def check_start(topic: str, partition: int, offset: int) -> int:
    """The caller's start offset for a partition, which must be a non-negative integer."""
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(
            f"start_offset({topic!r}, {partition}) returned {offset!r}; it must be the next offset"
            " to read, an integer >= 0 (0 reads from the beginning)"
        )
    return offset


def check_poll(max_records: int, timeout_s: float) -> None:
    """Reject a nonsensical poll request."""
    if max_records < 1:
        raise ValueError(f"max_records must be >= 1, got {max_records}")
    if not timeout_s >= 0:
        raise ValueError(f"timeout_s must be >= 0, got {timeout_s}")
