"""Event I/O: versioned event schemas, the event bus adapters and the decision/feedback joiner."""

from streams.bus import Bus, BusClosedError, BusUnavailableError, Consumer, Record
from streams.events import (
    TOPIC_DEADLETTER,
    TOPIC_DECISIONS,
    TOPIC_FEEDBACK,
    DeadLetter,
    DecisionEvent,
    EventError,
    FeedbackEvent,
    SparseFeatures,
    decode,
    encode,
)
from streams.joiner import JoinChanges, Joined, Joiner, Rejected
from streams.memory import InMemoryBus

__all__ = [
    "TOPIC_DEADLETTER",
    "TOPIC_DECISIONS",
    "TOPIC_FEEDBACK",
    "Bus",
    "BusClosedError",
    "BusUnavailableError",
    "Consumer",
    "DeadLetter",
    "DecisionEvent",
    "EventError",
    "FeedbackEvent",
    "InMemoryBus",
    "JoinChanges",
    "Joined",
    "Joiner",
    "Record",
    "Rejected",
    "SparseFeatures",
    "decode",
    "encode",
]
