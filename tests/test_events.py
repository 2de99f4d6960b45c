"""The event contracts: exact round trips, one rejection per validation rule, and a decoder fuzz."""

from __future__ import annotations

import copy
import doctest
import json
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import streams.events
from streams.events import (
    DeadLetter,
    DecisionEvent,
    EventError,
    FeedbackEvent,
    SparseFeatures,
    decode,
    encode,
)


def make_decision(**overrides: Any) -> DecisionEvent:
    fields: dict[str, Any] = {
        "decision_id": "d-1",
        "ts": 1_700_000_000.125,
        "policy": "linucb",
        "policy_version": 3,
        "arms": ("small", "large", "fast"),
        "chosen": "large",
        "propensity": 0.6,
        "probabilities": (0.3, 0.6, 0.1),
        "preference": (0.7, 0.2, 0.1),
        "features": SparseFeatures(dim=8, indices=(0, 3, 7), values=(0.5, -1.25, 2.0)),
        "tenant": "acme",
    }
    fields.update(overrides)
    return DecisionEvent(**fields)


def make_feedback(**overrides: Any) -> FeedbackEvent:
    fields: dict[str, Any] = {
        "feedback_id": "f-1",
        "decision_id": "d-1",
        "ts": 1_700_000_003.5,
        "quality": 0.8,
        "cost": 0.0021,
        "latency_ms": 850.0,
    }
    fields.update(overrides)
    return FeedbackEvent(**fields)


def body_of(event: DecisionEvent | FeedbackEvent) -> dict[str, Any]:
    return json.loads(encode(event))


def value_of(body: Any) -> bytes:
    return json.dumps(body).encode()


# --- round trips -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "event",
    [
        make_decision(),
        make_decision(tenant=None),
        make_decision(features=SparseFeatures(dim=4, indices=(), values=())),
        make_decision(arms=("only",), chosen="only", propensity=1.0, probabilities=(1.0,)),
        make_decision(decision_id="dé-ü-✓", arms=("ä", "b"), chosen="ä", probabilities=(0.6, 0.4)),
        make_feedback(),
        make_feedback(cost=None, latency_ms=None),
        make_feedback(quality=0.0, cost=0.0, latency_ms=0.0),
        make_feedback(ts=0.1 + 0.2, quality=1 / 3),
    ],
)
def test_round_trip_is_exact(event: DecisionEvent | FeedbackEvent) -> None:
    encoded = encode(event)
    assert decode(encoded) == event
    assert encode(decode(encoded)) == encoded


def test_decision_json_shape() -> None:
    encoded = encode(make_decision())
    assert encoded.startswith(b'{"schema":"decision/1",')
    assert b" " not in encoded
    body = json.loads(encoded)
    assert body["preference"] == {"quality": 0.7, "cost": 0.2, "latency": 0.1}
    assert body["features"] == {"dim": 8, "indices": [0, 3, 7], "values": [0.5, -1.25, 2.0]}
    assert body["tenant"] == "acme"
    assert "tenant" not in json.loads(encode(make_decision(tenant=None)))


def test_feedback_json_leaves_out_missing_optionals() -> None:
    encoded = encode(make_feedback(cost=None, latency_ms=None))
    assert encoded == (
        b'{"schema":"feedback/1","feedback_id":"f-1","decision_id":"d-1","ts":1700000003.5,'
        b'"quality":0.8}'
    )
    # null means "not given", like absence.
    body = body_of(make_feedback())
    body["cost"] = None
    assert decode(value_of(body)).cost is None  # type: ignore[union-attr]


def test_integers_become_floats_so_the_round_trip_stays_byte_identical() -> None:
    event = make_feedback(ts=1_700_000_000, quality=1, cost=0, latency_ms=12)
    assert (event.ts, event.quality, event.cost, event.latency_ms) == (1.7e9, 1.0, 0.0, 12.0)
    assert isinstance(event.ts, float)
    decoded = decode(
        b'{"schema":"feedback/1","feedback_id":"f","decision_id":"d","ts":5,"quality":1}'
    )
    assert encode(decoded).endswith(b'"ts":5.0,"quality":1.0}')


def test_numpy_inputs_are_accepted_and_normalised() -> None:
    event = make_decision(
        policy_version=np.int64(3),
        probabilities=np.array([0.3, 0.6, 0.1]),
        propensity=np.float64(0.6),
        preference=np.array([0.7, 0.2, 0.1]),
    )
    assert event == make_decision()
    assert type(event.policy_version) is int
    assert decode(encode(event)) == event


def test_unknown_fields_are_ignored() -> None:
    body = body_of(make_decision())
    body["added_in_v2"] = {"anything": [1, 2]}
    body["preference"]["novelty"] = 0.5
    body["features"]["norm"] = 1.0
    assert decode(value_of(body)) == make_decision()


