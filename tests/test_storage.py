"""Storage on real SQLite files: migrations, schema drift, the catalog, atomic learner checkpoints,
the API's queries and the policy-state codec."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Engine, Integer, MetaData, inspect, text

from bandit_router.catalog import DEMO_CATALOG, CatalogError, CatalogModel
from bandit_router.storage import (
    Base,
    Checkpoint,
    CheckpointRejectedError,
    SchemaNotCurrentError,
    StateCodecError,
    Storage,
    StorageError,
    check_schema,
    decode_state,
    encode_state,
    head_revision,
    include_object,
    make_engine,
    migrate,
    upgrade,
)

OWN_TABLES = {
    "catalog_models",
    "policy_snapshots",
    "consumer_offsets",
    "pending_decisions",
    "waiting_feedback",
    "applied_feedback",
    "dead_letters",
    "counters",
    "learner_leases",
    "service_config",
}


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every storage test runs on both backends: they write differently (COPY on PostgreSQL)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'router.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    migrate(url)
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def embedded_engine(tmp_path: Path) -> Iterator[Engine]:
    """For what only the embedded database has: its event log table and its PRAGMAs."""
    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    migrate(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def storage(engine: Engine, clock: FakeClock) -> Storage:
    return Storage(engine, clock=clock)


def policy_state(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "A": rng.normal(size=(4, 4)),
        "b": rng.normal(size=(3, 4)),
        "count": np.array(seed, dtype=np.int64),
        "arms": np.array(["gpt-4o-mini", "claude-3-5-haiku"]),
    }


def assert_same_state(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(actual) == list(expected)
    for key, array in expected.items():
        assert actual[key].dtype == array.dtype, key
        assert actual[key].shape == array.shape, key
        assert np.array_equal(actual[key], array), key


# --- migrations and engines ------------------------------------------------------------------


def test_migrate_creates_every_table_and_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    head = head_revision()
    assert migrate(url) == head
    engine = make_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert tables == OWN_TABLES | {"event_log", "outbox", "alembic_version"}
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO counters (name, value) VALUES ('decisions', 7)"))

        assert upgrade(engine) == head  # again, through the alias and an engine: a no-op

        assert set(inspect(engine).get_table_names()) == tables
        with engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).all() == [
                (head,)
            ]
            assert connection.execute(text("SELECT value FROM counters")).scalar_one() == 7
        check_schema(engine)
    finally:
        engine.dispose()


def test_event_log_is_created_exactly_as_streams_defines_it(embedded_engine: Engine) -> None:
    inspector = inspect(embedded_engine)
    columns = {c["name"]: c for c in inspector.get_columns("event_log")}
    assert list(columns) == ["offset", "topic", "key", "value", "ts"]
    assert [type(c["type"]).__name__ for c in columns.values()] == [
        "INTEGER",
        "VARCHAR",
        "VARCHAR",
        "BLOB",
        "FLOAT",
    ]
    assert columns["topic"]["type"].length == columns["key"]["type"].length == 200
    assert not any(c["nullable"] for c in columns.values())
    assert inspector.get_pk_constraint("event_log")["constrained_columns"] == ["offset"]
    indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes("event_log")}
    assert indexes == {
        "ix_event_log_topic_offset": ["topic", "offset"],
        "ix_event_log_key": ["key"],
    }
    with embedded_engine.begin() as connection:
        for topic in ("router.decisions", "router.feedback"):
            connection.execute(
                text("INSERT INTO event_log (topic, key, value, ts) VALUES (:t, 'd1', x'00', 1.5)"),
                {"t": topic},
            )
        offsets = connection.execute(text('SELECT "offset" FROM event_log ORDER BY 1')).all()
    assert offsets == [(1,), (2,)]  # the offset is assigned by the database


def test_orm_models_and_migrated_schema_do_not_drift(engine: Engine) -> None:
    options = {"include_object": include_object, "compare_type": True}
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts=options)
        assert compare_metadata(context, Base.metadata) == []

        # The comparison does see drift: a model with one more column than the schema.
        drifted = MetaData(naming_convention=Base.metadata.naming_convention)
        for table in Base.metadata.tables.values():
            table.to_metadata(drifted)
        drifted.tables["counters"].append_column(Column("extra", Integer))
        diff = compare_metadata(context, drifted)
    assert [(op[0], op[2], op[3].name) for op in diff] == [("add_column", "counters", "extra")]


def test_streams_tables_match_the_migrations(engine: Engine) -> None:
    embedded = pytest.importorskip("streams.embedded")
    pytest.importorskip("streams.outbox")  # adds its table to the same metadata
    options = {
        "include_object": lambda obj, name, type_, *_: type_ != "table"
        or name in ("event_log", "outbox"),
        "compare_type": True,
    }
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts=options)
        assert compare_metadata(context, embedded.metadata) == []


def test_embedded_engine_uses_wal_normal_sync_and_a_busy_timeout(embedded_engine: Engine) -> None:
    with embedded_engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert connection.execute(text("PRAGMA synchronous")).scalar_one() == 1  # NORMAL
        assert connection.execute(text("PRAGMA busy_timeout")).scalar_one() == 5000


def test_make_engine_names_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"missing for the SQLite database does not exist"):
        make_engine(f"sqlite:///{tmp_path / 'missing' / 'router.db'}")


def test_check_schema_asks_for_an_upgrade_on_an_unmigrated_database(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        with pytest.raises(SchemaNotCurrentError, match=rf"\(none\).*needs {head_revision()}.*db upgrade"):
            check_schema(engine)
    finally:
        engine.dispose()


# --- policy state codec ----------------------------------------------------------------------


def test_state_round_trip_is_exact_for_every_kind_of_array() -> None:
    state = {
        "A": np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4) / 7),
        "scalar": np.array(0.1 + 0.2),
        "count": np.array(2**40, dtype=np.int64),
        "small": np.array([1, -2], dtype=np.int32),
        "flags": np.array([True, False]),
        "arms": np.array(["gpt-4-1106-preview", "mixtral-8x7b-instruct", ""]),
        "name": np.array("linucb"),
        "empty": np.zeros((0, 3)),
        "file": np.array([1.0]),  # would collide with np.savez's own parameter names
        "allow_pickle": np.array([2.0]),
        "nested/key": np.array([3.0]),
    }
    data = encode_state(state)
    decoded = decode_state(data)
    assert_same_state(decoded, state)
    assert decoded["A"].flags.f_contiguous
    assert decoded["scalar"].item() == 0.1 + 0.2
    assert encode_state(state) == data  # deterministic bytes
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:  # a standard .npz archive
        assert npz.files == list(state)


def test_state_codec_refuses_what_would_need_pickle() -> None:
    with pytest.raises(StateCodecError, match="'arms' has dtype object, which needs pickle"):
        encode_state({"arms": np.array(["a", None], dtype=object)})
    with pytest.raises(StateCodecError, match="'n' must be a numpy array, got float"):
        encode_state({"n": 1.5})  # type: ignore[dict-item]
    pickled = io.BytesIO()
    np.savez(pickled, bad=np.array([{"a": 1}], dtype=object))
    with pytest.raises(StateCodecError, match="unreadable"):
        decode_state(pickled.getvalue())
    with pytest.raises(StateCodecError, match="not an .npz archive"):
        decode_state(b"definitely not a zip file")


# --- catalog ---------------------------------------------------------------------------------


def test_put_get_list_remove_and_revive_models(storage: Storage, clock: FakeClock) -> None:
    haiku = CatalogModel("claude-3-5-haiku", price_in_per_m=0.8, price_out_per_m=4.0)
    mini = CatalogModel("gpt-4o-mini", 0.15, 0.6, prior_quality=0.7, typical_output_tokens=100)
    assert storage.put_model(mini) is True
    assert storage.put_model(haiku) is True
    assert storage.list_models() == [haiku, mini]  # by name
    assert storage.get_model("gpt-4o-mini") == mini
    assert storage.get_model("unknown") is None

    cheaper = CatalogModel("gpt-4o-mini", 0.1, 0.4, enabled=False)
    assert storage.put_model(cheaper) is False  # replaced, not created
    assert storage.get_model("gpt-4o-mini") == cheaper

    clock.now = 2000.0
    assert storage.remove_model("gpt-4o-mini") is True
    assert storage.remove_model("gpt-4o-mini") is False  # already removed
    assert storage.remove_model("unknown") is False
    assert storage.list_models() == [haiku]
    assert storage.list_models(include_removed=True) == [haiku, cheaper]
    assert storage.get_model("gpt-4o-mini") is None
    assert storage.get_model("gpt-4o-mini", include_removed=True) == cheaper

    clock.now = 3000.0
    assert storage.put_model(mini) is True  # revived
    assert storage.list_models() == [haiku, mini]


def test_removal_and_revival_are_timestamped(
    storage: Storage, engine: Engine, clock: FakeClock
) -> None:
    def stamps() -> tuple[float | None, float]:
        with engine.connect() as connection:
            query = text("SELECT removed_at, updated_at FROM catalog_models WHERE name = 'm'")
            return tuple(connection.execute(query).one())  # type: ignore[return-value]

    storage.put_model(CatalogModel("m"))
    assert stamps() == (None, 1000.0)
    clock.now = 1500.0
    storage.remove_model("m")
    assert stamps() == (1500.0, 1500.0)
    clock.now = 1700.0
    storage.put_model(CatalogModel("m"))
    assert stamps() == (None, 1700.0)


def test_seed_catalog_only_fills_a_catalog_that_never_held_a_model(storage: Storage) -> None:
    assert storage.seed_catalog(DEMO_CATALOG) == 6
    assert storage.list_models() == sorted(DEMO_CATALOG, key=lambda model: model.name)
    assert storage.seed_catalog(DEMO_CATALOG) == 0
    for model in DEMO_CATALOG:
        storage.remove_model(model.name)
    assert storage.seed_catalog(DEMO_CATALOG) == 0  # the operator's removals stand
    assert storage.list_models() == []


def test_seed_catalog_rejects_duplicate_names(storage: Storage) -> None:
    with pytest.raises(CatalogError, match="lists m more than once"):
        storage.seed_catalog([CatalogModel("m"), CatalogModel("m", 1.0)])
    assert storage.list_models(include_removed=True) == []


# --- learner checkpoints ---------------------------------------------------------------------


def first_checkpoint() -> Checkpoint:
    return Checkpoint(
        group="learner",
        snapshots=[("linucb", 1, 10, policy_state(1)), ("random", 1, 10, policy_state(2))],
        offsets={("router.decisions", 0): 11, ("router.feedback", 0): 4},
        added_decisions=[
            ("d1", b"decision-1", 5.0),
            ("d2", b"decision-2", 6.0),
            ("d3", b"d-3", 7.0),
        ],
        added_waiting=[("f9", "d9", b"feedback-9", 8.0)],
        applied=[("f0", "d0", 4.5, 1)],
        dead_letters=[("router.feedback", 0, 2, "dx", "unknown schema feedback/9", b"{}", 4.0)],
        counters={"decisions": 3, "feedback_received": 2},
    )


def test_checkpoint_round_trip(storage: Storage) -> None:
    storage.commit_checkpoint(first_checkpoint())
    storage.commit_checkpoint(
        Checkpoint(
            group="learner",
            snapshots=[("linucb", 2, 12, policy_state(3))],
            offsets={("router.decisions", 0): 13, ("router.decisions", 1): 1},
            added_decisions=[("d4", b"decision-4", 9.0)],
            removed_decision_ids=["d1"],
            added_waiting=[("f8", "d8", b"feedback-8", 7.5)],
            removed_waiting_ids=["f9"],
            applied=[("f1", "d1", 9.5, 2)],
            counters={"decisions": 1},
        )
    )

    loaded = storage.load_checkpoint("learner")

    assert sorted(loaded.snapshots) == ["linucb", "random"]
    assert loaded.snapshots["linucb"][:2] == (2, 12)
    assert_same_state(loaded.snapshots["linucb"].state, policy_state(3))
    assert (loaded.snapshots["random"].version, loaded.snapshots["random"].events) == (1, 10)
    assert_same_state(loaded.snapshots["random"].state, policy_state(2))
    assert loaded.offsets == {
        ("router.decisions", 0): 13,
        ("router.feedback", 0): 4,
        ("router.decisions", 1): 1,
    }
    assert loaded.pending_decisions == [(b"decision-2", 6.0), (b"d-3", 7.0), (b"decision-4", 9.0)]
    assert loaded.waiting_feedback == [(b"feedback-8", 7.5)]
    assert loaded.applied == [("d0", "f0", 4.5), ("d1", "f1", 9.5)]
    # A learner loads only the recent applied feedback (its joiner forgets older ids anyway).
    assert storage.load_checkpoint("learner", applied_since=5.0).applied == [("d1", "f1", 9.5)]
    assert storage.counter("decisions") == 4
    assert storage.counter("feedback_received") == 2
    assert storage.snapshot_versions() == {"linucb": 2, "random": 1}
    assert list(storage.newest_snapshots(["random"])) == ["random"]

    other = storage.load_checkpoint("another-group")
    assert other.offsets == {}  # offsets belong to a consumer group
    assert other.snapshots.keys() == loaded.snapshots.keys()


def test_only_the_newest_five_snapshots_per_policy_are_kept(
    storage: Storage, engine: Engine
) -> None:
    storage.commit_checkpoint(Checkpoint("g", snapshots=[("random", 1, 1, policy_state(0))]))
    for version in range(1, 8):
        storage.commit_checkpoint(
            Checkpoint("g", snapshots=[("linucb", version, 10 * version, policy_state(version))])
        )
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT policy, version FROM policy_snapshots ORDER BY policy, version")
        ).all()
    assert rows == [("linucb", v) for v in range(3, 8)] + [("random", 1)]
    newest = storage.newest_snapshots()["linucb"]
    assert (newest.version, newest.events) == (7, 70)
    assert_same_state(newest.state, policy_state(7))


def test_a_failing_checkpoint_writes_nothing(storage: Storage, engine: Engine) -> None:
    storage.commit_checkpoint(first_checkpoint())
    before = storage.load_checkpoint("learner")
    stats_before = storage.stats()

    # Everything else in it is valid and is executed first; the last statement, feedback for
    # decision d0 which already has applied feedback, breaks the unique constraint.
    doomed = Checkpoint(
        group="learner",
        snapshots=[("linucb", 2, 20, policy_state(5)), ("lints", 1, 20, policy_state(6))],
        offsets={("router.decisions", 0): 99, ("router.decisions", 1): 5},
        added_decisions=[("d7", b"decision-7", 10.0)],
        removed_decision_ids=["d1", "d2"],
        added_waiting=[("f7", "d70", b"feedback-7", 10.0)],
        removed_waiting_ids=["f9"],
        dead_letters=[("router.decisions", 0, 50, "d50", "bad propensity", b"x", 10.0)],
        counters={"decisions": 100, "new_counter": 1},
        applied=[("f2", "d2", 10.0, 2), ("f-again", "d0", 10.0, 2)],
    )
    with pytest.raises(CheckpointRejectedError, match="'learner' was rolled back.*(UNIQUE|unique)"):
        storage.commit_checkpoint(doomed)

    after = storage.load_checkpoint("learner")
    assert after.offsets == before.offsets
    assert after.pending_decisions == before.pending_decisions
    assert after.waiting_feedback == before.waiting_feedback
    assert after.applied == before.applied
    assert {name: snap[:2] for name, snap in after.snapshots.items()} == {
        "linucb": (1, 10),
        "random": (1, 10),
    }
    assert storage.stats() == stats_before
    assert storage.counter("new_counter") == 0
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM policy_snapshots")).scalar_one() == 2


def test_a_committed_checkpoint_survives_sigkill(database_url: str) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal
        import numpy as np
        from bandit_router.storage import Checkpoint, Storage, make_engine
        storage = Storage(make_engine({database_url!r}))
        storage.commit_checkpoint(Checkpoint(
            "learner",
            snapshots=[("linucb", 1, 3, {{"A": np.eye(2)}})],
            offsets={{("router.decisions", 0): 3}},
            added_decisions=[("d1", b"payload", 1.0)],
        ))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()

    engine = make_engine(database_url)
    try:
        loaded = Storage(engine).load_checkpoint("learner")
    finally:
        engine.dispose()
    assert loaded.offsets == {("router.decisions", 0): 3}
    assert loaded.pending_decisions == [(b"payload", 1.0)]
    assert np.array_equal(loaded.snapshots["linucb"].state["A"], np.eye(2))


# --- API queries -----------------------------------------------------------------------------


def test_decision_status(storage: Storage) -> None:
    storage.commit_checkpoint(first_checkpoint())
    assert storage.decision_status("d0") == (
        "applied",
        {"feedback_id": "f0", "applied_at": 4.5, "policy_version": 1},
    )
    assert storage.decision_status("d1") == (
        "pending",
        {"decision_received_at": 5.0, "feedback_arrived_at": None},
    )
    assert storage.decision_status("d9") == (
        "pending",
        {"decision_received_at": None, "feedback_arrived_at": 8.0},
    )
    assert storage.decision_status("dx") == (
        "dead_lettered",
        {
            "reason": "unknown schema feedback/9",
            "source_topic": "router.feedback",
            "partition": 0,
            "offset": 2,
            "created_at": 4.0,
        },
    )
    assert storage.decision_status("never-seen") is None

    # Applied wins over an older dead letter for the same decision.
    storage.commit_checkpoint(
        Checkpoint(
            "learner",
            removed_decision_ids=["d1"],
            applied=[("f1", "d1", 9.0, 3)],
            dead_letters=[
                ("router.feedback", 0, 5, "d1", "quality 1.7 is outside [0, 1]", b"", 8.0)
            ],
        )
    )
    assert storage.decision_status("d1") == (
        "applied",
        {"feedback_id": "f1", "applied_at": 9.0, "policy_version": 3},
    )


def test_stats_and_counters(storage: Storage) -> None:
    assert storage.stats() == {
        "decisions": 0,
        "feedback_received": 0,
        "feedback_applied": 0,
        "dead_letters": 0,
        "pending_decisions": 0,
        "waiting_feedback": 0,
    }
    storage.commit_checkpoint(first_checkpoint())
    storage.add_counter("decisions", 5)
    storage.add_counter("decisions", 2)
    storage.add_counter("replays", 1)
    assert storage.counter("decisions") == 3 + 5 + 2
    assert storage.counter("unknown") == 0
    assert storage.stats() == {
        "decisions": 10,
        "feedback_received": 2,
        "replays": 1,
        "feedback_applied": 1,
        "dead_letters": 1,
        "pending_decisions": 3,
        "waiting_feedback": 1,
    }


def test_service_config_values_are_stored_replaced_and_stamped(
    storage: Storage, engine: Engine, clock: FakeClock
) -> None:
    assert storage.config_value("serving_policy") is None
    storage.set_config_value("serving_policy", "lints")
    clock.now += 5
    storage.set_config_value("serving_policy", "random")
    assert storage.config_value("serving_policy") == "random"
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT key, value, updated_at FROM service_config")).all()
    assert rows == [("serving_policy", "random", clock.now)]
