"""What a route request asks for, checked: its context, preference, policy and candidate models.

Each function turns one part of a `RouterService.decide` request into what the policies take, or
raises an `InvalidRequestError` (HTTP 422) or `ConflictError` (409) naming the field at fault.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from bandit_router.catalog import CatalogModel
from bandit_router.featurizer import Featurizer
from bandit_router.policy_set import PolicySet
from bandit_router.service_errors import ConflictError, InvalidRequestError
from policies import Preference

MAX_FEATURE_MAGNITUDE = 1e6  # larger context values overflow the policies' quadratic forms


def request_context(
    featurizer: Featurizer, prompt: str | None, features: Sequence[float] | None
) -> np.ndarray:
    """The context vector: the featurized prompt, or the caller's own features.

    >>> request_context(Featurizer(dim=32), None, [0.5] * 32).shape
    (32,)
    >>> request_context(Featurizer(dim=32), None, [0.5] * 3)
    Traceback (most recent call last):
    ...
    bandit_router.service_errors.InvalidRequestError: features: expected 32 numbers (feature_dim), got 3
    """
    if (prompt is None) == (features is None):
        raise InvalidRequestError("prompt", "give exactly one of prompt (text) or features (numbers)")
    if prompt is not None:
        return featurizer.transform(prompt)
    x = np.asarray(features, dtype=float)
    if x.shape != (featurizer.dim,):
        raise InvalidRequestError(
            "features", f"expected {featurizer.dim} numbers (feature_dim), got {x.size}"
        )
    if not np.all(np.isfinite(x)) or np.abs(x).max() > MAX_FEATURE_MAGNITUDE:
        raise InvalidRequestError(
            "features", f"every value must be finite and within +-{MAX_FEATURE_MAGNITUDE:g}"
        )
    return x


def request_preference(
    default_cost_weight: float, preference: Preference | None, cost_weight: float | None
) -> Preference:
    """The request's preference: given whole, from its ``cost_weight``, or the default.

    >>> request_preference(0.2, None, None).cost
    0.2
    """
    if preference is not None and cost_weight is not None:
        raise InvalidRequestError("cost_weight", "give preference or cost_weight, not both")
    if preference is not None:
        return preference
    weight = default_cost_weight if cost_weight is None else cost_weight
    try:
        return Preference.from_cost_weight(weight)
    except ValueError as error:
        raise InvalidRequestError("cost_weight", str(error)) from None


def request_policy(policies: PolicySet, policy: str | None) -> str:
    """The policy to route with: the one named, or the serving one."""
    if policy is None:
        return policies.serving
    if policy not in policies:
        raise InvalidRequestError(
            "policy", f"unknown policy {policy!r}; choose from {', '.join(policies)}"
        )
    return policy


def request_candidates(
    catalog: Mapping[str, CatalogModel], models: Sequence[str] | None
) -> list[str]:
    """The candidate models: those named (each once, each enabled), or every enabled one."""
    if models is None:
        candidates = [name for name, model in catalog.items() if model.enabled]
        if not candidates:
            raise ConflictError(
                "models", "the catalog has no enabled model; add one with PUT /v1/models/{name}"
            )
        return candidates
    if not models:
        raise InvalidRequestError("models", "the candidate list is empty; name at least one")
    if len(set(models)) != len(models):
        duplicates = sorted({m for m in models if list(models).count(m) > 1})
        raise InvalidRequestError("models", f"{', '.join(duplicates)} listed more than once")
    for name in models:
        model = catalog.get(name)
        if model is None or not model.enabled:
            enabled = [n for n, m in catalog.items() if m.enabled]
            state = "unknown" if model is None else "disabled"
            raise InvalidRequestError(
                "models",
                f"{state} model {name!r}; enabled models: {', '.join(enabled) or '(none)'}",
            )
    return list(models)