def test_sparse_features_from_and_to_dense() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=256) * (rng.random(256) < 0.1)
    features = SparseFeatures.from_dense(x)
    assert features.dim == 256
    assert list(features.indices) == np.flatnonzero(x).tolist()
    dense = features.to_dense()
    assert dense.dtype == np.float64 and dense.shape == (256,)
    np.testing.assert_array_equal(dense, x)
    assert SparseFeatures.from_dense(np.zeros(5)) == SparseFeatures(5, (), ())
    with pytest.raises(ValueError, match="1-D"):
        SparseFeatures.from_dense(np.zeros((2, 2)))


def test_dead_letter_keeps_the_original_value_as_text() -> None:
    value = b'{"schema":"feedback/9"}\xff'
    letter = DeadLetter.of("router.feedback", 2, 41, value, "unknown schema")
    assert letter.payload == '{"schema":"feedback/9"}\ufffd'
    encoded = encode(letter)
    assert encoded.startswith(b'{"schema":"deadletter/1","source_topic":"router.feedback",')
    assert json.loads(encoded) == {
        "schema": "deadletter/1",
        "source_topic": "router.feedback",
        "partition": 2,
        "offset": 41,
        "reason": "unknown schema",
        "payload": '{"schema":"feedback/9"}\ufffd',
    }
    assert DeadLetter.of("router.feedback", 0, 0, None, "tombstone").payload == ""
    assert DeadLetter("router.feedback", 0, -1, "why", "").offset == -1  # -1: origin unknown
    with pytest.raises(EventError, match="'offset' must be >= -1"):
        DeadLetter("router.feedback", 0, -2, "why", "")
    with pytest.raises(EventError, match="'partition' must be >= 0"):
        DeadLetter("router.feedback", -1, 0, "why", "")
    # A dead letter is not an input event.
    with pytest.raises(EventError, match="unknown schema 'deadletter/1'"):
        decode(encoded)


def test_events_validate_when_built_so_encode_cannot_emit_garbage() -> None:
    with pytest.raises(EventError, match="propensity"):
        make_decision(propensity=0.5)
    with pytest.raises(EventError, match="quality"):
        make_feedback(quality=float("nan"))
    with pytest.raises(TypeError, match="cannot encode"):
        encode({"schema": "decision/1"})  # type: ignore[arg-type]


def test_docstring_examples_run() -> None:
    assert doctest.testmod(streams.events).failed == 0


# --- one case per rule: (what to do to a valid body, a field the reason must name) -------------
Mutation = Callable[[dict[str, Any]], Any]


def drop(field: str) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        target, key = _locate(body, field)
        del target[key]

    return mutate


def put(field: str, value: Any) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        target, key = _locate(body, field)
        target[key] = value

    return mutate


def _locate(body: dict[str, Any], field: str) -> tuple[dict[str, Any], str]:
    *parents, key = field.split(".")
    for parent in parents:
        body = body[parent]
    return body, key


DECISION_FIELDS = [
    "decision_id", "ts", "policy", "policy_version", "arms", "chosen", "propensity",
    "probabilities", "preference", "features", "preference.quality", "preference.cost",
    "preference.latency", "features.dim", "features.indices", "features.values",
]  # fmt: skip
FEEDBACK_FIELDS = ["feedback_id", "decision_id", "ts", "quality"]

