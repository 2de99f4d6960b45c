"""BaRP: a preference-conditioned softmax routing policy trained by REINFORCE from bandit feedback.

``pi(a | x, w) = softmax(g([x; phi(w)]))`` over the candidate arms, with ``phi`` a one-layer MLP
lifting the preference and ``g`` a one-hidden-layer MLP head; numpy forward and backward passes,
Adam, one event per step, REINFORCE with an action-value baseline (the doubly robust gradient).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from policies.base import DEFAULT_FLOOR, Policy, with_floor
from policies.preference import Outcome, Preference, Scales, utility

# Parameter names in a fixed order: the shared trunk, the policy head, the per-arm utility head.
PARAMETERS = ("pref_w", "pref_b", "hidden_w", "hidden_b", "out_w", "out_b", "q_w", "q_b")
PER_ARM = ("out_w", "out_b", "q_w", "q_b")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
N_PREFERENCE = 3
# What each hyper-parameter must satisfy, with the rule as the error message states it.
_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "dim": (lambda v: v >= 1, ">= 1"),
    "hidden": (lambda v: v >= 1, ">= 1"),
    "preference_hidden": (lambda v: v >= 1, ">= 1"),
    "learning_rate": (lambda v: v > 0, "> 0"),
    "entropy": (lambda v: v >= 0, ">= 0"),
    "value_weight": (lambda v: v >= 0, ">= 0"),
    "weight_clip": (lambda v: v >= 1, ">= 1"),
    "decay_steps": (lambda v: v > 0, "> 0"),
}


class BaRP(Policy):
    """One routing policy for every quality/cost/latency trade-off, learned from bandit feedback.

    The preference ``w`` is an input of the network, so a request can dial its own trade-off and
    the policy needs no retraining for it. Each update is one policy-gradient step on the logged
    arm's utility ``r`` under the request's preference. The baseline is a per-arm utility head
    ``q(x, w, a)`` on the shared hidden layer, trained by squared error on the logged arm; with it
    the step is the doubly robust form of REINFORCE,
    ``sum_a pi(a) (q_a - pi . q) grad log pi(a) + rho (r - q_k) grad log pi(k)`` for logged arm
    ``k``, whose expectation is REINFORCE's but which moves every arm, not only the logged one.
    ``rho = pi(k | x, w) / propensity``, clipped at ``weight_clip``, corrects decisions another
    policy logged (it is 1 on the policy's own decisions). An entropy bonus decaying like
    ``1 / (1 + t / decay_steps)`` keeps every arm in play while the utility head is still
    guessing; the learning rate decays like its square root.

    The softmax runs over the candidate arms only; `update` does not know which arms were offered
    and normalises over every known arm. A new arm's output and utility units start as the mean of
    the existing ones, so it enters as an average arm.

    Parameters
    ----------
    arms
        Initial arm names.
    dim
        Context length.
    scales
        Cost and latency scales of the utility (the reward).
    floor
        Minimum probability of every candidate arm.
    hidden
        Width of the hidden layer of ``g``.
    preference_hidden
        Width of the preference embedding ``phi(w)``.
    learning_rate
        Adam step size at the first step.
    entropy
        Weight of the entropy bonus at the first step.
    value_weight
        Weight of the utility head's squared error in the loss.
    weight_clip
        Largest importance weight applied to one event.
    decay_steps
        Steps after which the entropy weight has halved (and the learning rate shrunk by sqrt 2).
    seed
        Seed of the weight initialisation.

    References
    ----------
    Wang et al. "Learning to Route LLMs from Bandit Feedback: One Policy, Many Trade-offs", 2025.
    Williams. "Simple statistical gradient-following algorithms for connectionist reinforcement
    learning", Machine Learning 1992. Dudik, Langford, Li. "Doubly Robust Policy Evaluation and
    Learning", ICML 2011. Kingma, Ba. "Adam: A Method for Stochastic Optimization",
    ICLR 2015.

    Examples
    --------
    >>> from policies import Outcome, Preference, Scales
    >>> policy = BaRP(["cheap", "strong"], dim=1, scales=Scales(cost=1.0), floor=0.01, seed=0)
    >>> x, rng = np.array([1.0]), np.random.default_rng(0)
    >>> outcomes = {"cheap": Outcome(0.5, cost=0.05), "strong": Outcome(0.9, cost=0.9)}
    >>> for _ in range(400):
    ...     w = Preference.from_cost_weight(rng.choice([0.1, 0.9]))
    ...     p = policy.probabilities(x, policy.arms, w)
    ...     arm = rng.choice(2, p=p)
    ...     policy.update(x, policy.arms[arm], outcomes[policy.arms[arm]], w, p[arm])
    >>> policy.probabilities(x, policy.arms, Preference.from_cost_weight(0.1)).round(2)
    array([0.01, 0.99])
    >>> policy.probabilities(x, policy.arms, Preference.from_cost_weight(0.9)).round(2)
    array([0.99, 0.01])
    """

    name = "barp"

    def __init__(
        self,
        arms: Sequence[str],
        dim: int,
        scales: Scales,
        floor: float = DEFAULT_FLOOR,
        hidden: int = 64,
        preference_hidden: int = 16,
        learning_rate: float = 0.003,
        entropy: float = 0.1,
        value_weight: float = 1.0,
        weight_clip: float = 10.0,
        decay_steps: float = 500.0,
        seed: int = 0,
    ) -> None:
        given = {
            "dim": dim, "hidden": hidden, "preference_hidden": preference_hidden,
            "learning_rate": learning_rate, "entropy": entropy, "value_weight": value_weight,
            "weight_clip": weight_clip, "decay_steps": decay_steps,
        }
        bad = [f"{name}={given[name]!r} (must be {rule})" for name, (ok, rule) in _RULES.items()
               if not ok(given[name])]
        if bad:
            raise ValueError(f"invalid BaRP hyper-parameters: {'; '.join(bad)}")
        self.dim = int(dim)
        self.learning_rate = float(learning_rate)
        self.entropy = float(entropy)
        self.value_weight = float(value_weight)
        self.weight_clip = float(weight_clip)
        self.decay_steps = float(decay_steps)
        self.steps = 0
        rng = np.random.default_rng(seed)
        inputs = self.dim + preference_hidden
        # He initialisation for the ReLU layers; the policy and utility heads start at zero, so the
        # first policy is uniform and the first utility estimates are zero.
        self._pack(
            {
                "pref_w": rng.normal(0.0, np.sqrt(2.0 / N_PREFERENCE), (preference_hidden, N_PREFERENCE)),
                "pref_b": np.zeros(preference_hidden),
                "hidden_w": rng.normal(0.0, np.sqrt(2.0 / inputs), (hidden, inputs)),
                "hidden_b": np.zeros(hidden),
                "out_w": np.zeros((0, hidden)),
                "out_b": np.zeros(0),
                "q_w": np.zeros((0, hidden)),
                "q_b": np.zeros(0),
            }
        )
        super().__init__(arms, scales, floor)

    def _grow(self, prior: Outcome | None) -> None:
        # A prior outcome has no preference-free place in the network: the new arm starts as the
        # average arm instead, and the entropy-driven exploration finds out the rest.
        grown = {n: self.params[n] for n in PARAMETERS}
        for name in PER_ARM:
            rows = grown[name]
            mean = rows.mean(axis=0) if len(rows) else np.zeros(rows.shape[1:])
            grown[name] = np.concatenate([rows, mean[None]])
        moments, squares = self._unpack(self.moments), self._unpack(self.squares)
        self._pack(grown)
        # The new unit's Adam moments start at zero; everyone else's carry over.
        for old, new in ((moments, self.moments), (squares, self.squares)):
            for name, array in self._unpack(new).items():
                array[tuple(slice(0, n) for n in old[name].shape)] = old[name]

    def _pack(self, arrays: dict[str, np.ndarray]) -> None:
        """Lay ``arrays`` out in one flat parameter vector (so Adam is a few vector operations)
        with zero Adam moments; ``self.params`` holds views into it."""
        self.shapes = {name: arrays[name].shape for name in PARAMETERS}
        self.theta = np.concatenate([np.ravel(arrays[name]) for name in PARAMETERS]).astype(float)
        self.moments = np.zeros_like(self.theta)
        self.squares = np.zeros_like(self.theta)
        self.grad = np.zeros_like(self.theta)
        self._scratch = np.zeros_like(self.theta)
        self.params = self._unpack(self.theta)
        self._grads = self._unpack(self.grad)

    def _unpack(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Named views into a flat vector laid out like ``self.theta``."""
        views, start = {}, 0
        for name in PARAMETERS:
            shape = self.shapes[name]
            size = shape[0] * shape[1] if len(shape) == 2 else shape[0]
            views[name] = flat[start : start + size].reshape(shape)
            start += size
        return views

    # --- forward ---------------------------------------------------------------------------------
    def _forward(self, x: np.ndarray, preference: Preference) -> dict[str, np.ndarray]:
        """Every activation of the network for one context and preference."""
        p = self.params
        w = preference.vector
        pref_pre = p["pref_w"] @ w + p["pref_b"]
        inputs = np.concatenate([np.asarray(x, dtype=float), np.maximum(pref_pre, 0.0)])
        hidden_pre = p["hidden_w"] @ inputs + p["hidden_b"]
        hidden = np.maximum(hidden_pre, 0.0)
        return {
            "w": w,
            "pref_pre": pref_pre,
            "inputs": inputs,
            "hidden_pre": hidden_pre,
            "hidden": hidden,
            "logits": p["out_w"] @ hidden + p["out_b"],
            "q": p["q_w"] @ hidden + p["q_b"],
        }

    def probabilities(self, x: np.ndarray, arms: Sequence[str], preference: Preference) -> np.ndarray:
        idx = self.indices(arms)
        logits = self._forward(x, preference)["logits"][idx]
        return with_floor(_softmax(logits), self.floor)

    def predicted_utilities(self, x: np.ndarray, arms: Sequence[str], preference: Preference) -> np.ndarray:
        """The utility head's estimate of each candidate's utility (the policy gradient's baseline)."""
        return self._forward(x, preference)["q"][self.indices(arms)]

    # --- learning --------------------------------------------------------------------------------
    def update(
        self, x: np.ndarray, arm: str, outcome: Outcome, preference: Preference, propensity: float
    ) -> None:
        if not 0.0 < propensity <= 1.0:
            raise ValueError(f"propensity must be in (0, 1], got {propensity}")
        k = self.indices([arm])[0]
        act = self._forward(x, preference)
        probs = _softmax(act["logits"])
        chosen = with_floor(probs, self.floor)[k]
        weight = min(chosen / propensity, self.weight_clip)
        reward = utility(outcome, preference, self.scales)
        q = act["q"]
        residual = reward - q[k]

        # The doubly robust policy gradient: every arm's estimated advantage under the current
        # policy, plus the importance-weighted error of the logged arm's estimate. Its expectation
        # is REINFORCE's; the utility head is an action-dependent baseline that makes it far less
        # noisy. Below, gradients of the loss (minus that objective, minus the entropy bonus, plus
        # the utility head's squared error) with respect to the logits and the utility head.
        log_probs = np.log(np.maximum(probs, 1e-300))
        entropy = -float(probs @ log_probs)
        d_logits = -probs * (q - probs @ q)
        d_logits += weight * residual * probs
        d_logits[k] -= weight * residual
        # The bonus decays like 1/t: early on it keeps every arm in play while the utility head is
        # still guessing; later the policy may commit to what that head has learned.
        bonus = self.entropy / (1.0 + self.steps / self.decay_steps)
        d_logits += bonus * probs * (log_probs + entropy)
        d_q = -self.value_weight * residual

        p = self.params
        hidden = act["hidden"]
        d_hidden = p["out_w"].T @ d_logits + p["q_w"][k] * d_q
        d_hidden_pre = d_hidden * (act["hidden_pre"] > 0)
        d_inputs = p["hidden_w"].T @ d_hidden_pre
        d_pref_pre = d_inputs[self.dim :] * (act["pref_pre"] > 0)
        grads = self._grads
        np.outer(d_pref_pre, act["w"], out=grads["pref_w"])
        grads["pref_b"][:] = d_pref_pre
        np.outer(d_hidden_pre, act["inputs"], out=grads["hidden_w"])
        grads["hidden_b"][:] = d_hidden_pre
        np.outer(d_logits, hidden, out=grads["out_w"])
        grads["out_b"][:] = d_logits
        grads["q_w"][:] = 0.0
        grads["q_b"][:] = 0.0
        np.multiply(hidden, d_q, out=grads["q_w"][k])
        grads["q_b"][k] = d_q
        self._adam()
        self.updates += 1

    def _adam(self) -> None:
        """One Adam step on the flat parameter vector with the gradient in ``self.grad``."""
        self.steps += 1
        beta1, beta2 = ADAM_BETAS
        rate = self.learning_rate / np.sqrt(1.0 + self.steps / self.decay_steps)
        step = rate * np.sqrt(1.0 - beta2**self.steps) / (1.0 - beta1**self.steps)
        grad, scratch = self.grad, self._scratch
        np.subtract(grad, self.moments, out=scratch)
        scratch *= 1.0 - beta1
        self.moments += scratch
        np.multiply(grad, grad, out=scratch)
        scratch -= self.squares
        scratch *= 1.0 - beta2
        self.squares += scratch
        np.sqrt(self.squares, out=scratch)
        scratch += ADAM_EPS
        np.divide(self.moments, scratch, out=scratch)
        scratch *= step
        self.theta -= scratch

    # --- state -----------------------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "learning_rate": self.learning_rate,
            "entropy": self.entropy,
            "value_weight": self.value_weight,
            "weight_clip": self.weight_clip,
            "decay_steps": self.decay_steps,
            "steps": self.steps,
        }

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"param.{n}": a.copy() for n, a in self.params.items()}
        arrays |= {f"adam_m.{n}": a.copy() for n, a in self._unpack(self.moments).items()}
        arrays |= {f"adam_v.{n}": a.copy() for n, a in self._unpack(self.squares).items()}
        return arrays

    def _restore(self, state: dict[str, np.ndarray]) -> None:
        self.dim = int(state["dim"])
        self.learning_rate = float(state["learning_rate"])
        self.entropy = float(state["entropy"])
        self.value_weight = float(state["value_weight"])
        self.weight_clip = float(state["weight_clip"])
        self.decay_steps = float(state["decay_steps"])
        self.steps = int(state["steps"])
        self._pack({n: np.asarray(state[f"param.{n}"], dtype=float) for n in PARAMETERS})
        self.moments[:] = np.concatenate([np.ravel(state[f"adam_m.{n}"]) for n in PARAMETERS])
        self.squares[:] = np.concatenate([np.ravel(state[f"adam_v.{n}"]) for n in PARAMETERS])


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()
