"""What the synthetic dataset must be: RouterBench's layout, seeded, real cost/quality trade-off."""

from __future__ import annotations

import csv
import re
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from bandit_router.synth import (
    MODEL_LADDER,
    TASKS,
    SynthData,
    expected_outcomes,
    generate,
    write_csv,
)
from policies.preference import Preference, Scales, normalize_columns, utilities

SEEDS = range(5)


@cache
def _six_models(seed: int) -> SynthData:
    return generate(models=6, rows=5000, seed=seed)


def _expected_utilities(data: SynthData, cost_weight: float, quality: np.ndarray) -> np.ndarray:
    """Per-row utilities of every model, charging each model its mean cost over the dataset."""
    mean_cost = data.cost.mean(axis=0)
    scales = Scales(cost=float(mean_cost[-1]), latency_ms=10_000)
    cost = np.broadcast_to(mean_cost, quality.shape)
    return utilities(
        normalize_columns(quality, cost, None, scales), Preference.from_cost_weight(cost_weight)
    )


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_csv_has_the_wide_layout_and_round_trips(tmp_path: Path) -> None:
    data = generate(models=4, rows=300, seed=3)
    path = tmp_path / "synth.csv"
    write_csv(data, path)
    header, rows = _read(path)

    models = list(data.models)
    assert models == ["synth-nano", "synth-open", "synth-large", "synth-ultra"]
    assert header == [
        "sample_id",
        "eval_name",
        "prompt",
        *models,
        *[f"{m}|total_cost" for m in models],
        *[f"{m}|latency_ms" for m in models],
    ]
    assert len(rows) == 300
    for array in (data.quality, data.cost, data.latency_ms, data.expected_quality):
        assert array.shape == (300, 4)
    assert data.task_index.shape == (300,)
    assert len(set(data.sample_ids)) == 300

    names = {f"synth/{task.name}" for task in TASKS}
    for i, row in enumerate(rows):
        assert row["sample_id"] == data.sample_ids[i] == f"{row['eval_name']}.{i}"
        assert row["eval_name"] == data.eval_names[i] == f"synth/{TASKS[data.task_index[i]].name}"
        assert row["eval_name"] in names
        assert row["prompt"] == data.prompts[i]  # commas survive the quoting
        assert 10 <= len(row["prompt"].split()) <= 60
        for j, m in enumerate(models):
            assert re.fullmatch(r"[01]\.\d{4}", row[m])
            assert re.fullmatch(r"\d\.\d{8}", row[f"{m}|total_cost"])
            assert re.fullmatch(r"\d+\.\d", row[f"{m}|latency_ms"])
            assert 0.0 <= float(row[m]) <= 1.0
            assert float(row[m]) == pytest.approx(data.quality[i, j], abs=5e-5)
            assert float(row[f"{m}|total_cost"]) == pytest.approx(data.cost[i, j], abs=5e-9)
            assert float(row[f"{m}|latency_ms"]) == pytest.approx(data.latency_ms[i, j], abs=0.05)
    assert any("," in row["prompt"] for row in rows)
    assert np.all((data.expected_quality > 0) & (data.expected_quality < 1))
    assert np.all(data.cost > 0) and np.all(data.latency_ms > 0)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    paths = [tmp_path / name for name in ("a.csv", "b.csv", "c.csv")]
    for path, seed in zip(paths, (7, 7, 8), strict=True):
        write_csv(generate(models=3, rows=500, seed=seed), path)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [({"models": 1}, "models"), ({"models": 9}, "models"), ({"rows": 0}, "rows")],
)
def test_bad_arguments_are_refused(kwargs: dict[str, int], argument: str) -> None:
    with pytest.raises(ValueError, match=f"^{argument} must be"):
        generate(**kwargs)


@pytest.mark.parametrize("k", range(2, 9))
def test_models_span_the_ladder(k: int) -> None:
    data = generate(models=k, rows=10, seed=0)
    assert len(set(data.models)) == k
    assert data.models[0] == MODEL_LADDER[0].name
    assert data.models[-1] == MODEL_LADDER[-1].name


def test_costs_follow_the_price_ladder() -> None:
    data = generate(models=8, rows=4000, seed=0)
    mean_cost = data.cost.mean(axis=0)
    assert np.all(np.diff(mean_cost) > 0)
    assert mean_cost[-1] / mean_cost[0] > 50
    # Bigger models are slower too.
    assert np.all(np.diff(data.latency_ms.mean(axis=0)) > 0)


def _bag(prompt: str) -> Counter[str]:
    return Counter(prompt.lower().replace(",", " ").rstrip(".?").split())


def test_words_reveal_the_cluster() -> None:
    data = generate(models=2, rows=4000, seed=0)
    bags = [_bag(p) for p in data.prompts]
    vocabulary = {word: i for i, word in enumerate(sorted(set().union(*bags)))}
    counts = np.zeros((len(bags), len(vocabulary)))
    for row, bag in enumerate(bags):
        for word, n in bag.items():
            counts[row, vocabulary[word]] = n
    counts /= counts.sum(axis=1, keepdims=True)
    train, test = slice(0, 2000), slice(2000, 4000)
    labels = data.task_index
    clusters = range(len(TASKS))
    centroids = np.array([counts[train][labels[train] == c].mean(axis=0) for c in clusters])
    distances = ((counts[test][:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    accuracy = np.mean(distances.argmin(axis=1) == labels[test])
    assert accuracy > 0.80


@pytest.mark.parametrize("seed", SEEDS)
def test_quality_first_routes_to_the_dearest_models(seed: int) -> None:
    data = _six_models(seed)
    best = _expected_utilities(data, 0.1, data.expected_quality).argmax(axis=1)
    assert np.mean(best >= len(data.models) - 2) > 0.30


@pytest.mark.parametrize("seed", SEEDS)
def test_cost_first_routes_to_the_cheapest_model(seed: int) -> None:
    data = _six_models(seed)
    best = _expected_utilities(data, 0.9, data.expected_quality).argmax(axis=1)
    assert np.mean(best == 0) > 0.30


@pytest.mark.parametrize("seed", SEEDS)
def test_routing_per_row_beats_the_best_single_model(seed: int) -> None:
    data = _six_models(seed)
    u = _expected_utilities(data, 0.1, data.expected_quality)
    assert u.max(axis=1).mean() - u.mean(axis=0).max() > 0.03


@pytest.mark.parametrize("seed", SEEDS)
def test_observed_oracle_is_mostly_the_expected_oracle(seed: int) -> None:
    data = _six_models(seed)
    expected = _expected_utilities(data, 0.5, data.expected_quality).argmax(axis=1)
    observed = _expected_utilities(data, 0.5, data.quality).argmax(axis=1)
    assert np.mean(observed == expected) > 0.85


def test_expected_outcomes_match_the_draws_per_task_and_model() -> None:
    """The ground truth is the mean of what the generator draws, per task and model, for all three
    outcomes (within 4 standard errors)."""
    data = generate(models=6, rows=20000, seed=1)
    scales = Scales(cost=float(data.cost[:, -1].mean()), latency_ms=10_000)
    truth = expected_outcomes(data, scales)
    observed = normalize_columns(data.quality, data.cost, data.latency_ms, scales)
    assert truth.shape == observed.shape == (20000, 6, 3)
    for task in range(len(TASKS)):
        rows = data.task_index == task
        error = np.abs(observed[rows].mean(axis=0) - truth[rows].mean(axis=0))
        standard_error = observed[rows].std(axis=0) / np.sqrt(rows.sum())
        assert np.all(error < 4 * standard_error + 1e-4), TASKS[task].name
