"""Running learners: `ActiveLearner` (one active learner per consumer group, the others standing by)
and `LearnerThread` (a learner loop inside the API process).

Several learner processes may run against one database and bus (`bandit-router learn`, twice, for
failover). The policies learn from all traffic, so one of them is active at a time: it holds the
group's lease in the database, renews it with every checkpoint, reads every partition from the
stored offsets and commits. The others wait; when the active one stops renewing (killed, hung, cut
off) for ``learner_lease_s``, one of them takes the lease with a higher epoch, loads the last
checkpoint and continues from its offsets. A learner that lost the lease can no longer commit
(the epoch is checked in the checkpoint's transaction), so nothing is applied twice.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from bandit_router.config import Settings
from bandit_router.featurizer import Featurizer
from bandit_router.learner import GROUP, Learner
from bandit_router.storage import LeaseLostError, Storage
from streams import Bus

if TYPE_CHECKING:  # importing MLflow is slow: only when tracking is on
    from bandit_router.tracking import LearnerTracker

log = logging.getLogger(__name__)


def learner_id() -> str:
    """A name for this learner process that no other process shares: host, pid and a nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class ActiveLearner:
    """Waits for its group's lease, learns while it holds it, and waits again if it loses it."""

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        bus: Bus,
        featurizer: Featurizer,
        *,
        group: str = GROUP,
        holder: str | None = None,
        tracker: LearnerTracker | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.bus = bus
        self.featurizer = featurizer
        self.group = group
        self.holder = holder or learner_id()
        self.tracker = tracker  # one MLflow run for this process, across its terms as the active one
        self._clock = clock
        self.learner: Learner | None = None  # the current one while active
        self.terms = 0  # how many times this process became the active learner

    @property
    def state(self) -> str:
        """``active`` while it holds the lease, else ``standby``."""
        return "active" if self.learner is not None else "standby"

    def run(self, stop: threading.Event) -> None:
        """Learn (or stand by) until ``stop`` is set; on stop, commit and hand the lease on."""
        ttl = self.settings.learner_lease_s
        while not stop.is_set():
            lease = self.storage.acquire_lease(self.group, self.holder, ttl)
            if lease is None:
                stop.wait(min(1.0, ttl / 4))
                continue
            log.info("learner %s is active for group %r (epoch %d)", self.holder, self.group, lease.epoch)
            learner = Learner.open(
                self.settings,
                self.storage,
                self.bus,
                self.featurizer,
                group=self.group,
                lease=lease,
                clock=self._clock,
                tracker=self.tracker,
            )
            self.learner = learner
            self.terms += 1
            try:
                learner.run_forever(stop)
            except LeaseLostError as error:
                log.warning("%s; standing by", error)
                learner.stop_reading()
            finally:
                self.learner = None


class LearnerThread:
    """Runs a learner loop (``loop(stop)``) in a daemon thread of the API process."""

    def __init__(self, loop: Callable[[threading.Event], None]) -> None:
        self._loop = loop
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bandit-router-learner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask the loop to finish, and wait for its final commit."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._loop(self._stop)
        except BaseException as error:  # reported by /readyz; the process keeps serving routes
            self.error = error
            log.exception("the learner stopped")
