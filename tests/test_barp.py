"""BaRP: exact snapshots, the floor, off-policy learning, new arms, validation, and routing quality."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from bandit_router.barp_training import TrainConfig, load_snapshot, train_barp
from bandit_router.cli import main
from bandit_router.config import Settings
from bandit_router.featurizer import Featurizer
from bandit_router.policy_factory import PolicyParams
from bandit_router.policy_set import PolicySet
from bandit_router.replay import ReplayConfig, replay
from bandit_router.storage.state_codec import decode_state, encode_state
from bandit_router.synth import generate, to_dataset
from policies import BaRP, Outcome, Preference, Scales
from tests.conftest import SAMPLE_DATA

ARMS = ["cheap", "middle", "strong"]
# Two kinds of context; "middle" is best on the first, "strong" on the second.
CONTEXTS = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
QUALITY = np.array([[0.3, 0.8, 0.5], [0.2, 0.4, 0.9]])
PREFERENCE = Preference()


def outcome(kind: int, arm: int, rng: np.random.Generator) -> Outcome:
    """A noisy quality; arms added after the first three are as good as "middle"."""
    mean = QUALITY[kind, min(arm, 1) if arm >= len(ARMS) else arm]
    return Outcome(quality=float(np.clip(mean + 0.1 * rng.standard_normal(), 0, 1)))


def learn_on_policy(policy: BaRP, steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        kind = int(rng.integers(2))
        p = policy.probabilities(CONTEXTS[kind], policy.arms, PREFERENCE)
        arm = int(rng.choice(len(p), p=p))
        policy.update(CONTEXTS[kind], policy.arms[arm], outcome(kind, arm, rng), PREFERENCE, p[arm])


def new_policy(**kwargs) -> BaRP:
    return BaRP(ARMS, dim=3, scales=Scales(cost=1.0), **({"floor": 0.01, "seed": 1} | kwargs))


def test_state_round_trip_gives_identical_probabilities_and_future_updates():
    policy = new_policy()
    learn_on_policy(policy, 300, seed=0)
    policy.add_arm("late")
    copy = BaRP.from_state(decode_state(encode_state(policy.state())))
    for x in CONTEXTS:
        for w in (PREFERENCE, Preference.from_cost_weight(0.7)):
            expected = policy.probabilities(x, policy.arms, w)
            assert np.array_equal(copy.probabilities(x, copy.arms, w), expected)
    learn_on_policy(policy, 100, seed=5)
    learn_on_policy(copy, 100, seed=5)
    original, restored = policy.state(), copy.state()
    assert original.keys() == restored.keys()
    for key in original:
        assert np.array_equal(original[key], restored[key]), key
    assert int(restored["steps"]) == 400


def test_every_candidate_keeps_the_floor_and_the_softmax_covers_candidates_only():
    policy = new_policy()
    learn_on_policy(policy, 1500, seed=0)
    p = policy.probabilities(CONTEXTS[1], ARMS, PREFERENCE)
    assert p.sum() == pytest.approx(1.0)
    assert p.min() == pytest.approx(0.01, abs=1e-3)  # learned to (almost) always pick "strong"
    assert p.argmax() == 2
    subset = policy.probabilities(CONTEXTS[1], ["cheap", "middle"], PREFERENCE)
    assert subset.sum() == pytest.approx(1.0) and subset.min() >= 0.01
    assert subset.argmax() == 1  # "middle" beats "cheap" once "strong" is not offered


def test_it_learns_each_contexts_best_arm_on_policy():
    policy = new_policy()
    learn_on_policy(policy, 1500, seed=0)
    assert [policy.probabilities(x, ARMS, PREFERENCE).argmax() for x in CONTEXTS] == [1, 2]


def test_logged_decisions_of_another_policy_are_importance_weighted():
    """A logging policy that mostly plays the worst arm: BaRP still finds each context's best."""
    rng = np.random.default_rng(3)
    logging = np.array([0.8, 0.1, 0.1])
    policy = new_policy()
    weights = []
    for _ in range(3000):
        kind = int(rng.integers(2))
        arm = int(rng.choice(3, p=logging))
        x = CONTEXTS[kind]
        weights.append(policy.probabilities(x, ARMS, PREFERENCE)[arm] / logging[arm])
        policy.update(x, ARMS[arm], outcome(kind, arm, rng), PREFERENCE, float(logging[arm]))
    probabilities = [policy.probabilities(x, ARMS, PREFERENCE) for x in CONTEXTS]
    assert [p.argmax() for p in probabilities] == [1, 2]
    assert min(p.max() for p in probabilities) > 0.9
    # the weights really were far from 1: the logged arm was rarely the one BaRP would pick
    assert min(weights) < 0.05 and max(weights) > 5


