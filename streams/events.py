"""The versioned JSON contracts of the three topics (decision/1, feedback/1, deadletter/1).

Events validate themselves when built, so ``encode`` never emits an invalid record; ``decode`` turns
any byte string into an event or an ``EventError`` whose text is the dead-letter reason.
"""

from __future__ import annotations

import json
import math
import numbers
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import orjson

from policies import OBJECTIVES

TOPIC_DECISIONS = "router.decisions"
TOPIC_FEEDBACK = "router.feedback"
TOPIC_DEADLETTER = "router.deadletter"

DECISION_SCHEMA = "decision/1"
FEEDBACK_SCHEMA = "feedback/1"
DEADLETTER_SCHEMA = "deadletter/1"

# Ids are bus keys; the embedded log's key column is String(200).
MAX_ID_LENGTH = 200
# A cap so one hostile record cannot make ``to_dense`` allocate gigabytes.
MAX_FEATURE_DIM = 1 << 24
PROBABILITY_SUM_TOLERANCE = 1e-6
PROPENSITY_TOLERANCE = 1e-9


class EventError(ValueError):
    """An event that cannot be applied; ``str(err)`` is the dead-letter reason."""


# --- field checks: each names the field, says what was wrong and what is allowed ------------------
def _text(field: str, value: Any, *, nonempty: bool = True) -> str:
    if not isinstance(value, str):
        raise EventError(f"field {field!r} must be a string, got {_kind(value)}")
    if nonempty and not value:
        raise EventError(f"field {field!r} must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise EventError(f"field {field!r} is not valid Unicode text (lone surrogate)") from None
    return value


def _identifier(field: str, value: Any) -> str:
    text = _text(field, value)
    if len(text) > MAX_ID_LENGTH:
        raise EventError(f"field {field!r} is {len(text)} characters long; at most {MAX_ID_LENGTH}")
    return text


def _number(field: str, value: Any) -> float:
    # bool is an int subclass, but true/false as a number is always a producer bug. (JSON's own
    # float and int skip the slower ABC check.)
    if type(value) is not float and type(value) is not int and (
        isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real)
    ):
        raise EventError(f"field {field!r} must be a number, got {_kind(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise EventError(f"field {field!r} must be a finite number, got {value!r}")
    return number


def _integer(field: str, value: Any) -> int:
    if type(value) is not int and (
        isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral)
    ):
        raise EventError(f"field {field!r} must be an integer, got {_kind(value)}")
    return int(value)


def _non_negative(field: str, value: Any) -> float:
    number = _number(field, value)
    if number < 0:
        raise EventError(f"field {field!r} must be >= 0, got {number!r}")
    return number


def _sequence(field: str, value: Any) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple | np.ndarray):
        raise EventError(f"field {field!r} must be a list, got {_kind(value)}")
    return tuple(value.tolist() if isinstance(value, np.ndarray) else value)


def _numbers(field: str, value: Any) -> tuple[float, ...]:
    items = _sequence(field, value)
    # Fast path for what JSON produces (bool is excluded: its type is not int), ~10x faster: a
    # sum is finite only if every term is (a NaN or an infinity, or an overflow, takes the slow
    # path, which names the culprit).
    kinds = set(map(type, items))
    if kinds <= _JSON_NUMBERS:
        try:
            numbers = items if kinds <= _FLOAT else tuple(map(float, items))
        except OverflowError:
            pass
        else:
            if math.isfinite(sum(numbers)):
                return numbers
    return tuple(_number(field, v) for v in items)


def _integers(field: str, value: Any) -> tuple[int, ...]:
    items = _sequence(field, value)
    if set(map(type, items)) <= _INT:
        return items
    return tuple(_integer(field, v) for v in items)


_JSON_NUMBERS, _FLOAT, _INT = frozenset((float, int)), frozenset((float,)), frozenset((int,))


def _kind(value: Any) -> str:
    """What a value is, in JSON's words where it has them."""
    for kinds, name in (
        (type(None), "null"),
        (bool | np.bool_, "a boolean"),
        (str, "a string"),
        (numbers.Number, "a number"),
        (list | tuple, "an array"),
        (dict, "an object"),
    ):
        if isinstance(value, kinds):
            return name
    return type(value).__name__


