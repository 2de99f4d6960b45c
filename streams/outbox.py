"""The durable outbox: a bus wrapper that keeps events in a database table while the real bus
(Kafka) is unreachable, and forwards them, oldest first, once it answers again.

`/v1/route` therefore keeps answering during a broker outage without losing an event: a record is
either acknowledged by the inner bus or committed to the ``outbox`` table before ``publish``
returns. While the table holds records, new ones queue behind them, so the order of the events
of one service is kept across an outage. The same table carries records other code commits in its
own transaction (the learner's dead letters: `outbox_rows`), which the flusher forwards as well.

A write whose acknowledgement is lost (the broker stored it, then the connection failed) leaves
its rows marked with the time it was sent; before sending them again the flusher looks them up in
the bus (`Bus.stored`) and skips those already there, so they reach it once. One case stays at
least once: a process that dies between the broker's acknowledgement and the rows' deletion sends
them again on restart. The learner ignores a decision or feedback it has already seen (by id), so
each is still applied exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    LargeBinary,
    String,
    Table,
    case,
    delete,
    func,
    insert,
    select,
    update,
)

from streams.bus import Bus, BusUnavailableError, Consumer, StartOffset, check_record
from streams.embedded import metadata

log = logging.getLogger(__name__)

# Only the Alembic migrations in migrations/ create this table; this definition must match them.
OUTBOX = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("topic", String(200), nullable=False),
    Column("key", String(200), nullable=False),
    Column("value", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    # Set when a write of the record may have reached the bus without being acknowledged: the
    # wall-clock time it was sent from. The flusher asks the bus before sending it again.
    Column("doubt_since", Float, nullable=True),
)

NOT_YET_PUBLISHED = -1
"""The offset `OutboxBus.publish` returns for a record it kept in the outbox."""

FLUSH_BATCH = 100  # records per write to the bus
RETRY_S = 1.0


def outbox_rows(
    records: Sequence[tuple[str, str, bytes]], now: float, doubt_since: float | None = None
) -> list[dict[str, Any]]:
    """Rows for ``insert(OUTBOX)``, for code that queues records in its own transaction."""
    for topic, key, value in records:
        check_record(topic, key, value)
    return [
        {"topic": topic, "key": key, "value": value, "created_at": now, "doubt_since": doubt_since}
        for topic, key, value in records
    ]


class OutboxBus:
    """A `Bus` that never loses a record when its inner bus is down.

    ``publish`` tries the inner bus; on `BusUnavailableError` the records go to the outbox table
    (committed before ``publish`` returns) and a background thread retries every ``retry_s``.
    Reading is the inner bus's job: `consumer` is passed through.

    >>> import tempfile
    >>> from streams.embedded import sqlite_engine
    >>> from streams.memory import InMemoryBus
    >>> engine = sqlite_engine(f"sqlite:///{tempfile.mkdtemp()}/outbox.db")
    >>> metadata.create_all(engine)  # tests only: migrations create the table
    >>> bus = OutboxBus(InMemoryBus(), engine)
    >>> bus.publish("router.decisions", "d1", b"{}")  # the inner bus is up: its offset
    0
    >>> bus.status()["state"]
    'ok'
    >>> bus.close()
    """

    def __init__(
        self,
        inner: Bus,
        engine: Engine,
        *,
        retry_s: float = RETRY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.inner = inner
        self.engine = engine
        self._retry_s = retry_s
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last_error: str | None = None
        self.forwarded_total = 0
        # Records left by an earlier run (or queued by the learner) go out before anything new.
        self._backlog = self.pending() > 0
        self._flusher = threading.Thread(target=self._run, name="bandit-router-outbox", daemon=True)
        self._flusher.start()

    # --- Bus ---------------------------------------------------------------------------------------
    def publish(self, topic: str, key: str, value: bytes) -> int:
        """The inner bus's offset, or `NOT_YET_PUBLISHED` if the record waits in the outbox."""
        return self.publish_many([(topic, key, value)])[0]

    async def publish_async(self, topic: str, key: str, value: bytes) -> int:
        """`publish` for a coroutine: the inner bus's ``publish_async``; if it is down, the
        outbox insert runs in a worker thread."""
        kept: Sequence[tuple[str, str, bytes]] = [(topic, key, value)]
        doubt_since = None
        if not self._backlog:
            try:
                return await self.inner.publish_async(topic, key, value)
            except BusUnavailableError as error:
                self._note_outage(error)
                kept, doubt_since = kept[error.published :], error.sent_at
        await asyncio.to_thread(self._keep, kept, doubt_since)
        return NOT_YET_PUBLISHED

    def publish_many(self, records: Sequence[tuple[str, str, bytes]]) -> list[int]:
        """Publish through the inner bus, or keep the records in the outbox if it is down."""
        kept, doubt_since = records, None
        if not self._backlog:
            try:
                return self.inner.publish_many(records)
            except BusUnavailableError as error:
                self._note_outage(error)
                # The acknowledged prefix is stored; the rest may be (``sent_at``).
                kept, doubt_since = records[error.published :], error.sent_at
        self._keep(kept, doubt_since)
        return [NOT_YET_PUBLISHED] * len(records)

    def _keep(self, records: Sequence[tuple[str, str, bytes]], doubt_since: float | None) -> None:
        """Commit ``records`` to the outbox table, behind any already waiting there
        (``doubt_since``: when they may have been sent, as `outbox_rows` takes it)."""
        with self._lock:
            with self.engine.begin() as connection:
                connection.execute(insert(OUTBOX), outbox_rows(records, self._clock(), doubt_since))
            self._backlog = True
        self._wake.set()

    def consumer(self, topics: Sequence[str], group: str, start_offset: StartOffset) -> Consumer:
        return self.inner.consumer(topics, group, start_offset)

    def stored(self, records: Sequence[tuple[str, str, bytes]], since: float) -> list[bool]:
        return self.inner.stored(records, since)

    def close(self) -> None:
        """Stop the flusher (records still queued stay in the table) and close the inner bus."""
        self._stop.set()
        self._wake.set()
        self._flusher.join(timeout=30)
        self.inner.close()

    # --- state -------------------------------------------------------------------------------------
    def pending(self) -> int:
        """How many records wait in the outbox."""
        with self.engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(OUTBOX)) or 0)

    def status(self) -> dict[str, Any]:
        """``{"state": "ok" | "degraded", "pending": n, "error": last failure or None}``."""
        pending = self.pending()
        degraded = self._backlog and (pending > 0 or self._last_error is not None)
        return {
            "state": "degraded" if degraded else "ok",
            "pending": pending,
            "error": self._last_error if degraded else None,
        }

    def notify(self) -> None:
        """Records were committed to the outbox by someone else: forward them soon."""
        self._backlog = True
        self._wake.set()

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until the outbox is empty (True) or ``timeout_s`` passes (False)."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        while self._backlog and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._backlog

    # --- the flusher -------------------------------------------------------------------------------
    def _note_outage(self, error: Exception) -> None:
        if self._last_error is None:
            log.warning("the bus is unreachable, keeping events in the outbox: %s", error)
        self._last_error = str(error)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._retry_s)
            self._wake.clear()
            while self._backlog and not self._stop.is_set():
                try:
                    if not self._forward_batch():
                        break
                except BusUnavailableError as error:
                    self._note_outage(error)
                    break
                except Exception:  # a database hiccup: keep the rows, try again later
                    log.exception("forwarding the outbox failed; retrying in %.1fs", self._retry_s)
                    break

    def _forward_batch(self) -> bool:
        """Send the oldest records, then delete them; False once the outbox is empty.

        On Postgres the rows stay locked (other replicas' flushers skip them) from the read to
        the delete. On SQLite the delete is a second transaction: a WAL read transaction cannot
        turn into a write once another connection has written, and the inner bus may be the
        embedded log in this very file.
        """
        one_transaction = self.engine.dialect.name == "postgresql"
        with self.engine.begin() as connection:
            rows = _lock_oldest(connection, FLUSH_BATCH)
            if not rows:
                return self._drained(connection)
            if one_transaction:
                outcome = self._send(rows)
                outcome.settle(connection)
        if not one_transaction:
            outcome = self._send(rows)
            with self.engine.begin() as connection:
                outcome.settle(connection)
        self.forwarded_total += len(outcome.stored)
        if outcome.failure is not None:
            raise outcome.failure
        return True

    def _send(self, rows: list[Any]) -> _Sent:
        """Get ``rows`` into the inner bus, in order.

        Rows in doubt (an earlier write of them failed after it was sent) are looked up in the
        bus first, and those found are not sent again: a record whose acknowledgement was lost
        reaches the bus once.
        """
        records = [(row.topic, row.key, bytes(row.value)) for row in rows]
        outcome = _Sent()
        try:
            doubtful = [i for i, row in enumerate(rows) if row.doubt_since is not None]
            if doubtful:
                since = min(rows[i].doubt_since for i in doubtful)
                found = self.inner.stored([records[i] for i in doubtful], since)
                landed = {i for i, stored in zip(doubtful, found, strict=True) if stored}
                outcome.stored += [rows[i] for i in sorted(landed)]
                if landed:
                    log.info("%d outbox record(s) had reached the bus already", len(landed))
                rows = [row for i, row in enumerate(rows) if i not in landed]
                records = [record for i, record in enumerate(records) if i not in landed]
            self.inner.publish_many(records)
        except BusUnavailableError as error:
            self._note_outage(error)
            outcome.failure = error
            outcome.stored += rows[: error.published]
            if error.sent_at is not None:  # (a failed lookup sent nothing: the doubt stays)
                outcome.doubted, outcome.sent_at = rows[error.published :], error.sent_at
            return outcome
        outcome.stored += rows
        if self._last_error is not None:
            log.warning("the bus answers again; forwarding the outbox")
            self._last_error = None
        return outcome

    def _drained(self, connection: Connection) -> bool:
        """Leave outbox mode if nothing was queued meanwhile (checked under the publish lock)."""
        with self._lock:
            left = connection.scalar(select(func.count()).select_from(OUTBOX)) or 0
            self._backlog = left > 0
            return self._backlog


@dataclass
class _Sent:
    """What one forwarding attempt achieved: rows now in the bus, rows a failed write may have
    stored (sent at ``sent_at``), and the failure, if any."""

    stored: list[Any] = field(default_factory=list)
    doubted: list[Any] = field(default_factory=list)
    sent_at: float | None = None
    failure: BusUnavailableError | None = None

    def settle(self, connection: Connection) -> None:
        """Delete the stored rows; mark the doubted ones with the earliest time they were sent."""
        if self.stored:
            connection.execute(delete(OUTBOX).where(OUTBOX.c.id.in_([r.id for r in self.stored])))
        if self.doubted:
            earliest = case((OUTBOX.c.doubt_since < self.sent_at, OUTBOX.c.doubt_since), else_=self.sent_at)
            connection.execute(
                update(OUTBOX)
                .where(OUTBOX.c.id.in_([row.id for row in self.doubted]))
                .values(doubt_since=earliest)
            )


def _lock_oldest(connection: Connection, limit: int) -> list[Any]:
    """The oldest queued records, locked so that another replica's flusher skips them."""
    query = select(OUTBOX).order_by(OUTBOX.c.id).limit(limit)
    if connection.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return list(connection.execute(query))
