"""`encode` (orjson) writes what the json.dumps encoder it replaced wrote: the same fields in the
same order with the same values, in ASCII; floats may be spelled differently but parse to the
same double. The reference encoder lives here, for this comparison only."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import pytest

from bandit_router.dataset import load_routing_csv
from bandit_router.featurizer import Featurizer
from streams.events import (
    DeadLetter,
    DecisionEvent,
    FeedbackEvent,
    SparseFeatures,
    decode,
    encode,
)
from tests.test_events import make_decision, make_feedback

SAMPLE = "data/routellm_sample.csv"


def reference_encode(event: DecisionEvent | FeedbackEvent | DeadLetter) -> bytes:
    """The encoder before orjson: json.dumps of the same body."""
    body: dict[str, Any]
    if isinstance(event, DecisionEvent):
        body = {
            "schema": "decision/1",
            "decision_id": event.decision_id,
            "ts": event.ts,
            "policy": event.policy,
            "policy_version": event.policy_version,
            "arms": list(event.arms),
            "chosen": event.chosen,
            "propensity": event.propensity,
            "probabilities": list(event.probabilities),
            "preference": dict(zip(("quality", "cost", "latency"), event.preference, strict=True)),
            "features": {
                "dim": event.features.dim,
                "indices": list(event.features.indices),
                "values": list(event.features.values),
            },
        }
        if event.tenant is not None:
            body["tenant"] = event.tenant
    elif isinstance(event, FeedbackEvent):
        body = {
            "schema": "feedback/1",
            "feedback_id": event.feedback_id,
            "decision_id": event.decision_id,
            "ts": event.ts,
            "quality": event.quality,
        }
        if event.cost is not None:
            body["cost"] = event.cost
        if event.latency_ms is not None:
            body["latency_ms"] = event.latency_ms
    else:
        body = {
            "schema": "deadletter/1",
            "source_topic": event.source_topic,
            "partition": event.partition,
            "offset": event.offset,
            "reason": event.reason,
            "payload": event.payload,
        }
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode("ascii")


def assert_same_record(event: DecisionEvent | FeedbackEvent | DeadLetter) -> None:
    new, old = encode(event), reference_encode(event)
    assert new.isascii()
    # Same keys in the same order and bitwise-equal numbers (json.loads keeps key order).
    new_body, old_body = json.loads(new), json.loads(old)
    assert list(new_body) == list(old_body)
    assert _bits(new_body) == _bits(old_body)
    if not isinstance(event, DeadLetter):
        assert decode(new) == decode(old) == event


def _bits(value: Any) -> Any:
    """``value`` with every float replaced by its 64-bit pattern (so -0.0 != 0.0 here)."""
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    if isinstance(value, dict):
        return [(k, _bits(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_bits(v) for v in value]
    return value


def test_decisions_of_every_sample_prompt_encode_to_the_same_values() -> None:
    featurizer = Featurizer(256)
    rng = np.random.default_rng(0)
    prompts = load_routing_csv(SAMPLE).prompts
    for i, prompt in enumerate(prompts):
        p = rng.dirichlet(np.ones(8))
        event = make_decision(
            decision_id=f"{i:032x}",
            ts=1_700_000_000 + rng.random() * 1e6,
            policy_version=int(rng.integers(0, 10**9)),
            arms=tuple(f"model-{k}" for k in range(8)),
            chosen="model-3",
            propensity=float(p[3]),
            probabilities=tuple(p.tolist()),
            preference=tuple(rng.dirichlet(np.ones(3)).tolist()),
            features=SparseFeatures.from_dense(featurizer.transform(prompt)),
            tenant=None if i % 3 else f"tenant-{i}",
        )
        assert_same_record(event)


@pytest.mark.parametrize("seed", range(5))
def test_floats_of_every_magnitude_keep_their_value(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Random bit patterns: every exponent, subnormals, and the round numbers around the
    # thresholds where repr switches to exponent notation.
    bits = rng.integers(0, 2**63, size=500, dtype=np.uint64)
    values = [v for v in bits.view(np.float64).tolist() if math.isfinite(v)]
    values += [1e-5, 1.2e-05, 1e-4, 9.999e-5, 1e15, 1e16, 1.5e16, 5e-324, 2.2250738585072014e-308]
    values += [-v for v in values] + [0.0, -0.0, 1.0, 0.1, 1 / 3]
    features = SparseFeatures(dim=len(values), indices=tuple(range(len(values))), values=values)
    assert_same_record(make_decision(features=features))


@pytest.mark.parametrize(
    "event",
    [
        make_decision(),
        make_decision(tenant=None),
        make_decision(features=SparseFeatures(dim=4, indices=(), values=())),
        make_decision(decision_id="dé-ü-✓", arms=("ä", "b"), chosen="ä", probabilities=(0.6, 0.4)),
        make_decision(tenant="テナント"),
        make_feedback(),
        make_feedback(cost=None, latency_ms=None),
        make_feedback(ts=0.1 + 0.2, quality=1 / 3, cost=1.5e-06),
        DeadLetter("router.feedback", 0, 7, "not JSON", "{oops"),
        DeadLetter("router.feedback", 0, -1, "bad", "\ufffdnon-ASCII ✓ payload"),
    ],
)
def test_every_event_kind_and_non_ascii_text(event: Any) -> None:
    assert_same_record(event)


def test_plain_ascii_records_are_byte_identical_where_floats_are_spelled_alike() -> None:
    feedback = FeedbackEvent("f1", "d1", ts=1700000000.0, quality=0.75, cost=0.0021)
    assert encode(feedback) == reference_encode(feedback)
    assert encode(make_decision()) == reference_encode(make_decision())
