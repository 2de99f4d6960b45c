"""Persistence: the ORM tables, the `Storage` facade over them, policy-state encoding, engines and
migrations. Import from here; the submodules are an implementation detail."""

from __future__ import annotations

from bandit_router.storage.checkpoint import Checkpoint, Lease, LoadedCheckpoint, Snapshot
from bandit_router.storage.engine import (
    MIGRATIONS_DIR,
    alembic_config,
    check_schema,
    head_revision,
    make_engine,
    migrate,
    prepare_schema,
    upgrade,
)
from bandit_router.storage.errors import (
    CheckpointRejectedError,
    LeaseLostError,
    SchemaNotCurrentError,
    StateCodecError,
    StorageError,
)
from bandit_router.storage.schema import Base, include_object
from bandit_router.storage.state_codec import decode_state, encode_state
from bandit_router.storage.store import DECISIONS, FEEDBACK_RECEIVED, Storage

__all__ = [
    "DECISIONS",
    "FEEDBACK_RECEIVED",
    "MIGRATIONS_DIR",
    "Base",
    "Checkpoint",
    "CheckpointRejectedError",
    "Lease",
    "LeaseLostError",
    "LoadedCheckpoint",
    "SchemaNotCurrentError",
    "Snapshot",
    "StateCodecError",
    "Storage",
    "StorageError",
    "alembic_config",
    "check_schema",
    "decode_state",
    "encode_state",
    "head_revision",
    "include_object",
    "make_engine",
    "migrate",
    "prepare_schema",
    "upgrade",
]