# --- the events --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SparseFeatures:
    """A context vector as its nonzero entries: ``indices`` strictly increasing in ``[0, dim)``.

    >>> f = SparseFeatures.from_dense(np.array([0.0, 0.5, 0.0, -2.0]))
    >>> f
    SparseFeatures(dim=4, indices=(1, 3), values=(0.5, -2.0))
    >>> f.to_dense().tolist()
    [0.0, 0.5, 0.0, -2.0]
    """

    dim: int
    indices: tuple[int, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        dim = _integer("features.dim", self.dim)
        if not 1 <= dim <= MAX_FEATURE_DIM:
            raise EventError(f"field 'features.dim' must be in [1, {MAX_FEATURE_DIM}], got {dim}")
        indices = _integers("features.indices", self.indices)
        values = _numbers("features.values", self.values)
        if len(indices) != len(values):
            raise EventError(
                f"field 'features.indices' has {len(indices)} entries but 'features.values' has"
                f" {len(values)}; they must pair up"
            )
        if not all(map(operator.lt, indices, indices[1:])):
            raise EventError("field 'features.indices' must be strictly increasing")
        if indices and (indices[0] < 0 or indices[-1] >= dim):
            raise EventError(
                f"field 'features.indices' must lie in [0, {dim}) (features.dim), got"
                f" {indices[0] if indices[0] < 0 else indices[-1]}"
            )
        object.__setattr__(self, "dim", dim)
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "values", values)

    @classmethod
    def from_dense(cls, x: np.ndarray) -> SparseFeatures:
        """The nonzero entries of a 1-D vector."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"features must be a 1-D vector, got shape {x.shape}")
        nonzero = np.flatnonzero(x)
        return cls(dim=x.size, indices=tuple(nonzero.tolist()), values=tuple(x[nonzero].tolist()))

    def to_dense(self) -> np.ndarray:
        """The float64 vector of length ``dim``."""
        x = np.zeros(self.dim, dtype=np.float64)
        x[list(self.indices)] = self.values
        return x


@dataclass(frozen=True)
class DecisionEvent:
    """One routing decision as logged: the context, the distribution it was sampled from, the pick.

    ``preference`` is ``(quality, cost, latency)`` as the request gave it (not renormalised);
    ``propensity`` is ``probabilities[arms.index(chosen)]``.
    """

    SCHEMA: ClassVar[str] = DECISION_SCHEMA

    decision_id: str
    ts: float
    policy: str
    policy_version: int
    arms: tuple[str, ...]
    chosen: str
    propensity: float
    probabilities: tuple[float, ...]
    preference: tuple[float, float, float]
    features: SparseFeatures
    tenant: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "decision_id", _identifier("decision_id", self.decision_id))
        set_(self, "ts", _non_negative("ts", self.ts))
        set_(self, "policy", _text("policy", self.policy))
        version = _integer("policy_version", self.policy_version)
        if version < 0:
            raise EventError(f"field 'policy_version' must be >= 0, got {version}")
        set_(self, "policy_version", version)

        arms = tuple(_text("arms", a) for a in _sequence("arms", self.arms))
        if not arms:
            raise EventError("field 'arms' must list at least one arm")
        if len(set(arms)) != len(arms):
            duplicates = sorted({a for a in arms if arms.count(a) > 1})
            raise EventError(f"field 'arms' has duplicate arms {duplicates}; each arm appears once")
        set_(self, "arms", arms)
        chosen = _text("chosen", self.chosen)
        if chosen not in arms:
            raise EventError(
                f"field 'chosen' is {chosen!r}, which is not one of 'arms' {list(arms)}"
            )
        set_(self, "chosen", chosen)

        propensity = _number("propensity", self.propensity)
        if not 0.0 < propensity <= 1.0:
            raise EventError(f"field 'propensity' must be in (0, 1], got {propensity!r}")
        set_(self, "propensity", propensity)
        probabilities = _numbers("probabilities", self.probabilities)
        if len(probabilities) != len(arms):
            raise EventError(
                f"field 'probabilities' has {len(probabilities)} entries for {len(arms)} arms;"
                " one per arm, in the order of 'arms'"
            )
        if any(p < 0 for p in probabilities):
            raise EventError(f"field 'probabilities' has a negative entry: {list(probabilities)}")
        total = math.fsum(probabilities)
        if abs(total - 1.0) > PROBABILITY_SUM_TOLERANCE:
            raise EventError(
                f"field 'probabilities' sums to {total:.9g}; it must sum to 1"
                f" within {PROBABILITY_SUM_TOLERANCE:g}"
            )
        logged = probabilities[arms.index(chosen)]
        if abs(logged - propensity) > PROPENSITY_TOLERANCE:
            raise EventError(
                f"field 'propensity' is {propensity!r} but 'probabilities' gives the chosen arm"
                f" {chosen!r} {logged!r}; they must agree within {PROPENSITY_TOLERANCE:g}"
            )
        set_(self, "probabilities", probabilities)

        weights = _sequence("preference", self.preference)
        if len(weights) != 3:
            raise EventError(
                f"field 'preference' needs 3 weights (quality, cost, latency), got {len(weights)}"
            )
        names = ("preference.quality", "preference.cost", "preference.latency")
        preference = tuple(_non_negative(n, w) for n, w in zip(names, weights, strict=True))
        if not any(preference):
            raise EventError("field 'preference' weights must not all be zero")
        set_(self, "preference", preference)

        if not isinstance(self.features, SparseFeatures):
            raise EventError(f"field 'features' must be SparseFeatures, got {_kind(self.features)}")
        if self.tenant is not None:
            set_(self, "tenant", _text("tenant", self.tenant))


@dataclass(frozen=True)
class FeedbackEvent:
    """How the chosen model did on one decision. ``cost`` (USD) and ``latency_ms`` are optional."""

    SCHEMA: ClassVar[str] = FEEDBACK_SCHEMA

    feedback_id: str
    decision_id: str
    ts: float
    quality: float
    cost: float | None = None
    latency_ms: float | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "feedback_id", _identifier("feedback_id", self.feedback_id))
        set_(self, "decision_id", _identifier("decision_id", self.decision_id))
        set_(self, "ts", _non_negative("ts", self.ts))
        quality = _number("quality", self.quality)
        if not 0.0 <= quality <= 1.0:
            raise EventError(f"field 'quality' must be in [0, 1], got {quality!r}")
        set_(self, "quality", quality)
        if self.cost is not None:
            set_(self, "cost", _non_negative("cost", self.cost))
        if self.latency_ms is not None:
            set_(self, "latency_ms", _non_negative("latency_ms", self.latency_ms))


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be applied, where it came from, and why."""

    SCHEMA: ClassVar[str] = DEADLETTER_SCHEMA

    source_topic: str
    partition: int
    offset: int
    reason: str
    payload: str

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "source_topic", _text("source_topic", self.source_topic))
        # offset -1: unknown (feedback that waited across a restart; its origin is not stored)
        for field, smallest in (("partition", 0), ("offset", -1)):
            number = _integer(field, getattr(self, field))
            if number < smallest:
                raise EventError(f"field {field!r} must be >= {smallest}, got {number}")
            set_(self, field, number)
        set_(self, "reason", _text("reason", self.reason))
        set_(self, "payload", _text("payload", self.payload, nonempty=False))

    @classmethod
    def of(
        cls, source_topic: str, partition: int, offset: int, value: bytes | None, reason: str
    ) -> DeadLetter:
        """The dead letter for a raw record value; undecodable bytes become U+FFFD.

        >>> DeadLetter.of("router.feedback", 0, 7, b"\\xffoops", "not UTF-8").payload
        '\\ufffdoops'
        """
        payload = (value or b"").decode("utf-8", errors="replace")
        # Lone surrogates cannot come out of a UTF-8 decode, so the payload is always encodable.
        return cls(source_topic, partition, offset, reason, payload)


