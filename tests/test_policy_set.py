"""PolicySet: LinUCB and LinTS learn one shared model when they hold the same one."""

from __future__ import annotations

import numpy as np
import pytest

from bandit_router.catalog import DEMO_CATALOG
from bandit_router.config import Settings
from bandit_router.featurizer import Featurizer
from bandit_router.policy_set import PolicySet
from bandit_router.storage import Snapshot, StorageError
from policies import Outcome, Preference


def test_fresh_and_restored_linear_policies_share_their_model() -> None:
    settings = Settings(feature_dim=64)
    featurizer = Featurizer(64)
    fresh = PolicySet.load(settings, featurizer, DEMO_CATALOG, {})
    assert fresh["lints"].model is fresh["linucb"].model
    x = featurizer.transform("share the work")
    preference = Preference.from_cost_weight(0.2)
    for policy in fresh.policies.values():
        policy.update(x, DEMO_CATALOG[0].name, Outcome(0.8, 0.001), preference, 0.5)
    assert fresh["linucb"].model.events == 1 == fresh["lints"].updates

    snapshots = {name: Snapshot(1, 1, policy.state()) for name, policy in fresh.items()}
    restored = PolicySet.load(settings, featurizer, DEMO_CATALOG, snapshots)
    assert restored["lints"].model is restored["linucb"].model
    assert np.array_equal(restored["linucb"].state()["full.a_inv"], fresh["linucb"].state()["full.a_inv"])

    untrained = PolicySet.load(settings, featurizer, DEMO_CATALOG, {})["lints"]
    snapshots["lints"] = Snapshot(0, 0, untrained.state())
    apart = PolicySet.load(settings, featurizer, DEMO_CATALOG, snapshots)
    assert apart["lints"].model is not apart["linucb"].model  # different histories


def test_a_stored_policy_of_another_feature_dim_is_refused_at_load() -> None:
    settings = Settings(feature_dim=64, policies=["linucb", "vw"])
    narrow = PolicySet.load(settings, Featurizer(64), DEMO_CATALOG, {})
    for name in ("linucb", "vw"):
        snapshots = {name: Snapshot(0, 0, narrow[name].state())}
        wide = Settings(feature_dim=128, policies=[name], serving_policy=name)
        message = rf"stored {name} policy reads 64 features but feature_dim is 128"
        with pytest.raises(StorageError, match=message):
            PolicySet.load(wide, Featurizer(128), DEMO_CATALOG, snapshots)