def test_a_new_arm_starts_as_an_average_arm_and_can_win():
    policy = new_policy()
    learn_on_policy(policy, 800, seed=0)
    before = policy.probabilities(CONTEXTS[0], ARMS, PREFERENCE)
    policy.add_arm("newcomer")
    after = policy.probabilities(CONTEXTS[0], [*ARMS, "newcomer"], PREFERENCE)
    assert before.min() <= after[3] <= before.max()
    rng = np.random.default_rng(9)
    for _ in range(1500):
        kind = int(rng.integers(2))
        x = CONTEXTS[kind]
        p = policy.probabilities(x, policy.arms, PREFERENCE)
        arm = int(rng.choice(4, p=p))
        quality = 1.0 if arm == 3 else float(QUALITY[kind, arm])
        policy.update(x, policy.arms[arm], Outcome(quality), PREFERENCE, p[arm])
    assert all(policy.probabilities(x, policy.arms, PREFERENCE).argmax() == 3 for x in CONTEXTS)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"hidden": 0}, "hidden=0"),
        ({"preference_hidden": -1}, "preference_hidden=-1"),
        ({"learning_rate": 0.0}, "learning_rate=0.0"),
        ({"entropy": -0.1}, "entropy=-0.1"),
        ({"value_weight": -1.0}, "value_weight=-1.0"),
        ({"weight_clip": 0.5}, "weight_clip=0.5"),
        ({"decay_steps": 0}, "decay_steps=0"),
        ({"seed": 1, "floor": 1.0}, "floor must be in"),
    ],
)
def test_bad_hyper_parameters_are_refused_by_name(kwargs, field):
    with pytest.raises(ValueError, match=field):
        new_policy(**kwargs)


def test_bad_update_input_is_refused():
    policy = new_policy()
    with pytest.raises(ValueError, match="propensity"):
        policy.update(CONTEXTS[0], "cheap", Outcome(0.5), PREFERENCE, 0.0)
    with pytest.raises(KeyError, match="unknown arm"):
        policy.update(CONTEXTS[0], "nope", Outcome(0.5), PREFERENCE, 0.5)


# --- one policy, many trade-offs -------------------------------------------------------------------
def test_one_trained_policy_trades_quality_for_cost_as_the_preference_asks():
    """Trained once over sampled preferences; on unseen prompts, a higher cost weight never buys
    more cost or more quality, and the cost falls overall."""
    data = to_dataset(generate(models=6, rows=7000, seed=1))
    train, held_out = data.subset(np.arange(6000)), data.subset(np.arange(6000, 7000))
    policy = train_barp(train, TrainConfig(seed=0), progress=False)
    features = Featurizer(dim=policy.dim).transform_many(held_out.prompts)
    cost, quality = [], []
    for weight in (0.1, 0.5, 0.9):
        w = Preference.from_cost_weight(weight)
        p = np.array([policy.probabilities(x, held_out.models, w) for x in features])
        cost.append(float((p * held_out.cost).sum(axis=1).mean()))
        quality.append(float((p * held_out.quality).sum(axis=1).mean()))
    assert cost[0] >= cost[1] >= cost[2], cost
    assert quality[0] >= quality[1] >= quality[2], quality
    assert cost[2] < 0.25 * cost[0], cost