# --- encode / decode ---------------------------------------------------------------------------
def encode(event: DecisionEvent | FeedbackEvent | DeadLetter) -> bytes:
    """Compact ASCII JSON, ``"schema"`` first; optional fields that are ``None`` are left out.

    orjson writes it (a decision's ~200 floats cost json.dumps ~100 us, orjson ~10 us); text
    with non-ASCII characters goes through json.dumps, whose ``\\u`` escapes keep the record
    ASCII. orjson spells a few floats differently from json.dumps (``0.000012`` for ``1.2e-05``):
    the same shortest round-trip digits, so every JSON decoder reads the same value.

    >>> feedback = FeedbackEvent("f1", "d1", ts=1700000000.0, quality=0.75)
    >>> encode(feedback)
    b'{"schema":"feedback/1","feedback_id":"f1","decision_id":"d1","ts":1700000000.0,"quality":0.75}'
    >>> decode(encode(feedback)) == feedback
    True
    """
    body: dict[str, Any]
    if isinstance(event, DecisionEvent):
        body = {
            "schema": DECISION_SCHEMA,
            "decision_id": event.decision_id,
            "ts": event.ts,
            "policy": event.policy,
            "policy_version": event.policy_version,
            "arms": event.arms,
            "chosen": event.chosen,
            "propensity": event.propensity,
            "probabilities": event.probabilities,
            "preference": dict(zip(OBJECTIVES, event.preference, strict=True)),
            "features": {
                "dim": event.features.dim,
                "indices": event.features.indices,
                "values": event.features.values,
            },
        }
        if event.tenant is not None:
            body["tenant"] = event.tenant
    elif isinstance(event, FeedbackEvent):
        body = {
            "schema": FEEDBACK_SCHEMA,
            "feedback_id": event.feedback_id,
            "decision_id": event.decision_id,
            "ts": event.ts,
            "quality": event.quality,
        }
        if event.cost is not None:
            body["cost"] = event.cost
        if event.latency_ms is not None:
            body["latency_ms"] = event.latency_ms
    elif isinstance(event, DeadLetter):
        body = {
            "schema": DEADLETTER_SCHEMA,
            "source_topic": event.source_topic,
            "partition": event.partition,
            "offset": event.offset,
            "reason": event.reason,
            "payload": event.payload,
        }
    else:
        raise TypeError(f"cannot encode {type(event).__name__}; expected a streams.events event")
    # Built events hold finite floats, plain ints and valid Unicode, all of which orjson writes.
    encoded = orjson.dumps(body)
    if encoded.isascii():
        return encoded
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode("ascii")