DECISION_CASES: list[tuple[str, Mutation, str]] = [
    *[(f"missing {f}", drop(f), f"missing field '{f}'") for f in DECISION_FIELDS],
    ("schema missing", drop("schema"), "missing field 'schema'"),
    ("schema unknown", put("schema", "decision/9"), "unknown schema 'decision/9'"),
    ("schema not a string", put("schema", 1), "'schema' must be a string"),
    ("ts a string", put("ts", "1700000000"), "'ts' must be a number"),
    ("ts a boolean", put("ts", True), "'ts' must be a number, got a boolean"),
    ("ts NaN", put("ts", float("nan")), "'ts' must be a finite number"),
    ("ts infinite", put("ts", float("inf")), "'ts' must be a finite number"),
    ("ts overflowing int", put("ts", 10**400), "'ts' must be a finite number"),
    ("ts negative", put("ts", -1.0), "'ts' must be >= 0"),
    ("decision_id empty", put("decision_id", ""), "'decision_id' must not be empty"),
    ("decision_id a number", put("decision_id", 7), "'decision_id' must be a string"),
    ("decision_id too long", put("decision_id", "x" * 201), "'decision_id' is 201 characters"),
    ("decision_id surrogate", put("decision_id", "\ud800"), "'decision_id' is not valid Unicode"),
    ("policy empty", put("policy", ""), "'policy' must not be empty"),
    ("policy_version float", put("policy_version", 1.0), "'policy_version' must be an integer"),
    ("policy_version bool", put("policy_version", False), "'policy_version' must be an integer"),
    ("policy_version negative", put("policy_version", -1), "'policy_version' must be >= 0"),
    ("arms a string", put("arms", "small"), "'arms' must be a list"),
    ("arms empty", put("arms", []), "'arms' must list at least one arm"),
    ("arms not strings", put("arms", ["small", 2, "fast"]), "'arms' must be a string"),
    ("arms duplicated", put("arms", ["small", "large", "small"]), "'arms' has duplicate arms"),
    ("chosen not an arm", put("chosen", "huge"), "'chosen' is 'huge', which is not one of 'arms'"),
    ("propensity zero", put("propensity", 0.0), "'propensity' must be in (0, 1]"),
    ("propensity above one", put("propensity", 1.5), "'propensity' must be in (0, 1]"),
    ("propensity a boolean", put("propensity", True), "'propensity' must be a number"),
    ("propensity mismatch", put("propensity", 0.3), "'propensity' is 0.3 but 'probabilities'"),
    ("probabilities short", put("probabilities", [0.4, 0.6]), "'probabilities' has 2 entries"),
    ("probabilities sum", put("probabilities", [0.3, 0.6, 0.0]), "'probabilities' sums to 0.9"),
    ("probabilities negative", put("probabilities", [0.5, 0.6, -0.1]), "'probabilities' has a neg"),
    ("probabilities NaN", put("probabilities", [0.3, 0.6, float("nan")]), "'probabilities' must"),
    ("probabilities object", put("probabilities", {"a": 1}), "'probabilities' must be a list"),
    ("preference a list", put("preference", [1, 0, 0]), "'preference' must be a JSON object"),
    ("preference negative", put("preference.cost", -0.1), "'preference.cost' must be >= 0"),
    ("preference all zero", put("preference", {"quality": 0, "cost": 0, "latency": 0}),
     "'preference' weights must not all be zero"),
    ("preference a string", put("preference.latency", "0"), "'preference.latency' must be a num"),
    ("features null", put("features", None), "'features' must be a JSON object, got null"),
    ("features dim zero", put("features.dim", 0), "'features.dim' must be in [1,"),
    ("features dim huge", put("features.dim", 10**9), "'features.dim' must be in [1,"),
    ("features dim float", put("features.dim", 8.0), "'features.dim' must be an integer"),
    ("indices float", put("features.indices", [0, 3.0, 7]), "'features.indices' must be an int"),
    ("indices unsorted", put("features.indices", [3, 0, 7]), "'features.indices' must be strictly"),
    ("indices repeated", put("features.indices", [0, 3, 3]), "'features.indices' must be strictly"),
    ("indices negative", put("features.indices", [-1, 3, 7]), "'features.indices' must lie in"),
    ("indices beyond dim", put("features.indices", [0, 3, 8]), "'features.indices' must lie in"),
    ("values short", put("features.values", [0.5, 1.0]), "'features.indices' has 3 entries but"),
    ("values infinite", put("features.values", [0.5, 1.0, float("-inf")]), "'features.values' mu"),
    ("tenant empty", put("tenant", ""), "'tenant' must not be empty"),
    ("tenant a number", put("tenant", 5), "'tenant' must be a string"),
]  # fmt: skip

FEEDBACK_CASES: list[tuple[str, Mutation, str]] = [
    *[(f"missing {f}", drop(f), f"missing field '{f}'") for f in FEEDBACK_FIELDS],
    ("schema unknown", put("schema", "feedback/2"), "unknown schema 'feedback/2'"),
    ("feedback_id empty", put("feedback_id", ""), "'feedback_id' must not be empty"),
    ("decision_id empty", put("decision_id", ""), "'decision_id' must not be empty"),
    ("quality above one", put("quality", 1.01), "'quality' must be in [0, 1]"),
    ("quality negative", put("quality", -0.01), "'quality' must be in [0, 1]"),
    ("quality a boolean", put("quality", True), "'quality' must be a number, got a boolean"),
    ("quality NaN", put("quality", float("nan")), "'quality' must be a finite number"),
    ("cost negative", put("cost", -0.5), "'cost' must be >= 0"),
    ("cost infinite", put("cost", float("inf")), "'cost' must be a finite number"),
    ("cost a string", put("cost", "0.1"), "'cost' must be a number"),
    ("latency negative", put("latency_ms", -1), "'latency_ms' must be >= 0"),
    ("latency a list", put("latency_ms", [1]), "'latency_ms' must be a number"),
    ("ts a boolean", put("ts", False), "'ts' must be a number"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "reason"), [c[1:] for c in DECISION_CASES], ids=[c[0] for c in DECISION_CASES]
)
def test_invalid_decision_is_rejected_naming_the_field(mutate: Mutation, reason: str) -> None:
    body = body_of(make_decision())
    mutate(body)
    with pytest.raises(EventError) as caught:
        decode(value_of(body))
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    ("mutate", "reason"), [c[1:] for c in FEEDBACK_CASES], ids=[c[0] for c in FEEDBACK_CASES]
)
def test_invalid_feedback_is_rejected_naming_the_field(mutate: Mutation, reason: str) -> None:
    body = body_of(make_feedback())
    mutate(body)
    with pytest.raises(EventError) as caught:
        decode(value_of(body))
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b"", "not JSON"),
        (b"{'schema': 'feedback/1'}", "not JSON"),
        (b'{"schema":"feedback/1",', "not JSON"),
        (b"[1, 2]", "must be a JSON object, got an array"),
        (b'"decision/1"', "must be a JSON object, got a string"),
        (b"null", "must be a JSON object, got null"),
        (b"[" * 100_000, "nested too deep"),
        (b'{"ts":' + b"9" * 5000 + b"}", "not JSON"),
        (None, "must be bytes, got null"),
    ],
)
def test_unparseable_values_are_rejected(value: Any, reason: str) -> None:
    with pytest.raises(EventError) as caught:
        decode(value)
    assert reason in str(caught.value)


