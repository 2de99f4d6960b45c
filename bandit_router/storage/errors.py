"""Exceptions raised by the storage layer; each message says what went wrong and what to do."""

from __future__ import annotations


class StorageError(Exception):
    """A storage operation failed for a reason the operator can act on."""


class SchemaNotCurrentError(StorageError):
    """The database schema is not at the revision this code expects (run the migrations)."""


class CheckpointRejectedError(StorageError):
    """A checkpoint violated a database constraint; nothing of it was written."""


class StateCodecError(ValueError):
    """A policy state cannot be stored without pickle, or stored bytes are not a policy state."""


class LeaseLostError(CheckpointRejectedError):
    """Another learner took over the consumer group; this one must stop and reload."""
