"""API replicas: a service without a learner picks up the learner's newest snapshots and catalog
changes, and then routes exactly as the learner's own policies would."""

from __future__ import annotations

import numpy as np

from bandit_router.catalog import CatalogModel
from bandit_router.service import RouterService
from policies import Preference
from tests.api_support import settings_for, wait_for


def test_a_replica_reloads_snapshots_and_the_catalog(tmp_path) -> None:
    settings = settings_for(tmp_path)
    learner_side = RouterService.open(settings)
    learner_side.start()
    replica = RouterService.open(settings, run_learner=False)
    try:
        assert replica.learner is None and replica.active_learner is None
        assert replica.readiness()["learner"] == "external"
        for i in range(60):
            routed = learner_side.route(prompt=f"prompt number {i} " * (i % 7 + 1), cost_weight=0.3)
            learner_side.feedback(decision_id=routed.decision_id, quality=(i % 5) / 4)
        wait_for(lambda: learner_side.storage.stats()["feedback_applied"] == 60)
        learner_side.put_model(CatalogModel("newcomer", price_per_call=0.0001))
        learner_side.learner_thread.stop()  # its final commit holds every update

        assert replica.policies["linucb"].updates == 0
        assert sorted(replica.reload()) == sorted(settings.policies)
        assert replica.reload() == []  # nothing newer: nothing swapped
        x = replica.featurizer.transform("is this prompt routed the same?")
        arms = [m.name for m in replica.list_models()]
        assert "newcomer" in arms
        for name in settings.policies:
            ours, theirs = replica.policies[name], learner_side.policies[name]
            assert ours.updates == theirs.updates == 60
            assert np.array_equal(
                ours.probabilities(x, arms, Preference.from_cost_weight(0.3)),
                theirs.probabilities(x, arms, Preference.from_cost_weight(0.3)),
            )
    finally:
        replica.close()
        learner_side.close()