def test_probabilities_and_propensity_tolerances() -> None:
    assert make_decision(probabilities=(0.3, 0.6, 0.1 + 5e-7)).probabilities[2] == 0.1 + 5e-7
    with pytest.raises(EventError, match="sums to"):
        make_decision(probabilities=(0.3, 0.6, 0.1 + 2e-6))
    assert make_decision(propensity=0.6 + 5e-10).propensity == 0.6 + 5e-10
    with pytest.raises(EventError, match="propensity"):
        make_decision(propensity=0.6 + 2e-9)


# --- fuzz: anything in, an event or an EventError out -------------------------------------------
JSON_ODDITIES: list[Any] = [
    None, True, False, 0, -1, 1, 2**63, 10**400, 0.5, -0.0, 1e308, float("nan"), float("inf"),
    "", "x", "\ud800", "d-1", [], [0], [1.0, 0.0], {}, {"quality": 1}, [[[]]], "router.decisions",
]  # fmt: skip


def random_json(rng: random.Random, depth: int = 0) -> Any:
    if depth < 2 and rng.random() < 0.2:
        if rng.random() < 0.5:
            return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
        return {rng.choice(["quality", "dim", "k"]): random_json(rng, depth + 1)}
    return copy.deepcopy(rng.choice(JSON_ODDITIES))


def mutate_randomly(rng: random.Random, body: dict[str, Any]) -> bytes:
    for _ in range(rng.randrange(1, 4)):
        target: Any = body
        # Walk into a nested object or list now and then.
        while isinstance(target, dict | list) and target and rng.random() < 0.4:
            keys = list(target) if isinstance(target, dict) else list(range(len(target)))
            key = rng.choice(keys)
            if not isinstance(target[key], dict | list):
                break
            target = target[key]
        if isinstance(target, dict) and target:
            key = rng.choice(list(target))
            if rng.random() < 0.25:
                del target[key]
            else:
                target[key] = random_json(rng)
        elif isinstance(target, list) and target:
            index = rng.randrange(len(target))
            choice = rng.random()
            if choice < 0.3:
                del target[index]
            elif choice < 0.6:
                target.append(copy.deepcopy(target[index]))
            else:
                target[index] = random_json(rng)
    value = json.dumps(body).encode()
    if rng.random() < 0.15:  # byte-level damage too
        raw = bytearray(value)
        for _ in range(rng.randrange(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        value = bytes(raw[: rng.randrange(len(raw) + 1)] if rng.random() < 0.3 else raw)
    return value


def test_fuzz_decode_raises_nothing_but_event_error() -> None:
    rng = random.Random(20240611)
    seeds = [body_of(e) for e in (make_decision(), make_decision(tenant=None), make_feedback())]
    outcomes = {"event": 0, "error": 0}
    for case in range(2000):
        if case % 4 == 0:
            json_bytes = b'{}[]":,0123456789.-eEtrufalsn \\x'
            alphabet = json_bytes if rng.random() < 0.5 else bytes(range(256))
            value = bytes(rng.choice(alphabet) for _ in range(rng.randrange(48)))
        else:
            value = mutate_randomly(rng, copy.deepcopy(rng.choice(seeds)))
        try:
            event = decode(value)
        except EventError as err:
            assert str(err), f"an empty reason for {value!r}"
            outcomes["error"] += 1
        else:
            # Whatever decodes must round-trip exactly.
            assert decode(encode(event)) == event
            assert encode(decode(encode(event))) == encode(event)
            outcomes["event"] += 1
    # Both branches are exercised, so the fuzz is not trivially all-invalid.
    assert outcomes["event"] > 20 and outcomes["error"] > 1000, outcomes
