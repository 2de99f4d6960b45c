"""One trained policy, many trade-offs: the same prompt at cost_weight 0.1 and 0.9 goes to different
models where the learned estimates call for it (synthetic data, learned through the service)."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from bandit_router.api import create_app
from bandit_router.catalog import CatalogModel
from bandit_router.service import RouterService
from bandit_router.synth import MODEL_LADDER, generate
from policies import Preference
from tests.api_support import applied, settings_for, wait_for

TRAIN_ROWS = 1200


def test_cost_weight_changes_the_choice_for_the_same_prompt(tmp_path):
    data = generate(models=3, rows=TRAIN_ROWS + 200, seed=11)
    prices = {m.name: m for m in MODEL_LADDER}
    catalog = [
        CatalogModel(name, price_in_per_m=prices[name].price_in_per_m,
                     price_out_per_m=prices[name].price_out_per_m)
        for name in data.models
    ]
    settings = settings_for(tmp_path, feature_dim=256, snapshot_every_s=0.2)
    service = RouterService.open(settings, seed_models=catalog)
    with TestClient(create_app(settings, service=service)) as client:

        # Uniform logging policy, so every model gets feedback; the serving LinUCB learns in shadow.
        rng = np.random.default_rng(0)
        for row in range(TRAIN_ROWS):
            decision = service.route(
                prompt=data.prompts[row], policy="random", cost_weight=float(rng.random())
            )
            arm = data.models.index(decision.model)
            service.feedback(
                decision_id=decision.decision_id,
                quality=float(data.quality[row, arm]),
                cost=float(data.cost[row, arm]),
            )
        wait_for(applied(client, TRAIN_ROWS), timeout_s=60)

        linucb = service.policies["linucb"]
        cheap, dear = Preference.from_cost_weight(0.9), Preference.from_cost_weight(0.1)
        held_out = range(TRAIN_ROWS, TRAIN_ROWS + 200)
        with service.policies.lock:
            picks = [
                (row, linucb.probabilities(x, data.models, dear).argmax(),
                 linucb.probabilities(x, data.models, cheap).argmax())
                for row in held_out
                for x in [service.featurizer.transform(data.prompts[row])]
            ]
        differing = [(row, a, b) for row, a, b in picks if a != b]
        assert len(differing) >= 20, f"only {len(differing)} of 200 prompts change with cost weight"
        row, quality_pick, cost_pick = differing[0]

        answers = {
            weight: client.post(
                "/v1/route", json={"prompt": data.prompts[row], "cost_weight": weight}
            ).json()
            for weight in (0.1, 0.9)
        }
        assert answers[0.1]["policy_version"] == answers[0.9]["policy_version"] == TRAIN_ROWS
        top = {w: max(a["probabilities"], key=a["probabilities"].get) for w, a in answers.items()}
        assert top[0.1] == data.models[quality_pick] and top[0.9] == data.models[cost_pick]
        assert top[0.1] != top[0.9]
        assert all(max(a["probabilities"].values()) >= 0.98 for a in answers.values())
        # The learned estimates call for it: the quality-leaning pick is truly better on this
        # prompt, and the cost-leaning pick truly cheaper.
        assert data.expected_quality[row, quality_pick] > data.expected_quality[row, cost_pick]
        assert data.cost[row, cost_pick] < data.cost[row, quality_pick]
        expected = {w: a["expected"] for w, a in answers.items()}
        assert expected[0.1]["quality"] > expected[0.9]["quality"]
        assert expected[0.1]["cost"] > expected[0.9]["cost"]
