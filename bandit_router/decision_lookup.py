"""Finding logged decisions: the model a decision chose (so feedback can be priced from the
catalog) and the logged event itself (``GET /v1/decisions/{id}``).

Only a bus that can look records up by key can answer (the embedded log can, Kafka cannot); with
one, a decision it never logged is a `NotFoundError`.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol, runtime_checkable

from bandit_router.service_errors import NotFoundError
from policies import OBJECTIVES
from streams import TOPIC_DECISIONS, Bus, DecisionEvent, EventError, Record, decode
from streams.outbox import OutboxBus

RECENT_DECISIONS = 100_000  # decisions whose chosen model feedback finds without a lookup


@runtime_checkable
class RecordFinder(Protocol):
    """A bus that can look records up by key (the embedded one): lets the API check decisions."""

    def find(self, topic: str, key: str) -> list[Record]: ...


class DecisionLookup:
    """Looks decisions up in ``bus``'s log, remembering the chosen model of the newest
    ``recent`` decisions routed here: most feedback comes soon after its decision, and finding
    it in memory skips a database read and a decode (~240 us)."""

    def __init__(self, bus: Bus, recent: int = RECENT_DECISIONS) -> None:
        inner = bus.inner if isinstance(bus, OutboxBus) else bus
        self.finder = inner if isinstance(inner, RecordFinder) else None
        self._recent = _RecentChoices(recent) if self.finder is not None else None

    def remember(self, decision_id: str, model: str) -> None:
        """Note the model a decision routed here chose."""
        if self._recent is not None:
            self._recent.add(decision_id, model)

    def chosen_model(self, decision_id: str) -> str | None:
        """The model a logged decision chose; None if the bus cannot look decisions up, and
        `NotFoundError` if it can and the decision was never logged."""
        chosen = None if self._recent is None else self._recent.get(decision_id)
        if chosen is not None:
            return chosen
        decision = self.logged(decision_id)
        if decision is None and self.finder is not None:
            raise NotFoundError("decision_id", f"no decision {decision_id!r} was routed here")
        return None if decision is None else decision.chosen

    def logged(self, decision_id: str) -> DecisionEvent | None:
        """The logged decision event (None if unknown or if the bus cannot look it up)."""
        if self.finder is None:
            return None
        for record in self.finder.find(TOPIC_DECISIONS, decision_id):
            try:
                event = decode(record.value)
            except EventError:
                continue
            if isinstance(event, DecisionEvent):
                return event
        return None


class _RecentChoices:
    """decision id -> chosen model for the last ``size`` decisions, oldest dropped first."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._choices: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, decision_id: str, model: str) -> None:
        with self._lock:
            self._choices[decision_id] = model
            if len(self._choices) > self._size:
                del self._choices[next(iter(self._choices))]

    def get(self, decision_id: str) -> str | None:
        return self._choices.get(decision_id)


def decision_body(event: DecisionEvent) -> dict[str, Any]:
    return {
        "ts": event.ts,
        "policy": event.policy,
        "policy_version": event.policy_version,
        "model": event.chosen,
        "propensity": event.propensity,
        "probabilities": dict(zip(event.arms, event.probabilities, strict=True)),
        "preference": dict(zip(OBJECTIVES, event.preference, strict=True)),
        "tenant": event.tenant,
    }
