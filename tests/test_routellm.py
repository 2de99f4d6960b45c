"""Real data (GPT-4 vs Mixtral on 8,977 MMLU/GSM8K prompts): learning must not cost more than 0.005
utility against the better single model. The committed study is bench/results/routellm/."""

from __future__ import annotations

import pytest
from threadpoolctl import threadpool_limits

from bandit_router.dataset import load_routing_csv
from bandit_router.replay import ReplayConfig, replay


@pytest.mark.slow
def test_linucb_is_within_0_005_of_the_better_single_model(real_data):
    with threadpool_limits(limits=1, user_api="blas"):
        results = replay(
            load_routing_csv(real_data),
            ReplayConfig(policies=("linucb",), cost_weights=(0.1, 0.2), seed=0),
            progress=False,
        )
    assert results["rows"] == 8977
    gpt4_share = {}
    for weight in (0.1, 0.2):
        best = max(m["utility"] for m in results["models"] if m["cost_weight"] == weight)
        linucb = next(r for r in results["runs"] if r["cost_weight"] == weight)
        assert linucb["utility"] >= best - 0.005, (weight, linucb["utility"] - best)
        gpt4_share[weight] = linucb["choices"]["gpt-4-1106-preview"] / results["rows"]
    # GPT-4 is clearly better at 0.1 and about even with Mixtral at 0.2: the routing follows
    # (measured at seed 0: 0.94 -> 0.81)
    assert gpt4_share[0.1] > 0.85
    assert gpt4_share[0.2] < gpt4_share[0.1] - 0.1
