"""The embedded bus: a durable append-only log table in the service's SQLite database.

Each topic reads like one partition (0) whose offsets are the table's primary key, so an event is on
disk before its HTTP answer is sent, and the learner reads it back by offset (DESIGN section 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.engine import URL, Row, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool

from streams.bus import (
    BusClosedError,
    Record,
    StartOffset,
    check_poll,
    check_record,
    check_start,
    check_subscription,
)

metadata = MetaData()

# Only the Alembic migrations in migrations/ create this table; this definition must match them.
EVENT_LOG = Table(
    "event_log",
    metadata,
    Column("offset", Integer, primary_key=True, autoincrement=True),
    Column("topic", String(200), nullable=False),
    Column("key", String(200), nullable=False),
    Column("value", LargeBinary, nullable=False),
    Column("ts", Float, nullable=False),
    Index("ix_event_log_topic_offset", "topic", "offset"),
    Index("ix_event_log_key", "key"),
)

POLL_STEP_S = 0.01
"""How long an idle poll sleeps between checks for other processes' writes (a cheap
``PRAGMA data_version``; the table is read again only when it changed)."""


def sqlite_engine(url: str, *, busy_timeout_ms: int = 5000) -> Engine:
    """An engine for a SQLite URL with WAL journaling, ``synchronous=NORMAL`` and a busy timeout.

    The trade-off: in WAL mode with ``synchronous=NORMAL`` a commit appends to the write-ahead log
    without an fsync (the log is synced at checkpoints), so commits take microseconds instead of
    an fsync each. A committed transaction is in the operating system's page cache when
    ``commit`` returns, so it survives the process being killed (SIGKILL, OOM kill, crash) but
    not a power cut or kernel panic, which may lose the last commits (never corrupting the file).
    The busy timeout makes a writer wait for another writer's lock instead of failing at once.
    An in-memory URL (``sqlite://``) gets one shared connection and is not durable.

    >>> engine = sqlite_engine("sqlite://")
    >>> with engine.connect() as conn:
    ...     conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
    5000
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        raise ValueError(f"sqlite_engine needs a sqlite:// URL, got {parsed.render_as_string()!r}")
    in_memory = _in_memory(parsed)
    options: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    if in_memory:
        options["poolclass"] = StaticPool  # every connection must see the same memory database
    engine = create_engine(parsed, **options)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            if not in_memory:
                mode = cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise RuntimeError(
                        f"SQLite refused WAL journaling for {parsed.database!r} (got {mode!r});"
                        " use a database file on a local file system"
                    )
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        finally:
            cursor.close()

    return engine


class EmbeddedBus:
    """A bus whose log is the ``event_log`` table; ``publish`` returns after the commit.

    The offset is the row's primary key: global across topics, strictly increasing within a
    topic, with gaps. SQLite serialises writers, so rows become visible in offset order and a
    reader that has seen offset ``n`` never later finds a new row below ``n``. That is why this
    bus only runs on SQLite. Rows must never be deleted from the end of the log: SQLite would
    then reuse their offsets. Every consumer reads all of its topics (``group`` does not split).

    ``publish`` commits in the caller's thread. ``publish_async`` is group-committed: a writer
    thread takes every write queued while it committed the previous ones, commits them in one
    transaction and then wakes each event loop once for all of its writes. Under concurrent
    requests one commit serves many of them, and an event loop never waits for SQLite; every
    write is still committed before it is acknowledged.

    >>> import tempfile
    >>> bus = EmbeddedBus(sqlite_engine(f"sqlite:///{tempfile.mkdtemp()}/bus.db"))
    >>> metadata.create_all(bus.engine)  # tests only: migrations create the table
    >>> bus.publish_many([("router.decisions", "d1", b"{}"), ("router.feedback", "d1", b"{}")])
    [1, 2]
    >>> asyncio.run(bus.publish_async("router.decisions", "d2", b"{}"))
    3
    >>> [r.topic for r in bus.find("router.feedback", "d1")]
    ['router.feedback']
    >>> bus.close()
    """

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        if engine.dialect.name != "sqlite":
            raise ValueError(
                f"EmbeddedBus needs a SQLite engine, got {engine.dialect.name!r}: other databases"
                " can commit primary keys out of order, which would make consumers skip records"
            )
        if _in_memory(engine.url):
            raise ValueError(
                "EmbeddedBus needs a SQLite database file: an in-memory database is not durable"
                " and shares one connection between threads; use InMemoryBus in unit tests"
            )
        self.engine = engine
        self._clock = clock
        # The hot path (one publish per routed request) writes through one DBAPI connection with
        # SQL compiled once from EVENT_LOG: per-commit SQLAlchemy overhead (pool checkout, cache
        # lookups) cost about 3x the SQLite work itself. SQLite serialises writers anyway.
        columns = [EVENT_LOG.c.topic, EVENT_LOG.c.key, EVENT_LOG.c.value, EVENT_LOG.c.ts]
        compiled = (
            insert(EVENT_LOG)
            .values({column: bindparam(column.name) for column in columns})
            .compile(dialect=engine.dialect)
        )
        self._insert_sql = compiled.string
        self._insert_order = list(compiled.positiontup or ())
        self._writer: Any = None  # the DBAPI connection, used under _write_lock
        self._write_lock = threading.Lock()
        self._queue: list[_Write] = []  # publish_async's writes, for the writer thread
        self._queued = threading.Condition()
        self._writer_thread: threading.Thread | None = None  # started by the first write
        # In-process publishes wake idle pollers at once; other processes are seen within a step.
        self._changed = threading.Condition()
        self._generation = 0
        self._closed = False

    def publish(self, topic: str, key: str, value: bytes) -> int:
        """Append one record and commit; returns its offset."""
        return self.publish_many([(topic, key, value)])[0]

    def publish_many(self, records: Sequence[tuple[str, str, bytes]]) -> list[int]:
        """Append records in one transaction; returns their offsets in order."""
        for topic, key, value in records:
            check_record(topic, key, value)
        if not records:
            self._check_open()
            return []
        with self._write_lock:  # a thread may wait for the commit itself: no hand-off
            self._check_open()
            offsets = self._commit([list(records)])[0]
        self._notify()
        return offsets

    async def publish_async(self, topic: str, key: str, value: bytes) -> int:
        """`publish` for a coroutine: the event loop runs on while the writer thread commits."""
        check_record(topic, key, value)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[list[int]] = loop.create_future()
        self._submit(_Write([(topic, key, value)], answer, loop))
        return (await answer)[0]

    def _submit(self, write: _Write) -> None:
        with self._queued:
            self._check_open()
            self._queue.append(write)
            if self._writer_thread is None:
                self._writer_thread = threading.Thread(
                    target=self._write_loop, name="bandit-router-event-log", daemon=True
                )
                self._writer_thread.start()
            self._queued.notify()

    def _write_loop(self) -> None:
        """Commit whatever coroutines queued, in one transaction, until the bus closes and the
        queue is empty."""
        while True:
            with self._queued:
                while not self._queue and not self._closed:
                    self._queued.wait()
                if not self._queue:
                    return
                writes, self._queue = self._queue, []
            outcomes: list[list[int] | BaseException]
            with self._write_lock:
                try:
                    outcomes = list(self._commit([write.records for write in writes]))
                except BaseException as error:
                    if len(writes) == 1:
                        outcomes = [error]
                    else:  # one write's bad record must not fail the others: each on its own
                        outcomes = []
                        for write in writes:
                            try:
                                outcomes.append(self._commit([write.records])[0])
                            except BaseException as single_error:
                                outcomes.append(single_error)
            self._notify()
            _answer(writes, outcomes)

    def _commit(self, writes: Sequence[Sequence[tuple[str, str, bytes]]]) -> list[list[int]]:
        """Insert every write's records in one transaction; each write's offsets. The caller
        holds ``_write_lock``."""
        if self._writer is None:
            self._writer = self.engine.raw_connection()
        ts = self._clock()
        cursor = self._writer.cursor()
        try:
            offsets = []
            for records in writes:
                written = []
                for topic, key, value in records:
                    row: dict[str, Any] = {"topic": topic, "key": key, "value": value, "ts": ts}
                    cursor.execute(self._insert_sql, [row[name] for name in self._insert_order])
                    written.append(int(cursor.lastrowid))
                offsets.append(written)
            self._writer.commit()
            return offsets
        except BaseException as err:
            self._discard_writer()
            dbapi_error = self.engine.dialect.loaded_dbapi.Error
            if isinstance(err, dbapi_error):
                # The same exception types SQLAlchemy raises everywhere else.
                raise DBAPIError.instance(self._insert_sql, None, err, dbapi_error) from err
            raise
        finally:
            cursor.close()

    def find(self, topic: str, key: str) -> list[Record]:
        """Every record of ``topic`` with ``key``, in offset order (e.g. a decision by its id)."""
        self._check_open()
        query = (
            select(EVENT_LOG)
            .where(EVENT_LOG.c.topic == topic, EVENT_LOG.c.key == key)
            .order_by(EVENT_LOG.c.offset)
        )
        with self.engine.connect() as conn:
            return [_record(row) for row in conn.execute(query)]

    def stored(self, records: Sequence[tuple[str, str, bytes]], since: float) -> list[bool]:
        """Whether each record is in the log (looked up by key; ``since`` is not needed: a write
        here is one transaction, so it is never in doubt, but the `Bus` interface asks)."""
        return [any(r.value == value for r in self.find(topic, key)) for topic, key, value in records]

    def consumer(
        self, topics: Sequence[str], group: str, start_offset: StartOffset
    ) -> EmbeddedConsumer:
        """A consumer of ``topics`` from ``start_offset(topic, 0)``."""
        self._check_open()
        return EmbeddedConsumer(self, check_subscription(topics), start_offset)

    def close(self) -> None:
        """Commit the writes already queued, refuse further use and wake idle pollers. The
        engine belongs to the caller."""
        with self._queued:
            self._closed = True
            self._queued.notify()
            writer_thread = self._writer_thread
        if writer_thread is not None and writer_thread is not threading.current_thread():
            writer_thread.join()
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()  # back to the engine's pool
                self._writer = None
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def _discard_writer(self) -> None:
        """Drop the writer after a failed write: its transaction state is unknown."""
        writer, self._writer = self._writer, None
        # The write's own error is the one to report, not a failure to clean up after it.
        with contextlib.suppress(Exception):
            writer.rollback()
        with contextlib.suppress(Exception):
            writer.close()

    def _check_open(self) -> None:
        if self._closed:
            raise BusClosedError("the EmbeddedBus is closed")

    def _notify(self) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def _generation_now(self) -> int:
        with self._changed:
            return self._generation

    def _wait(self, generation: int, timeout_s: float) -> None:
        with self._changed:
            if self._generation == generation and not self._closed:
                self._changed.wait(timeout_s)


class EmbeddedConsumer:
    """Reads the ``event_log`` rows of its topics, keeping its next offsets in memory only."""

    def __init__(self, bus: EmbeddedBus, topics: list[str], start_offset: StartOffset) -> None:
        self._bus = bus
        self._next = {topic: check_start(topic, 0, start_offset(topic, 0)) for topic in topics}
        self._caught_up = False
        self._closed = False
        self._watch: Any = None  # a DBAPI connection that only asks for PRAGMA data_version

    def poll(self, max_records: int = 500, timeout_s: float = 0.1) -> list[Record]:
        """Up to ``max_records`` records in offset order; ``[]`` after ``timeout_s`` if none."""
        check_poll(max_records, timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            if self._closed or self._bus._closed:
                raise BusClosedError("cannot poll: the consumer or its bus is closed")
            # Both are taken before the read, so any commit after it changes one of them.
            generation, version = self._bus._generation_now(), self._data_version()
            records = self._read(max_records)
            self._caught_up = not records
            if records:
                for record in records:
                    self._next[record.topic] = record.offset + 1
                return records
            # Idle: wait for a publish in this process, looking every step for a commit by any
            # other connection; reading the table each step cost the idle server ~8% of a core.
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._bus._wait(generation, min(POLL_STEP_S, remaining))
                if self._closed or self._bus._generation_now() != generation:
                    break
                if self._data_version() != version:
                    break

    def assignment(self) -> list[tuple[str, int]]:
        """``(topic, 0)`` for each subscribed topic."""
        return [(topic, 0) for topic in self._next]

    def caught_up(self) -> bool:
        """Whether the last poll found nothing left to read."""
        return self._caught_up

    def close(self) -> None:
        """Stop reading."""
        self._closed = True
        watch, self._watch = self._watch, None
        if watch is not None:
            with contextlib.suppress(Exception):  # closing must not fail on a broken connection
                watch.close()  # back to the engine's pool

    def _data_version(self) -> int:
        """SQLite's ``PRAGMA data_version`` on this consumer's own connection: it changes
        whenever another connection (another process, or this one's writer) commits."""
        if self._watch is None:
            self._watch = self._bus.engine.raw_connection()
        cursor = self._watch.cursor()
        try:
            return int(cursor.execute("PRAGMA data_version").fetchone()[0])
        finally:
            cursor.close()

    def _read(self, max_records: int) -> list[Record]:
        # One ordered index range per topic, each stopping after max_records, then a merge: a
        # single OR query would make SQLite collect and sort the whole remainder of the log.
        offset = EVENT_LOG.c.offset
        rows: list[Row[Any]] = []
        with self._bus.engine.connect() as conn:
            for topic, next_offset in self._next.items():
                query = (
                    select(EVENT_LOG)
                    .where(EVENT_LOG.c.topic == topic, offset >= next_offset)
                    .order_by(offset)
                    .limit(max_records)
                )
                rows.extend(conn.execute(query))
        if len(self._next) > 1:
            rows.sort(key=lambda row: row.offset)
        return [_record(row) for row in rows[:max_records]]


class _Write:
    """Records a coroutine waits on: committed together, offsets into ``answer`` on ``loop``."""

    __slots__ = ("records", "answer", "loop")

    def __init__(
        self,
        records: list[tuple[str, str, bytes]],
        answer: asyncio.Future[list[int]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.records = records
        self.answer = answer
        self.loop = loop


def _answer(writes: list[_Write], outcomes: Sequence[list[int] | BaseException]) -> None:
    """Give each write its offsets or its error, with one wake-up of each event loop."""
    by_loop: dict[
        asyncio.AbstractEventLoop,
        list[tuple[asyncio.Future[list[int]], list[int] | BaseException]],
    ] = {}
    for write, outcome in zip(writes, outcomes, strict=True):
        by_loop.setdefault(write.loop, []).append((write.answer, outcome))
    for loop, answers in by_loop.items():
        # A closed loop has nobody left waiting.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, answers)


def _settle(answers: list[tuple[asyncio.Future[list[int]], list[int] | BaseException]]) -> None:
    """On the event loop: resolve the awaiting futures, skipping cancelled requests."""
    for answer, outcome in answers:
        if answer.cancelled():
            continue
        if isinstance(outcome, BaseException):
            answer.set_exception(outcome)
        else:
            answer.set_result(outcome)


def _in_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or "mode=memory" in url.render_as_string()


def _record(row: Row[Any]) -> Record:
    return Record(
        topic=row.topic,
        partition=0,
        offset=int(row.offset),
        key=row.key,
        value=bytes(row.value),
        ts=float(row.ts),
    )
