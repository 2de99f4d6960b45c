"""Bandit math: preference and utility, the policy interface, linear bandits, a Vowpal Wabbit learner,
baselines, off-policy estimators.

Pure numpy/scipy/vowpalwabbit: no I/O (beyond VW's model file in a temporary directory), no imports
from `streams` or `bandit_router`.
"""

from policies.barp import BaRP
from policies.base import DEFAULT_FLOOR, LoggedEvents, Policy, argmax_distribution, with_floor
from policies.baselines import EpsilonGreedy, FixedArm, UniformRandom
from policies.linear import LinearPolicy
from policies.lints import LinTS
from policies.linucb import LinUCB
from policies.offpolicy import Estimate, doubly_robust, ips, snips
from policies.oracle import oracle_choices, oracle_utilities
from policies.preference import (
    OBJECTIVES,
    Outcome,
    Preference,
    Scales,
    normalize_columns,
    normalized,
    normalized_rows,
    utilities,
    utility,
)
from policies.vw import VowpalWabbit

POLICY_TYPES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (LinUCB, LinTS, VowpalWabbit, BaRP, UniformRandom, FixedArm, EpsilonGreedy)
}

__all__ = [
    "DEFAULT_FLOOR",
    "OBJECTIVES",
    "POLICY_TYPES",
    "BaRP",
    "EpsilonGreedy",
    "Estimate",
    "FixedArm",
    "LinTS",
    "LinUCB",
    "LinearPolicy",
    "LoggedEvents",
    "Outcome",
    "Policy",
    "Preference",
    "Scales",
    "UniformRandom",
    "VowpalWabbit",
    "argmax_distribution",
    "doubly_robust",
    "ips",
    "normalize_columns",
    "normalized_rows",
    "normalized",
    "oracle_choices",
    "oracle_utilities",
    "snips",
    "utilities",
    "utility",
    "with_floor",
]
