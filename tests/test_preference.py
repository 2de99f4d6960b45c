"""The one utility definition: normalisation of preferences, capped cost and latency penalties."""

from __future__ import annotations

import numpy as np
import pytest

from policies import Outcome, Preference, Scales, normalize_columns, normalized, utilities, utility


def test_preference_is_normalised_and_validated():
    assert Preference(quality=3, cost=1, latency=0).vector.tolist() == [0.75, 0.25, 0.0]
    assert Preference.from_vector([1, 1, 2]).latency == 0.5
    assert Preference.from_cost_weight(0.0).vector.tolist() == [1.0, 0.0, 0.0]
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="cost_weight"):
            Preference.from_cost_weight(bad)
    with pytest.raises(ValueError, match=">= 0"):
        Preference(quality=1, cost=-1)
    with pytest.raises(ValueError, match="all be zero"):
        Preference(0, 0, 0)
    with pytest.raises(ValueError, match="3 weights"):
        Preference.from_vector([1, 2])


def test_utility_matches_the_formula_with_caps():
    scales = Scales(cost=0.01, latency_ms=1000)
    w = Preference(quality=0.5, cost=0.3, latency=0.2)
    assert utility(Outcome(0.8, cost=0.005, latency_ms=250), w, scales) == pytest.approx(
        0.5 * 0.8 - 0.3 * 0.5 - 0.2 * 0.25
    )
    # above the scale the penalty is capped at the full weight
    assert utility(Outcome(0.8, cost=5.0, latency_ms=1e9), w, scales) == pytest.approx(0.4 - 0.5)
    # unknown cost/latency counts as zero
    assert utility(Outcome(0.8), w, scales) == pytest.approx(0.4)


def test_vectorised_forms_agree_with_the_scalar_one():
    rng = np.random.default_rng(0)
    scales = Scales(cost=0.01, latency_ms=1000)
    q, c, lat = rng.random(50), rng.random(50) * 0.03, rng.random(50) * 3000
    w = Preference(0.6, 0.3, 0.1)
    table = normalize_columns(q, c, lat, scales)
    expected = [utility(Outcome(*v), w, scales) for v in zip(q, c, lat, strict=True)]
    np.testing.assert_allclose(utilities(table, w), expected, atol=1e-12)
    np.testing.assert_allclose(table[7], normalized(Outcome(q[7], c[7], lat[7]), scales))
    with pytest.raises(ValueError, match="scales"):
        Scales(cost=0)
