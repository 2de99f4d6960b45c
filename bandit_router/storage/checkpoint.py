"""The learner's checkpoint as plain values: what it hands to `Storage.commit_checkpoint` and
what `Storage.load_checkpoint` gives back on start."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


class Snapshot(NamedTuple):
    """A stored policy state: its version, how many events it has learned from, the arrays."""

    version: int
    events: int
    state: dict[str, np.ndarray]


@dataclass(frozen=True)
class Lease:
    """A learner's claim to be the active one of ``group``: ``epoch`` fences out older holders."""

    group: str
    holder: str
    epoch: int
    ttl_s: float


@dataclass
class Checkpoint:
    """Everything the learner changed since its last commit, written atomically."""

    group: str
    # (policy, version, events, state)
    snapshots: list[tuple[str, int, int, dict[str, np.ndarray]]] = field(default_factory=list)
    # (topic, partition) -> next offset to read
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    # (decision_id, encoded DecisionEvent, received_at)
    added_decisions: list[tuple[str, bytes, float]] = field(default_factory=list)
    removed_decision_ids: list[str] = field(default_factory=list)
    # (feedback_id, decision_id, encoded FeedbackEvent, arrived_at)
    added_waiting: list[tuple[str, str, bytes, float]] = field(default_factory=list)
    removed_waiting_ids: list[str] = field(default_factory=list)
    # (feedback_id, decision_id, applied_at, policy_version)
    applied: list[tuple[str, str, float, int]] = field(default_factory=list)
    # (source_topic, partition, offset, key, reason, payload, created_at)
    dead_letters: list[tuple[str, int, int, str, str, bytes, float]] = field(default_factory=list)
    # counter name -> delta
    counters: dict[str, int] = field(default_factory=dict)
    # (topic, key, value): records for the bus, queued in the outbox by the same transaction
    outbox: list[tuple[str, str, bytes]] = field(default_factory=list)
    # if set, the commit renews this lease and is refused (LeaseLostError) if it was taken over
    lease: Lease | None = None


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What a learner resumes from: the state as of the last committed checkpoint."""

    snapshots: dict[str, Snapshot]  # newest per policy
    offsets: dict[tuple[str, int], int]  # (topic, partition) -> next offset, for this group
    pending_decisions: list[tuple[bytes, float]]  # (payload, received_at), oldest first
    waiting_feedback: list[tuple[bytes, float]]  # (payload, arrived_at), oldest first
    applied: list[tuple[str, str, float]]  # (decision_id, feedback_id, applied_at)