# --- the command line and the service's snapshot setting --------------------------------------------
def test_train_writes_a_snapshot_that_replay_and_the_service_start_from(tmp_path, capsys):
    snapshot = tmp_path / "barp.npz"
    code = main(["train", "barp", str(SAMPLE_DATA), "--out", str(snapshot), "--rows", "300",
                 "--epochs", "2", "--dim", "64", "--quiet"])
    assert code == 0 and "after 600 updates" in capsys.readouterr().out
    trained = load_snapshot(snapshot)
    assert trained.updates == 600 and trained.dim == 64

    code = main(["replay", str(SAMPLE_DATA), "--policies", "barp", "--barp-snapshot", str(snapshot),
                 "--limit", "50", "--dim", "64", "--out", str(tmp_path / "out"), "--quiet",
                 "--no-mlflow"])
    assert code == 0

    settings = Settings(policies=["linucb", "barp"], feature_dim=64, cost_scale=1.0,
                        barp_snapshot=snapshot)
    served = PolicySet.load(settings, Featurizer(dim=64), [], {})["barp"]
    assert all(np.array_equal(v, trained.state()[k]) for k, v in served.state().items())


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda tmp: ["train", "vw", str(SAMPLE_DATA), "--out", str(tmp / "s")], "invalid choice"),
        (lambda tmp: ["train", "barp", str(SAMPLE_DATA)], "--out"),
        (lambda tmp: ["train", "barp", str(SAMPLE_DATA), "--out", str(tmp / "s"), "--epochs", "0"],
         "must be >= 1"),
        (lambda tmp: ["replay", str(SAMPLE_DATA), "--policies", "barp", "--barp-snapshot",
                      str(SAMPLE_DATA)], "not an .npz archive"),
    ],
)
def test_bad_train_and_snapshot_input_exits_2_with_one_line(tmp_path, capsys, make_args, message):
    assert main(make_args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


# --- routing quality on the synthetic generator -----------------------------------------------------
CLAIM_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
BEAT_UP_TO = 0.5  # BaRP must beat every single model up to this cost weight...
TOLERANCE = 0.01  # ...and come within this of the best one (or beat it) above it


@pytest.fixture(scope="module")
def synthetic_replay() -> dict:
    """BaRP replayed from scratch on 6 models x 20,000 rows, exactly as `bandit-router replay` does."""
    with threadpool_limits(limits=1, user_api="blas"):
        return replay(
            to_dataset(generate(models=6, rows=20000, seed=0)),
            ReplayConfig(policies=("barp",), cost_weights=CLAIM_WEIGHTS, seed=0),
            progress=False,
        )


def margin_over_best_model(results: dict, weight: float) -> float:
    best = max(m["utility"] for m in results["models"] if m["cost_weight"] == weight)
    return next(r["utility"] for r in results["runs"] if r["cost_weight"] == weight) - best


# Measured on this seed (bench/results/synthetic.md has seeds 0-4): BaRP - best single model is
# -0.0099 at cost weight 0, -0.0003 at 0.5 and -0.0103 at 1 (LinUCB: -0.0071, -0.0002, -0.0100).
@pytest.mark.slow
@pytest.mark.parametrize(
    "weight",
    [
        pytest.param(0.0, marks=pytest.mark.xfail(strict=True, reason="out of reach under the 0.5% "
                     "floor on this seed; see the next test")),
        0.25,
        pytest.param(0.5, marks=pytest.mark.xfail(strict=True, reason="-0.0003: the per-task gain "
                     "over synth-medium (0.011) barely covers the floor and the learning")),
        0.75,
        pytest.param(1.0, marks=pytest.mark.xfail(strict=True, reason="-0.0103: the floor alone "
                     "costs 0.0063 here, early exploration the rest")),
    ],
)
def test_barp_beats_every_single_model_or_comes_within_a_hundredth(synthetic_replay, weight):
    margin = margin_over_best_model(synthetic_replay, weight)
    if weight <= BEAT_UP_TO:
        assert margin > 0
    else:
        assert margin >= -TOLERANCE


@pytest.mark.slow
def test_at_cost_weight_0_the_floor_alone_puts_the_best_single_model_out_of_reach(synthetic_replay):
    """Why the first case above fails: routing every prompt to its task's best model (chosen in
    hindsight) while the other 5 models keep the 0.5% floor still scores below synth-ultra alone."""
    floor = PolicyParams().floor
    models = [m["utility"] for m in synthetic_replay["models"] if m["cost_weight"] == 0.0]
    task_best = next(r["utility"] for r in synthetic_replay["task_best"] if r["cost_weight"] == 0.0)
    reachable = (1 - len(models) * floor) * task_best + floor * sum(models)
    assert reachable < max(models)
