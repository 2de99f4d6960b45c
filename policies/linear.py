"""What LinUCB and linear Thompson sampling share: per-arm ridge state, fallback, updates, snapshots.

Each arm keeps two nested ridge models of its outcomes: the full one over every context feature and
a small fallback over the intercept and a few chosen features (the dense prompt signals). For each
outcome the policy uses whichever model has predicted better so far over all arms, measured
prequentially (predict, then learn), so content features are used only once they have earned it on
unseen data. The choice is per outcome, not per arm: if one arm's model used features another arm's
model ignores, routing on them would hand the second arm a skewed sample it cannot correct for.
The two policies differ only in how they turn predictions and uncertainty into probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from policies.base import DEFAULT_FLOOR, LoggedEvents, Policy
from policies.preference import Outcome, Preference, Scales, normalized, normalized_rows
from policies.ridge import N_OUTCOMES, RidgeArms

# A new arm's outcome guess when nobody gives one: a coin-flip quality, cost and latency unknown (0).
DEFAULT_PRIOR = Outcome(quality=0.5, cost=0.0, latency_ms=0.0)
FALLBACK, FULL = 0, 1


class LinearModel:
    """What a linear policy learns: per arm the full and the fallback ridge model of each outcome,
    and their prequential squared errors ``(arms, 2, 3)``.

    LinUCB and linear Thompson sampling with the same priors learn exactly the same model from
    the same events, so they may share one (`LinearPolicy.share_model`): it then learns each event
    once, whichever of them is updated first. ``events`` counts the events learned.
    """

    def __init__(self, ridge: RidgeArms, fallback: RidgeArms, errors: np.ndarray, events: int) -> None:
        self.ridge = ridge
        self.fallback = fallback
        self.errors = errors
        self.events = events
        # The last prediction, ((events, arms), context, (means, widths)): the policies sharing
        # this model score the same context with one O(arms * d^2) pass (the off-policy
        # estimates ask each of them in turn).
        self.last_prediction: tuple[tuple[int, int], np.ndarray, tuple[np.ndarray, np.ndarray]] | None = (
            None
        )

    @property
    def arm_count(self) -> int:
        return self.errors.shape[0]

    def add_arm(self, prior_mean: np.ndarray) -> None:
        self.ridge.add_arm(prior_mean)
        self.fallback.add_arm(prior_mean)
        self.errors = np.concatenate([self.errors, np.zeros((1, 2, N_OUTCOMES))])

    def learn(self, k: int, x: np.ndarray, y: np.ndarray) -> None:
        """Score both models on the event (prequentially), then learn it."""
        known = ~np.isnan(y)
        for model, ridge in ((FALLBACK, self.fallback), (FULL, self.ridge)):
            self.errors[k, model, known] += (ridge.predict_arm(k, x)[known] - y[known]) ** 2
            ridge.update(k, x, y)
        self.events += 1

    def learn_many(self, arms: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        """`learn` each row of ``x``/``y`` for its arm in ``arms``, in order: rows of different arms
        touch different state, so each arm's rows are learned in one `RidgeArms.update_many`."""
        for k in np.unique(arms):
            rows = arms == k
            for model, ridge in ((FALLBACK, self.fallback), (FULL, self.ridge)):
                errors = ridge.update_many(int(k), x[rows], y[rows])
                self.errors[k, model] += (errors**2).sum(axis=0)  # 0 where the target is unknown
        self.events += len(arms)

    def same_as(self, other: LinearModel) -> bool:
        """Whether ``other`` holds exactly this model (priors, data, errors)."""
        if self.events != other.events or not np.array_equal(self.errors, other.errors):
            return False
        ours = self.ridge.arrays() | {f"fallback.{k}": v for k, v in self.fallback.arrays().items()}
        theirs = other.ridge.arrays() | {
            f"fallback.{k}": v for k, v in other.fallback.arrays().items()
        }
        return ours.keys() == theirs.keys() and all(
            np.array_equal(ours[key], theirs[key]) for key in ours
        )


