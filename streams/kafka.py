"""The Kafka bus: the event topics on a real Kafka cluster, through kafka-python (DESIGN sections 2, 6).

Records are keyed by decision id and placed by Kafka's default murmur2 partitioner, so a decision and
its feedback share a partition number; consumers own every partition and read from caller-kept offsets.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as kafka_errors

from streams.bus import (
    BusClosedError,
    BusUnavailableError,
    Record,
    StartOffset,
    check_poll,
    check_record,
    check_start,
    check_subscription,
    publish_in_thread,
)
from streams.events import TOPIC_DEADLETTER, TOPIC_DECISIONS, TOPIC_FEEDBACK

log = logging.getLogger(__name__)

FETCH_MAX_WAIT_MS = 100
"""How long the broker may hold an empty fetch: the most a new record waits before a poll sees it."""


CLOCK_SKEW_S = 30.0
"""How far a broker's clock may lag ours: `KafkaBus.stored` searches from this long before."""


class OffsetOutOfRangeError(RuntimeError):
    """A consumer's next offset is not in its partition (the topic was recreated or data expired)."""


class KafkaBus:
    """A bus on Kafka: ``publish`` returns once every in-sync replica has the record (acks=all).

    The producer is idempotent, so retries neither duplicate nor reorder records of a partition.
    Clients connect lazily: the bus can be built while the broker is down, and after a failure it
    reconnects on the next call. ``publish`` raises ``BusUnavailableError`` within about
    ``request_timeout_s`` when the broker does not acknowledge. Topics are created on first use with
    ``partitions`` partitions (``topics`` at once, if the broker is up).
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        partitions: int = 8,
        replication_factor: int = 1,
        request_timeout_s: float = 5.0,
        client_id: str = "bandit-router",
        topics: Sequence[str] = (TOPIC_DECISIONS, TOPIC_FEEDBACK, TOPIC_DEADLETTER),
        metadata_refresh_s: float = 5.0,
    ) -> None:
        for name, count in {"partitions": partitions, "replication_factor": replication_factor}.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {count!r}")
        timeouts = {"request_timeout_s": request_timeout_s, "metadata_refresh_s": metadata_refresh_s}
        for name, seconds in timeouts.items():
            if not seconds > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {seconds!r}")
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.request_timeout_s = request_timeout_s
        self.metadata_refresh_s = metadata_refresh_s
        timeout_ms = int(request_timeout_s * 1000)
        self.client_config: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "client_id": client_id,
            "request_timeout_ms": timeout_ms,
            "bootstrap_timeout_ms": timeout_ms,
            "reconnect_backoff_max_ms": 1000,
        }
        self._lock = threading.RLock()  # guards the clients and the set of topics known to exist
        self._producer: Any = None
        self._admin: Any = None
        self._ready: set[str] = set()
        self._consumers: weakref.WeakSet[KafkaBusConsumer] = weakref.WeakSet()
        self._closed = False
        try:
            self.ensure_topics(topics)
        except BusUnavailableError as err:
            log.warning("%s; topics will be created on first use", err)

    def publish(self, topic: str, key: str, value: bytes) -> int:
        """Append one record; its offset in its partition once the broker acknowledged it."""
        return self.publish_many([(topic, key, value)])[0]

    async def publish_async(self, topic: str, key: str, value: bytes) -> int:
        """`publish` in a worker thread, which waits for the broker's acknowledgement."""
        return await publish_in_thread(self, topic, key, value)

    def publish_many(self, records: Sequence[tuple[str, str, bytes]]) -> list[int]:
        """Send every record, then wait for all acknowledgements; their offsets, in order.

        Not atomic across records: after ``BusUnavailableError`` its ``published`` leading records
        are stored, and some of the others may be.
        """
        for topic, key, value in records:
            check_record(topic, key, value)
        self._check_open()
        if not records:
            return []
        deadline = time.monotonic() + self.request_timeout_s + 1.0
        self.ensure_topics(topic for topic, _, _ in records)
        producer = self._connect_producer()
        offsets: list[int] = []
        sent_at = time.time()  # Kafka stamps each record with its send time, at or after this
        try:
            with self._translated(f"publishing {len(records)} record(s)", self._reset):
                futures = [producer.send(t, key=k.encode(), value=v) for t, k, v in records]
                for future in futures:
                    offsets.append(future.get(timeout=max(0.0, deadline - time.monotonic())).offset)
        except BusUnavailableError as err:
            err.published = len(offsets)  # the acknowledged prefix: a retry need not resend it
            err.sent_at = sent_at  # the rest may be stored too: `stored` tells
            raise
        return offsets

    def stored(self, records: Sequence[tuple[str, str, bytes]], since: float) -> list[bool]:
        """Whether each record is in its topic, searching from the first offset stamped at or after
        ``since`` minus `CLOCK_SKEW_S` (the broker's clock may stamp it) to the end of every
        partition of the records' topics, as of reading.

        Raises ``BusUnavailableError`` if the broker does not answer or the end is not reached
        within a few request timeouts.
        """
        self._check_open()
        keys = {key for _, key, _ in records}
        topics = sorted({topic for topic, _, _ in records})
        if not topics:
            return []
        counts = self.partition_counts(topics)
        found: set[tuple[str, str, bytes]] = set()
        with self._translated("looking for records whose acknowledgement was lost", lambda: None):
            reader = KafkaConsumer(
                **self.client_config,
                enable_auto_commit=False,
                auto_offset_reset="none",
                fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            )
            try:
                partitions = [TopicPartition(t, p) for t in topics for p in range(counts.get(t, 0))]
                stamp_ms = int(max(0.0, since - CLOCK_SKEW_S) * 1000)
                starts = reader.offsets_for_times({tp: stamp_ms for tp in partitions})
                # None: nothing stamped that late in that partition, so none of the records.
                todo = {tp: found_at.offset for tp, found_at in starts.items() if found_at is not None}
                reader.assign(list(todo))
                for tp, offset in todo.items():
                    reader.seek(tp, offset)
                deadline = time.monotonic() + 3 * self.request_timeout_s
                while todo:
                    if time.monotonic() > deadline:
                        raise BusUnavailableError(
                            f"Kafka at {self.bootstrap}: reading partitions {sorted(map(tuple, todo))}"
                            f" to their end took over {3 * self.request_timeout_s:g} s"
                        )
                    for raws in reader.poll(timeout_ms=200, max_records=1000).values():
                        read = map(_record, raws)
                        found.update((r.topic, r.key, r.value) for r in read if r.key in keys)
                    for tp in list(todo):
                        end = reader.highwater(tp)
                        if end is not None and reader.position(tp) >= end:
                            del todo[tp]
            finally:
                with contextlib.suppress(Exception):
                    reader.close(autocommit=False, timeout_ms=0)
        return [record in found for record in records]

    def ensure_topics(self, topics: Iterable[str]) -> None:
        """Create those of ``topics`` that do not exist yet, with ``partitions`` partitions each."""
        with self._lock:
            missing = [topic for topic in dict.fromkeys(topics) if topic not in self._ready]
            if not missing:
                return
            self._check_open()
            admin = self._connect_admin()
            with self._translated(f"creating topics {missing}", self._reset):
                spec = {"num_partitions": self.partitions, "replication_factor": self.replication_factor}
                answer = admin.create_topics({topic: spec for topic in missing}, raise_errors=False)
            for created in answer["topics"]:
                if created["error_code"] not in (0, kafka_errors.TopicAlreadyExistsError.errno):
                    error = kafka_errors.for_code(created["error_code"])(created["error_message"])
                    failure = f"Kafka refused to create topic {created['name']!r}: {error!r}"
                    raise BusUnavailableError(failure) if error.retriable else RuntimeError(failure)
            for topic, count in self.partition_counts(missing).items():
                if count != self.partitions:  # decisions and feedback share partitions only at equal counts
                    log.warning("topic %r has %d partitions, not %d", topic, count, self.partitions)
            self._ready.update(missing)

    def partition_counts(self, topics: Sequence[str]) -> dict[str, int]:
        """The number of partitions of each of ``topics`` that exists."""
        with self._lock:
            self._check_open()
            admin = self._connect_admin()
            with self._translated(f"describing topics {list(topics)}", self._reset):
                described = admin.describe_topics(list(topics))
        return {topic["name"]: len(topic["partitions"]) for topic in described if topic["error_code"] == 0}

    def consumer(self, topics: Sequence[str], group: str, start_offset: StartOffset) -> KafkaBusConsumer:
        """A consumer of every partition of ``topics``, from ``start_offset(topic, partition)``."""
        self._check_open()
        consumer = KafkaBusConsumer(self, check_subscription(topics), group, start_offset)
        self._consumers.add(consumer)
        return consumer

    def close(self) -> None:
        """Close the clients and every consumer of this bus; using them afterwards raises
        ``BusClosedError``."""
        with self._lock:
            self._closed = True
        for consumer in list(self._consumers):
            consumer.close()
        self._reset(self.request_timeout_s)

    @contextlib.contextmanager
    def _translated(self, doing: str, reset: Callable[[], None]) -> Iterator[None]:
        """Turn a client failure into ``BusUnavailableError`` after ``reset`` drops the client."""
        try:
            yield
        except (kafka_errors.MessageSizeTooLargeError, kafka_errors.KafkaConfigurationError):
            raise  # the record or the settings are at fault, not the broker: retrying cannot help
        except kafka_errors.KafkaError as err:
            reset()
            raise BusUnavailableError(f"Kafka at {self.bootstrap} failed while {doing}: {err!r}") from err

    def _connect_admin(self) -> Any:
        with self._lock:
            if self._admin is None:
                with self._translated("connecting", self._reset):
                    self._admin = KafkaAdminClient(**self.client_config)
            return self._admin

    def _connect_producer(self) -> Any:
        with self._lock:
            self._check_open()
            if self._producer is None:
                timeout_ms = self.client_config["request_timeout_ms"]
                with self._translated("connecting", self._reset):
                    self._producer = KafkaProducer(
                        **self.client_config,
                        acks="all",
                        enable_idempotence=True,
                        allow_auto_create_topics=False,  # the broker's default partition count may differ
                        linger_ms=0,
                        max_block_ms=timeout_ms,  # bounds waiting for metadata while the broker is down
                        delivery_timeout_ms=timeout_ms,
                    )
            return self._producer

    def _reset(self, timeout_s: float = 0.0) -> None:
        """Drop the clients and the known topics, so the next call reconnects and checks again."""
        with self._lock:
            producer, admin = self._producer, self._admin
            self._producer = self._admin = None
            self._ready.clear()
        # A client's own error is the one to report, not a failure to close it.
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.close(timeout=timeout_s)
        if admin is not None:
            with contextlib.suppress(Exception):
                admin.close()

    def _check_open(self) -> None:
        if self._closed:
            raise BusClosedError("the KafkaBus is closed")


