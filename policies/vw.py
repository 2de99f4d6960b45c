"""A Vowpal Wabbit ``--cb_explore_adf`` learner behind the policy interface.

Every decision is one multi-line VW example: a ``shared`` line with the context (namespace ``x``,
its non-zero slots) and the preference weights (namespace ``w``), then one line per candidate arm
(namespace ``a``): the arm's id feature and, when its prior outcome is known, its prior cost
``min(cost / cost_scale, 1)``, log cost ``log(cost / cost_scale)`` and prior quality. Interactions
``x*a``, ``w*a`` and ``w*x*a`` let VW learn each arm's utility as a function of the context and the
trade-off (utility is linear in the preference, so ``w*x*a`` spans it for a linear model).

An arm's id feature is its position in ``arms`` (``arm0``, ``arm1``, ...), which never changes
because arms are only ever appended, and which keeps any arm name (spaces, ``|``, ``:``) out of
VW's text format. The prior features let VW place a new arm near arms of similar price before it
has data of its own; VW's action-dependent features (ADF) need nothing else to add an action.

VW learns costs, so the label of a logged decision is ``-utility`` of its outcome under that
request's preference, with the logged propensity. VW's PMF over the candidates is mixed with the
uniform distribution to keep the floor. Predicting does not change the model, and squarecb's and
epsilon's PMFs are deterministic functions of the model, so probabilities are reproducible.

State is VW's own model file (``--save_resume``, so learning continues exactly), kept as uint8
bytes; the only I/O is that file in a private temporary directory.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from vowpalwabbit import Workspace

from policies.base import DEFAULT_FLOOR, Policy, with_floor
from policies.preference import Outcome, Preference, Scales, utility

EXPLORE_STRATEGIES = ("squarecb", "epsilon")
INTERACTIONS = ("xa", "wa", "wxa")
MODEL_FILE = "model.vw"
# log(cost / scale) below this is one "free" tier: keeps the feature finite for zero-priced arms.
MIN_LOG_COST = -12.0


class VowpalWabbit(Policy):
    """Contextual bandit learned by Vowpal Wabbit's ``--cb_explore_adf``.

    Parameters
    ----------
    arms
        Initial arm names.
    dim
        Context length.
    scales
        Cost and latency scales of the utility (and of the prior cost features).
    floor
        Minimum probability of every candidate arm.
    explore
        VW's exploration: ``"squarecb"`` (SquareCB, Foster & Rakhlin 2020) or ``"epsilon"``.
    gamma_scale
        SquareCB's greediness: larger exploits sooner (``--gamma_scale``).
    epsilon
        Epsilon-greedy's exploration share (``--epsilon``).
    learning_rate
        VW's ``-l``.
    priors
        Optional prior outcome per arm (e.g. from the catalog), read for its per-arm features.
    seed
        VW's ``--random_seed``.

    Examples
    --------
    >>> from policies import Outcome, Preference, Scales
    >>> policy = VowpalWabbit(["cheap", "strong"], dim=2, scales=Scales(cost=1.0), floor=0.01)
    >>> x = np.array([1.0, 0.0])
    >>> for _ in range(200):
    ...     policy.update(x, "cheap", Outcome(0.6, cost=0.05), Preference(), 0.5)
    ...     policy.update(x, "strong", Outcome(0.9, cost=0.9), Preference(), 0.5)
    >>> int(policy.probabilities(x, ["cheap", "strong"], Preference.from_cost_weight(0.0)).argmax())
    1
    """

    name = "vw"

    def __init__(
        self,
        arms: Sequence[str],
        dim: int,
        scales: Scales,
        floor: float = DEFAULT_FLOOR,
        explore: str = "squarecb",
        gamma_scale: float = 50.0,
        epsilon: float = 0.05,
        learning_rate: float = 0.5,
        priors: Mapping[str, Outcome] | None = None,
        seed: int = 0,
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if explore not in EXPLORE_STRATEGIES:
            raise ValueError(f"explore must be one of {', '.join(EXPLORE_STRATEGIES)}, got {explore!r}")
        if not gamma_scale > 0:
            raise ValueError(f"gamma_scale must be > 0, got {gamma_scale}")
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
        unknown = sorted(set(priors or {}) - set(arms))
        if unknown:
            raise ValueError(f"priors name arms that are not in arms: {unknown}")
        self.dim = int(dim)
        self.explore = explore
        self.gamma_scale = float(gamma_scale)
        self.epsilon = float(epsilon)
        self.learning_rate = float(learning_rate)
        self.seed = int(seed)
        self.vw = Workspace(arg_list=self.arguments())
        self.action_lines: list[str] = []
        # Policy.__init__ adds arms without priors; add them here with theirs.
        super().__init__([], scales, floor)
        for arm in arms:
            self.add_arm(arm, (priors or {}).get(arm))

    def arguments(self) -> list[str]:
        """VW's command line for this policy's settings, one token per item."""
        if self.explore == "squarecb":
            explore = ["--squarecb", "--gamma_scale", repr(self.gamma_scale)]
        else:
            explore = ["--epsilon", repr(self.epsilon)]
        interactions = [token for i in INTERACTIONS for token in ("--interactions", i)]
        return [
            "--cb_explore_adf", *explore, *interactions, "-l", repr(self.learning_rate),
            "--random_seed", str(self.seed), "--save_resume", "--quiet",
        ]  # fmt: skip

    def add_arm(self, arm: str, prior: Outcome | None = None) -> None:
        super().add_arm(arm, prior)
        self.action_lines.append(action_line(len(self.arms) - 1, prior, self.scales))

    def probabilities(self, x: np.ndarray, arms: Sequence[str], preference: Preference) -> np.ndarray:
        idx = self.indices(arms)
        lines = [self._shared(x, preference), *(self.action_lines[k] for k in idx)]
        pmf = np.asarray(self.vw.predict(lines), dtype=float)
        return with_floor(pmf / pmf.sum(), self.floor)

    def update(
        self, x: np.ndarray, arm: str, outcome: Outcome, preference: Preference, propensity: float
    ) -> None:
        if not 0.0 < propensity <= 1.0:
            raise ValueError(f"propensity must be in (0, 1], got {propensity}")
        chosen = self.indices([arm])[0]
        cost = -utility(outcome, preference, self.scales)
        # Every known arm is an action (the decision's candidate set is not logged here); the
        # label goes on the chosen arm's line.
        actions = [
            f"0:{cost!r}:{propensity!r} {line}" if k == chosen else line
            for k, line in enumerate(self.action_lines)
        ]
        self.vw.learn([self._shared(x, preference), *actions])
        self.updates += 1

    def _shared(self, x: np.ndarray, preference: Preference) -> str:
        x = np.asarray(x, dtype=float)
        if x.shape != (self.dim,):
            raise ValueError(f"context must have {self.dim} features, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("context features must be finite")
        slots = np.flatnonzero(x)
        # VW reads float32, which 9 significant digits carry exactly.
        context = " ".join(map("{}:{:.9g}".format, slots.tolist(), x[slots].tolist()))
        w = preference
        return f"shared |x {context} |w q:{w.quality:.9g} c:{w.cost:.9g} l:{w.latency:.9g}"

    # --- state -----------------------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "explore": self.explore,
            "gamma_scale": self.gamma_scale,
            "epsilon": self.epsilon,
            "learning_rate": self.learning_rate,
            "seed": self.seed,
        }

    def _arrays(self) -> dict[str, np.ndarray]:
        with tempfile.TemporaryDirectory(prefix="bandit-router-vw-") as folder:
            path = Path(folder) / MODEL_FILE
            self.vw.save(str(path))
            model = np.frombuffer(path.read_bytes(), dtype=np.uint8).copy()
        return {"model": model, "action_lines": np.array(self.action_lines, dtype=str)}

    def _restore(self, state: dict[str, np.ndarray]) -> None:
        self.dim = int(state["dim"])
        self.explore = str(state["explore"])
        self.gamma_scale = float(state["gamma_scale"])
        self.epsilon = float(state["epsilon"])
        self.learning_rate = float(state["learning_rate"])
        self.seed = int(state["seed"])
        self.action_lines = [str(line) for line in state["action_lines"]]
        with tempfile.TemporaryDirectory(prefix="bandit-router-vw-") as folder:
            path = Path(folder) / MODEL_FILE
            path.write_bytes(np.asarray(state["model"], dtype=np.uint8).tobytes())
            self.vw = Workspace(arg_list=[*self.arguments(), "-i", str(path)])


def action_line(index: int, prior: Outcome | None, scales: Scales) -> str:
    """One arm's ADF line: its id and, if a prior is known, its prior cost and quality.

    >>> action_line(2, Outcome(quality=0.8, cost=0.05), Scales(cost=0.1))
    '|a arm2 cost:0.5 log_cost:-0.6931471805599453 quality:0.8'
    """
    features = [f"arm{index}"]
    if prior is not None:
        if prior.cost is not None:
            ratio = prior.cost / scales.cost
            log_cost = math.log(ratio) if ratio > 0 else MIN_LOG_COST
            features += [f"cost:{min(ratio, 1.0)!r}", f"log_cost:{max(log_cost, MIN_LOG_COST)!r}"]
        features.append(f"quality:{prior.quality!r}")
    return "|a " + " ".join(features)