class LinearPolicy(Policy):
    """Base for the linear bandits: ridge predictions of every outcome, combined per request.

    Parameters
    ----------
    arms
        Initial arm names.
    dim
        Context length.
    scales
        Cost and latency scales of the utility.
    floor
        Minimum probability of every candidate arm.
    intercept_precision
        Prior precision of each arm's intercept.
    feature_precision
        Prior precision of the feature weights, a scalar or one value per feature.
    fallback_features
        Indices of the features the fallback model reads (default none: intercept only).
    """

    def __init__(
        self,
        arms: Sequence[str],
        dim: int,
        scales: Scales,
        floor: float = DEFAULT_FLOOR,
        intercept_precision: float = 1.0,
        feature_precision: float | np.ndarray = 1.0,
        fallback_features: Sequence[int] | np.ndarray = (),
    ) -> None:
        features = np.broadcast_to(np.asarray(feature_precision, dtype=float), (dim,))
        columns = np.asarray(fallback_features, dtype=np.intp)
        self.model = LinearModel(
            RidgeArms(dim, np.concatenate(([intercept_precision], features))),
            RidgeArms(dim, np.concatenate(([intercept_precision], features[columns])), columns),
            np.empty((0, 2, N_OUTCOMES)),
            events=0,
        )
        super().__init__(arms, scales, floor)

    @property
    def ridge(self) -> RidgeArms:
        return self.model.ridge

    @property
    def fallback(self) -> RidgeArms:
        return self.model.fallback

    @property
    def errors(self) -> np.ndarray:
        """Prequential squared error per arm, model (FALLBACK, FULL) and outcome."""
        return self.model.errors

    @property
    def dim(self) -> int:
        return self.ridge.dim

    def share_model(self, other: LinearPolicy) -> bool:
        """Learn through ``other``'s model from now on, if it is exactly this policy's (same
        arms, priors, data and count of events); True if it is now shared.

        Each event is then learned once, by whichever sharing policy is updated first; both must
        be updated with every event (the learner updates every policy).
        """
        shareable = (
            other.model is not self.model
            and self.arms == other.arms
            and self.updates == other.updates
            and self.model.same_as(other.model)
        )
        if shareable:
            self.model = other.model
        return shareable

    def _grow(self, prior: Outcome | None) -> None:
        if self.model.arm_count < len(self.arms):  # a sharing policy may have added it already
            self.model.add_arm(np.nan_to_num(normalized(prior or DEFAULT_PRIOR, self.scales)))

    def uses_full_model(self) -> np.ndarray:
        """``(3,)``: whether each outcome is predicted by the full model (else by the fallback)."""
        totals = self.errors.sum(axis=0)
        return totals[FULL] < totals[FALLBACK]

    def update(
        self, x: np.ndarray, arm: str, outcome: Outcome, preference: Preference, propensity: float
    ) -> None:
        # Regressing outcomes on the context is unbiased whatever the logging policy was, so the
        # preference and propensity are not needed here.
        k = self.indices([arm])[0]
        if self.model.events == self.updates:  # not learned yet by a policy sharing the model
            self.model.learn(k, x, normalized(outcome, self.scales))
        self.updates += 1

    def update_many(self, events: LoggedEvents) -> None:
        if self.model.events == self.updates:  # not learned yet by a policy sharing the model
            self.model.learn_many(
                self.indices(events.arms), events.contexts, normalized_rows(events.outcomes, self.scales)
            )
        self.updates += len(events)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every arm's predicted normalised outcomes ``(arms, 3)`` and uncertainty ``sqrt(z' A^-1 z)``
        (read-only arrays).

        The uncertainty is the full model's as soon as any outcome uses that model.
        """
        model = self.model
        key = (model.events, model.arm_count)
        last = model.last_prediction
        if last is not None and last[0] == key and np.array_equal(last[1], x):
            return last[2]
        means, widths = self._predict(x)
        means.flags.writeable = widths.flags.writeable = False
        model.last_prediction = (key, np.array(x, dtype=float), (means, widths))
        return means, widths

    def _predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        use_full = self.uses_full_model()
        if not use_full.any():  # skip the full model's O(arms * d^2) scoring altogether
            means, widths = self.fallback.predict(x)
            return means, np.sqrt(widths)
        full_means, full_widths = self.ridge.predict(x)
        if use_full.all():
            return full_means, np.sqrt(full_widths)
        fallback_means = self.fallback.predict(x)[0]
        return np.where(use_full, full_means, fallback_means), np.sqrt(full_widths)

    def expected(self, x: np.ndarray, arms: Sequence[str]) -> np.ndarray:
        """Predicted normalised outcomes ``(len(arms), 3)``: quality, cost/scale, latency/scale.

        Callers ask right after `probabilities` for the same context (the route's ``expected``,
        the off-policy reward model), so `predict` answers from its last prediction.
        """
        return self.predict(x)[0][self.indices(arms)]

    def _scores(
        self, x: np.ndarray, arms: Sequence[str], preference: Preference
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean utility and its standard-deviation proxy for the candidates."""
        idx = self.indices(arms)
        means, widths = self.predict(x)
        return means[idx] @ preference.signed, widths[idx]

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"full.{k}": v for k, v in self.ridge.arrays().items()}
        arrays |= {f"fallback.{k}": v for k, v in self.fallback.arrays().items()}
        arrays["errors"] = self.errors.copy()
        return arrays

    def _restore(self, state: dict[str, np.ndarray]) -> None:
        def part(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

        self.model = LinearModel(
            RidgeArms.from_arrays(part("full.")),
            RidgeArms.from_arrays(part("fallback.")),
            np.array(state["errors"], dtype=float),
            events=self.updates,
        )
        self._restore_config(state)

    def _restore_config(self, state: dict[str, np.ndarray]) -> None:
        """Set the subclass's own hyper-parameters from a state dict."""