class KafkaBusConsumer:
    """Reads every partition of its topics, assigned by hand (no group rebalancing, no commits).

    Every ``metadata_refresh_s`` a poll picks up partitions that appeared since (a topic created
    later, or while the broker was down). A next offset outside its partition raises
    ``OffsetOutOfRangeError`` instead of silently skipping or re-reading records.
    """

    def __init__(self, bus: KafkaBus, topics: list[str], group: str, start_offset: StartOffset) -> None:
        self._bus = bus
        self._topics = topics
        self._group = group
        self._start_offset = start_offset
        self._next: dict[TopicPartition, int] = {}
        self._kafka: Any = None
        self._refresh_due = 0.0
        self._closed = False
        self._refresh()

    def poll(self, max_records: int = 500, timeout_s: float = 0.1) -> list[Record]:
        """Up to ``max_records`` records, in offset order per partition; ``[]`` after ``timeout_s``."""
        check_poll(max_records, timeout_s)
        self._check_open()
        deadline = time.monotonic() + timeout_s
        if time.monotonic() >= self._refresh_due:
            self._refresh()
        if self._kafka is None or not self._next:
            time.sleep(max(0.0, deadline - time.monotonic()))
            return []
        while True:
            remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
            try:
                batch = self._kafka.poll(timeout_ms=remaining_ms, max_records=max_records)
            except kafka_errors.OffsetOutOfRangeError as err:
                tp, offset = next(iter(err.args[0].items()))
                why = "the broker holds no such offset"
                raise OffsetOutOfRangeError(_out_of_range(tp, offset, why)) from err
            except kafka_errors.KafkaError as err:  # the next refresh reconnects, at the same offsets
                log.warning("Kafka at %s failed while polling: %r", self._bus.bootstrap, err)
                self._drop()
                return []
            records = [_record(raw) for partition in batch.values() for raw in partition]
            for record in records:
                self._next[TopicPartition(record.topic, record.partition)] = record.offset + 1
            self._check_high_water()
            if records or time.monotonic() >= deadline:
                return records

    def assignment(self) -> list[tuple[str, int]]:
        """The (topic, partition) pairs read, by subscription order then partition."""
        pairs = sorted(self._next, key=lambda tp: (self._topics.index(tp.topic), tp.partition))
        return [(tp.topic, tp.partition) for tp in pairs]

    def caught_up(self) -> bool:
        """Whether every partition's next offset is at its end as of the last fetch (False for a
        partition not fetched yet)."""
        if self._kafka is None or not self._next:
            return False
        for tp, offset in self._next.items():
            end = self._kafka.highwater(tp)
            if end is None or offset < end:
                return False
        return True

    def close(self) -> None:
        """Stop reading (nothing to commit: the caller keeps the offsets)."""
        self._closed = True
        self._drop()

    def _refresh(self) -> None:
        """Assign new partitions at their start offsets; reconnect if the client was dropped."""
        self._refresh_due = time.monotonic() + self._bus.metadata_refresh_s
        try:
            self._bus.ensure_topics(self._topics)
            counts = self._bus.partition_counts(self._topics)
            with self._bus._translated("assigning partitions", self._drop):
                fresh = self._kafka is None
                kafka = self._connect()
                found = [TopicPartition(t, p) for t in self._topics for p in range(counts.get(t, 0))]
                new = [tp for tp in found if tp not in self._next]
                if not (new or fresh):
                    return
                wanted = dict(self._next)
                for topic, partition in new:
                    start = check_start(topic, partition, self._start_offset(topic, partition))
                    wanted[TopicPartition(topic, partition)] = start
                # An offset before the partition's start fails the fetch (auto_offset_reset="none");
                # one past its end is caught by _check_high_water.
                kafka.assign(list(wanted))  # a new client starts unassigned, with no positions
                for tp, offset in wanted.items():
                    kafka.seek(tp, offset)
                self._next = wanted
        except BusUnavailableError as err:
            log.warning("%s; consumer retries in %.1f s", err, self._bus.metadata_refresh_s)

    def _check_high_water(self) -> None:
        """Refuse a next offset past a partition's end, as the last fetch reported it (some brokers
        answer such a fetch with no records instead of an out-of-range error)."""
        for tp, offset in self._next.items():
            end = self._kafka.highwater(tp)
            if end is not None and offset > end:
                raise OffsetOutOfRangeError(_out_of_range(tp, offset, f"the partition ends at offset {end}"))

    def _connect(self) -> Any:
        if self._kafka is None:
            self._kafka = KafkaConsumer(
                **self._bus.client_config,
                group_id=self._group,
                allow_auto_create_topics=False,
                enable_auto_commit=False,  # offsets live in the caller's database (DESIGN section 6)
                auto_offset_reset="none",  # never skip or re-read silently
                fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            )
        return self._kafka

    def _drop(self) -> None:
        kafka, self._kafka = self._kafka, None
        if kafka is not None:
            with contextlib.suppress(Exception):
                kafka.close(autocommit=False, timeout_ms=0)

    def _check_open(self) -> None:
        if self._closed or self._bus._closed:
            raise BusClosedError("cannot poll: the consumer or its KafkaBus is closed")


def _out_of_range(tp: TopicPartition, offset: int, why: str) -> str:
    return (
        f"next offset {offset} of topic {tp.topic!r} partition {tp.partition} is out of range: {why}."
        " The topic was probably recreated or its records expired, so the stored offsets no longer"
        " match it; nothing was skipped"
    )


def _record(raw: Any) -> Record:
    """A kafka-python ``ConsumerRecord`` as a ``Record``; a missing key or value reads as empty."""
    key = raw.key.decode("utf-8", errors="replace") if raw.key is not None else ""
    value = raw.value if raw.value is not None else b""
    return Record(raw.topic, raw.partition, raw.offset, key, value, raw.timestamp / 1000.0)