def decode(value: bytes) -> DecisionEvent | FeedbackEvent:
    """Parse and validate one record value of ``router.decisions`` or ``router.feedback``.

    Unknown extra fields are ignored (forward compatibility). Raises ``EventError`` naming the
    offending field for anything else that is wrong.

    >>> decode(b'{"schema":"feedback/1","feedback_id":"f1","decision_id":"d1","ts":1,"quality":2}')
    Traceback (most recent call last):
    ...
    streams.events.EventError: field 'quality' must be in [0, 1], got 2.0
    """
    if not isinstance(value, bytes | bytearray | memoryview):
        raise EventError(f"record value must be bytes, got {_kind(value)}")
    try:
        text = bytes(value).decode("utf-8")
    except UnicodeDecodeError as err:
        raise EventError(f"record value is not UTF-8: {err.reason} at byte {err.start}") from None
    try:
        # orjson is ~8x faster on the float arrays of a decision; whatever it refuses (NaN,
        # integers beyond 64 bits, lone surrogates...) goes through json, whose errors and
        # lenient values the field checks in _event turn into messages naming the field.
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        body = _strict_loads(text)
    return _event(body)


def _strict_loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as err:  # JSONDecodeError, and ints longer than Python's digit limit
        raise EventError(f"record value is not JSON: {err}") from None
    except RecursionError:
        raise EventError("record value is not JSON this decoder accepts: nested too deep") from None


def _event(body: Any) -> DecisionEvent | FeedbackEvent:
    if not isinstance(body, dict):
        raise EventError(f"record value must be a JSON object, got {_kind(body)}")
    schema = _text("schema", _required(body, "schema"))
    if schema == DECISION_SCHEMA:
        return _decision(body)
    if schema == FEEDBACK_SCHEMA:
        return _feedback(body)
    expected = f"{DECISION_SCHEMA!r} or {FEEDBACK_SCHEMA!r}"
    raise EventError(f"unknown schema {schema!r}; expected {expected}")


def _required(body: Mapping[str, Any], field: str, prefix: str = "") -> Any:
    if field not in body:
        raise EventError(f"missing field {prefix + field!r}")
    return body[field]


def _optional(body: Mapping[str, Any], field: str) -> Any:
    # Absent and null both mean "not given".
    return body.get(field)


def _object(body: Mapping[str, Any], field: str) -> Mapping[str, Any]:
    value = _required(body, field)
    if not isinstance(value, dict):
        raise EventError(f"field {field!r} must be a JSON object, got {_kind(value)}")
    return value


def _decision(body: Mapping[str, Any]) -> DecisionEvent:
    preference = _object(body, "preference")
    features = _object(body, "features")
    # Everything is read before anything is built, so a missing field is reported as missing.
    fields = {
        name: _required(body, name)
        for name in (
            "decision_id",
            "ts",
            "policy",
            "policy_version",
            "arms",
            "chosen",
            "propensity",
            "probabilities",
        )
    }
    weights = (
        _required(preference, "quality", "preference."),
        _required(preference, "cost", "preference."),
        _required(preference, "latency", "preference."),
    )
    dim, indices, values = (
        _required(features, k, "features.") for k in ("dim", "indices", "values")
    )
    return DecisionEvent(
        **fields,
        preference=weights,
        features=SparseFeatures(dim=dim, indices=indices, values=values),
        tenant=_optional(body, "tenant"),
    )


def _feedback(body: Mapping[str, Any]) -> FeedbackEvent:
    return FeedbackEvent(
        feedback_id=_required(body, "feedback_id"),
        decision_id=_required(body, "decision_id"),
        ts=_required(body, "ts"),
        quality=_required(body, "quality"),
        cost=_optional(body, "cost"),
        latency_ms=_optional(body, "latency_ms"),
    )
