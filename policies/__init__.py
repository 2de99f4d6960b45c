"""Bandit math: preference and utility, the policy interface, linear bandits, baselines, off-policy
estimators.

Pure numpy/scipy: no I/O, no imports from `streams` or `bandit_router`.
"""

from policies.barp import BaRP
from policies.base import DEFAULT_FLOOR, Policy, argmax_distribution, with_floor
from policies.baselines import EpsilonGreedy, FixedArm, UniformRandom
from policies.linear import LinearPolicy
from policies.lints import LinTS
from policies.linucb import LinUCB
from policies.offpolicy import Estimate, doubly_robust, ips, snips
from policies.oracle import oracle_choices, oracle_utilities
from policies.preference import (
    Outcome,
    Preference,
    Scales,
    normalize_columns,
    normalized,
    utilities,
    utility,
)

POLICY_TYPES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (LinUCB, LinTS, BaRP, UniformRandom, FixedArm, EpsilonGreedy)
}

__all__ = [
    "DEFAULT_FLOOR",
    "POLICY_TYPES",
    "BaRP",
    "EpsilonGreedy",
    "Estimate",
    "FixedArm",
    "LinTS",
    "LinUCB",
    "LinearPolicy",
    "Outcome",
    "Policy",
    "Preference",
    "Scales",
    "UniformRandom",
    "argmax_distribution",
    "doubly_robust",
    "ips",
    "normalize_columns",
    "normalized",
    "oracle_choices",
    "oracle_utilities",
    "snips",
    "utilities",
    "utility",
    "with_floor",
]
