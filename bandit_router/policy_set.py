"""Every configured policy by name behind one lock: the learner writes them, the API reads them.

Built from the learner's newest snapshots (or fresh), with every catalog model as an arm.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from bandit_router.barp_training import load_snapshot
from bandit_router.catalog import CatalogModel, default_cost_scale, typical_cost
from bandit_router.config import Settings
from bandit_router.featurizer import Featurizer
from bandit_router.policy_factory import PolicyParams, make_policy
from bandit_router.storage import Snapshot, StorageError
from policies import POLICY_TYPES, BaRP, LinearPolicy, Outcome, Policy, Scales, VowpalWabbit

UNKNOWN_QUALITY_PRIOR = 0.5


def prior_outcome(model: CatalogModel | None) -> Outcome:
    """A new arm's outcome guess: the catalog's prior quality (else 0.5) and its typical cost."""
    if model is None:
        return Outcome(quality=UNKNOWN_QUALITY_PRIOR)
    quality = UNKNOWN_QUALITY_PRIOR if model.prior_quality is None else model.prior_quality
    return Outcome(quality=quality, cost=typical_cost(model))


def restore_policy(name: str, state: dict[str, np.ndarray], featurizer: Featurizer) -> Policy:
    """The policy called ``name`` rebuilt from a stored state; refused (`StorageError`) if it
    reads another number of features than ``featurizer`` produces."""
    return _check_feature_dim(name, POLICY_TYPES[name].from_state(state), featurizer)


def _check_feature_dim(name: str, policy: Policy, featurizer: Featurizer) -> Policy:
    if isinstance(policy, LinearPolicy | BaRP | VowpalWabbit) and policy.dim != featurizer.dim:
        raise StorageError(
            f"the stored {name} policy reads {policy.dim} features but feature_dim "
            f"is {featurizer.dim}; set feature_dim back to {policy.dim} or use a new "
            "database"
        )
    return policy


class PolicySet:
    """The policies of one process and the `threading.RLock` that guards every read and write.

    Callers hold ``lock`` around any use of a policy: probabilities (the API), updates and
    snapshots (the learner), adding arms (catalog changes).
    """

    def __init__(self, policies: Mapping[str, Policy], serving: str) -> None:
        if serving not in policies:
            raise ValueError(f"serving policy {serving!r} is not among {list(policies)}")
        self.policies = dict(policies)
        self.serving = serving
        self.lock = threading.RLock()

    @classmethod
    def load(
        cls,
        settings: Settings,
        featurizer: Featurizer,
        catalog: Iterable[CatalogModel],
        snapshots: Mapping[str, Snapshot],
    ) -> PolicySet:
        """Each policy of ``settings.policies`` from its snapshot if there is one, else fresh
        (BaRP from ``settings.barp_snapshot`` if that is set).

        A fresh policy's cost scale is ``settings.cost_scale`` or, if unset, the catalog's
        `default_cost_scale` at this moment; from then on it lives in the policy's state. Catalog
        models a policy does not know yet are added with their `prior_outcome`.
        """
        catalog = list(catalog)
        scales = Scales(
            cost=settings.cost_scale or default_cost_scale(catalog),
            latency_ms=settings.latency_scale_ms,
        )
        params = PolicyParams(floor=settings.floor)
        policies: dict[str, Policy] = {}
        for name in settings.policies:
            snapshot = snapshots.get(name)
            if snapshot is not None:
                policies[name] = restore_policy(name, snapshot.state, featurizer)
            elif name == "barp" and settings.barp_snapshot is not None:
                policies[name] = _check_feature_dim(name, load_snapshot(settings.barp_snapshot), featurizer)
            else:
                policies[name] = make_policy(name, [], featurizer, scales, params, seed=settings.seed)
        policy_set = cls(policies, settings.serving_policy)
        for model in catalog:
            policy_set.ensure_arm(model.name, prior_outcome(model))
        policy_set.share_linear_models()
        return policy_set

    def share_linear_models(self) -> int:
        """Let linear policies that hold the very same model (LinUCB and LinTS with the same
        priors and history) learn it once for all of them; returns how many now share."""
        linear = [p for p in self.policies.values() if isinstance(p, LinearPolicy)]
        shared = 0
        for i, policy in enumerate(linear):
            shared += any(policy.share_model(leader) for leader in linear[:i])
        return shared

    def ensure_arm(self, arm: str, prior: Outcome) -> None:
        """Add ``arm`` with ``prior`` to every policy that does not have it yet."""
        with self.lock:
            for policy in self.policies.values():
                if arm not in policy.arm_index:
                    policy.add_arm(arm, prior)

    def __getitem__(self, name: str) -> Policy:
        return self.policies[name]

    def __contains__(self, name: object) -> bool:
        return name in self.policies

    def __iter__(self) -> Iterator[str]:
        return iter(self.policies)

    def items(self) -> Iterable[tuple[str, Policy]]:
        return self.policies.items()

    @property
    def serving_policy(self) -> Policy:
        return self.policies[self.serving]
