"""A seeded synthetic routing dataset in RouterBench's wide CSV layout, for tests and benchmarks.

It has what the real RouteLLM slice lacks: more than two models, latency, and known ground truth.

How a row is made (everything is drawn from one ``np.random.default_rng(seed)``):

- **Task.** Each row belongs to one of 8 latent task clusters (`TASKS`), drawn with fixed, unequal
  frequencies (`TASK_WEIGHTS`). The cluster is written as ``eval_name`` (``synth/math``, ...) and
  kept as `SynthData.task_index`.
- **Prompt.** 10-60 words; each word is taken with probability `TOPIC_WORD_SHARE` (0.4) from the
  cluster's 25-word vocabulary and otherwise from a shared ~80-word filler vocabulary, so the words
  reveal the cluster, noisily. Some words carry a comma; prompts end in ``.`` or ``?``.
- **Models.** `MODEL_LADDER` has 8 models priced like real 2024-25 APIs, cheapest first;
  ``generate(models=k)`` takes ``k`` of them spread over the ladder (always the cheapest and the
  dearest). Skill rises with price, but not strictly.
- **Quality.** Expected quality ``mu[m, c] = sigmoid(skill[m] - difficulty[c] + affinity[m, c])``
  with ``affinity[m, c] ~ Normal(0, AFFINITY_STD[m])`` drawn per seed and centred per model, so a
  cheap model can match a dear one on some tasks and lose badly on others. Observed quality is
  ``clip(mu + shift + noise, 0, 1)``: ``shift ~ Normal(0, ROW_SHIFT_STD)`` is one per row, shared by
  all models (some prompts are just harder); ``noise ~ Normal(0, QUALITY_NOISE_STD)`` is per cell.
  Both are small, so the per-row oracle is mostly the expected-utility oracle.
- **Cost.** Input tokens ``ceil(chars / 4)``; output tokens ``task mean x model verbosity x
  LogNormal(0, OUTPUT_TOKENS_SIGMA)``, rounded, at least 1;
  ``cost = (in * price_in + out * price_out) / 1e6`` USD.
- **Latency.** ``(ttft + out * ms_per_output_token) x LogNormal(0, LATENCY_SIGMA)``; bigger models
  are slower.

Columns: ``sample_id`` (``<eval_name>.<row>``), ``eval_name``, ``prompt``, one quality column per
model, then ``<model>|total_cost`` per model, then ``<model>|latency_ms`` per model.

The constants are tuned so that the cost/quality trade-off is real; ``tests/test_synth.py`` checks
it on seeds 0-4 with 6 models, on expected quality with the dearest model's mean cost as the cost
scale. Weighting cost 0.1, over 30% of rows are best served by one of the two dearest models;
weighting it 0.9, over 30% by the cheapest; and routing per row beats the best single model.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import norm

from bandit_router.dataset import RoutingDataset
from policies import Scales


@dataclass(frozen=True)
class SynthModel:
    """One synthetic model: prices in USD per 1M tokens, latent skill, speed and talkativeness."""

    name: str
    price_in_per_m: float
    price_out_per_m: float
    skill: float
    ttft_ms: float
    ms_per_output_token: float
    verbosity: float


@dataclass(frozen=True)
class SynthTask:
    """One latent task cluster: its words, typical answer length and how hard it is."""

    name: str
    vocabulary: tuple[str, ...]
    output_tokens_mean: float
    difficulty: float


# Prices follow real tiers: nano/mini models, an open-weights model served at a flat price, then
# frontier models. The ladder is ordered by what a call costs on this data, where answers outweigh
# prompts, so the flat-priced "synth-open" sits below "synth-small" despite its higher input price.
# Skill is in logits and flat across the cheap tier: there, the task decides (see AFFINITY_STD).
MODEL_LADDER: tuple[SynthModel, ...] = (
    SynthModel("synth-nano", 0.05, 0.10, 0.6, 150.0, 4.0, 0.8),
    SynthModel("synth-mini", 0.15, 0.60, 0.6, 200.0, 6.0, 1.0),
    SynthModel("synth-open", 0.60, 0.60, 0.8, 250.0, 7.0, 1.1),
    SynthModel("synth-small", 0.25, 1.25, 0.6, 300.0, 9.0, 1.0),
    SynthModel("synth-medium", 1.10, 4.40, 1.7, 350.0, 11.0, 1.2),
    SynthModel("synth-large", 3.00, 15.00, 2.0, 450.0, 15.0, 1.1),
    SynthModel("synth-pro", 10.00, 30.00, 2.1, 600.0, 20.0, 1.3),
    SynthModel("synth-ultra", 15.00, 75.00, 2.8, 800.0, 28.0, 1.2),
)


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Difficulty is in the same logits as skill. On easy tasks every model does well and the dear ones
# add little; on hard ones the cheap tier sits on the steep part of the sigmoid, where skill pays.
TASKS: tuple[SynthTask, ...] = (
    SynthTask(
        "math",
        _words(
            "integral derivative equation solve prove theorem matrix eigenvalue polynomial "
            "probability lemma algebra geometry calculus fraction modulo prime factor vector limit "
            "sum inequality triangle logarithm root"
        ),
        output_tokens_mean=300.0,
        difficulty=1.6,
    ),
    SynthTask(
        "code",
        _words(
            "python function compile debug refactor class variable loop array recursion exception "
            "algorithm regex api bug stacktrace pointer thread async unittest javascript sql "
            "dictionary iterator git"
        ),
        output_tokens_mean=400.0,
        difficulty=2.0,
    ),
    SynthTask(
        "summarize",
        _words(
            "summarize summary article paragraph tldr bullet condense abstract gist outline "
            "overview highlights excerpt report briefly recap shorten essay chapter headline "
            "digest notes keypoints transcript memo"
        ),
        output_tokens_mean=150.0,
        difficulty=0.8,
    ),
    SynthTask(
        "translate",
        _words(
            "translate french spanish german italian japanese chinese portuguese russian korean "
            "dutch arabic idiom phrase sentence fluent grammar dialect vocabulary accent bilingual "
            "subtitle localize wording native"
        ),
        output_tokens_mean=120.0,
        difficulty=-0.4,
    ),
    SynthTask(
        "chat",
        _words(
            "hello thanks weekend movie hobby feel friend recommend favorite dinner plans joke "
            "birthday vacation weather music chat lonely advice gift party coffee pet garden bored"
        ),
        output_tokens_mean=180.0,
        difficulty=-1.2,
    ),
    SynthTask(
        "legal",
        _words(
            "contract clause liability statute plaintiff defendant tort lawsuit jurisdiction "
            "precedent court attorney lease indemnity breach arbitration negligence copyright "
            "trademark compliance regulation appeal verdict testimony damages"
        ),
        output_tokens_mean=350.0,
        difficulty=1.0,
    ),
    SynthTask(
        "medical",
        _words(
            "symptom diagnosis dosage patient fever chronic antibiotic prescription allergy "
            "infection vaccine blood pressure cardiac insulin diabetes therapy clinical tumor "
            "surgery migraine rash inflammation prognosis pharmacist"
        ),
        output_tokens_mean=300.0,
        difficulty=1.3,
    ),
    SynthTask(
        "trivia",
        _words(
            "capital president river mountain invented discovered planet olympic century painter "
            "novel author ocean continent largest tallest oldest battle dynasty empire element "
            "composer island flag population"
        ),
        output_tokens_mean=30.0,
        difficulty=0.6,
    ),
)

# Fixed, unequal cluster frequencies (same order as TASKS); they sum to 1.
TASK_WEIGHTS: tuple[float, ...] = (0.16, 0.18, 0.10, 0.08, 0.16, 0.09, 0.08, 0.15)

FILLER_VOCABULARY: tuple[str, ...] = _words(
    "the a an and or but if then so because of to in on for with about from by as at is are was "
    "were be been it this that these those i you we they my your our please can could would "
    "should will do does did what how why which who when where me help need want know tell "
    "explain give make write show some any all more most very just also really here there now "
    "again first next one two"
)

TOPIC_WORD_SHARE = 0.4
PROMPT_WORDS = (10, 60)
COMMA_SHARE = 0.06
# Small models are specialists, frontier models even-handed: 0.8 on average. The wide spread on the
# cheap tier is what makes "which cheap model?" depend on the task by more than the noise.
AFFINITY_STD: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.75, 0.7, 0.65, 0.6)
ROW_SHIFT_STD = 0.05
# Small next to the quality gaps affinity makes, so the per-row oracle mostly agrees with the
# expected-utility oracle (about 9 rows in 10 at cost weight 0.5).
QUALITY_NOISE_STD = 0.03
OUTPUT_TOKENS_SIGMA = 0.3
LATENCY_SIGMA = 0.2


@dataclass(frozen=True)
class SynthData:
    """A generated dataset: row-aligned columns, plus the ground truth the CSV does not show."""

    models: tuple[str, ...]
    sample_ids: tuple[str, ...]
    eval_names: tuple[str, ...]
    prompts: tuple[str, ...]
    quality: np.ndarray
    cost: np.ndarray
    latency_ms: np.ndarray
    expected_quality: np.ndarray
    task_index: np.ndarray


class _Calls:
    """What a call to each model costs and how long it works, given how much longer or shorter
    than typical its answer is (``spread``, a factor on the answer's tokens)."""

    def __init__(self, ladder: Sequence[SynthModel], prompts: Sequence[str], task_index: np.ndarray):
        def per_model(field: str) -> np.ndarray:
            return np.array([getattr(m, field) for m in ladder])[None, :]

        self.input_tokens = np.ceil(np.array([len(p) for p in prompts]) / 4.0)[:, None]
        self.task_tokens = np.array([t.output_tokens_mean for t in TASKS])[task_index][:, None]
        self.verbosity = per_model("verbosity")
        self.price_in, self.price_out = per_model("price_in_per_m"), per_model("price_out_per_m")
        self.ttft_ms, self.ms_per_token = per_model("ttft_ms"), per_model("ms_per_output_token")

    def cost_and_work_ms(self, spread: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Cost in USD and latency before its own random factor, ``(rows, models)`` each."""
        output_tokens = np.maximum(1.0, np.round(self.task_tokens * self.verbosity * spread))
        cost = (self.input_tokens * self.price_in + output_tokens * self.price_out) / 1e6
        return cost, self.ttft_ms + output_tokens * self.ms_per_token


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _prompts(task_index: np.ndarray, rng: np.random.Generator) -> list[str]:
    """Draw every word of every prompt in a few vectorised calls, then join per row."""
    rows = task_index.size
    lengths = rng.integers(PROMPT_WORDS[0], PROMPT_WORDS[1] + 1, size=rows)
    total = int(lengths.sum())
    word_task = np.repeat(task_index, lengths)
    topic_table = np.array([task.vocabulary for task in TASKS])  # every vocabulary has 25 words
    topic = rng.random(total) < TOPIC_WORD_SHARE
    topic_pick = rng.integers(0, topic_table.shape[1], size=total)
    filler_pick = rng.integers(0, len(FILLER_VOCABULARY), size=total)
    comma = rng.random(total) < COMMA_SHARE
    question = rng.random(rows) < 0.5
    words = np.where(
        topic,
        topic_table[word_task, topic_pick],
        np.asarray(FILLER_VOCABULARY)[filler_pick],
    ).astype(object)
    words[comma] = words[comma] + ","
    ends = np.cumsum(lengths)
    prompts = []
    for row, (start, end) in enumerate(zip(ends - lengths, ends, strict=True)):
        body = " ".join(words[start:end]).rstrip(",")
        prompts.append(body[0].upper() + body[1:] + ("?" if question[row] else "."))
    return prompts


def generate(models: int = 6, rows: int = 20000, seed: int = 0) -> SynthData:
    """Generate a seeded synthetic routing dataset (see the module docstring for the recipe).

    Parameters
    ----------
    models
        How many models, 2 to 8, spread over `MODEL_LADDER` from the cheapest to the dearest.
    rows
        How many prompts, at least 1.
    seed
        Seed of the one random generator everything is drawn from.

    Returns
    -------
    SynthData
        Columns in row order; ``quality``, ``cost``, ``latency_ms`` and ``expected_quality`` are
        ``(rows, models)`` arrays.

    Examples
    --------
    >>> data = generate(models=3, rows=5, seed=1)
    >>> data.models
    ('synth-nano', 'synth-medium', 'synth-ultra')
    >>> data.quality.shape, data.eval_names[0].startswith("synth/")
    ((5, 3), True)
    >>> bool(np.all(data.cost[:, 0] < data.cost[:, 2]))
    True
    """
    if not 2 <= models <= len(MODEL_LADDER):
        raise ValueError(f"models must be between 2 and {len(MODEL_LADDER)}, got {models}")
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    rng = np.random.default_rng(seed)
    picked = np.linspace(0, len(MODEL_LADDER) - 1, models).round().astype(int)
    ladder = [MODEL_LADDER[i] for i in picked]

    # Affinity is drawn for the whole ladder so that models=k and models=8 share their structure;
    # centring per model keeps `skill` the model's average strength.
    affinity = rng.normal(0.0, 1.0, size=(len(MODEL_LADDER), len(TASKS)))
    affinity *= np.asarray(AFFINITY_STD, dtype=float).reshape(-1, 1)
    affinity -= affinity.mean(axis=1, keepdims=True)
    skill = np.array([m.skill for m in MODEL_LADDER])[:, None]
    difficulty = np.array([t.difficulty for t in TASKS])[None, :]
    mu = _sigmoid(skill - difficulty + affinity)[picked]  # (models, tasks)

    task_index = rng.choice(len(TASKS), size=rows, p=np.asarray(TASK_WEIGHTS))
    prompts = _prompts(task_index, rng)

    expected_quality = mu[:, task_index].T
    shift = rng.normal(0.0, ROW_SHIFT_STD, size=(rows, 1))
    noise = rng.normal(0.0, QUALITY_NOISE_STD, size=(rows, models))
    quality = np.clip(expected_quality + shift + noise, 0.0, 1.0)

    calls = _Calls(ladder, prompts, task_index)
    cost, work_ms = calls.cost_and_work_ms(rng.lognormal(0.0, OUTPUT_TOKENS_SIGMA, (rows, models)))
    latency = work_ms * rng.lognormal(0.0, LATENCY_SIGMA, (rows, models))

    eval_names = tuple(f"synth/{TASKS[c].name}" for c in task_index)
    return SynthData(
        models=tuple(m.name for m in ladder),
        sample_ids=tuple(f"{name}.{row}" for row, name in enumerate(eval_names)),
        eval_names=eval_names,
        prompts=tuple(prompts),
        quality=quality,
        cost=cost,
        latency_ms=latency,
        expected_quality=expected_quality,
        task_index=task_index,
    )


# Gauss-Hermite nodes for expectations over the standard-normal log of a lognormal factor.
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(24)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


def expected_outcomes(data: SynthData, scales: Scales) -> np.ndarray:
    """The ground truth behind the noise: each row's and model's expected normalised outcomes
    ``(rows, models, 3)``, ``[E quality, E min(cost / scale, 1), E min(latency / scale, 1)]``.

    What a policy could know at best from the prompt: the task and the prompt's length, not the
    row's draws. Quality is the mean of the clipped normal, cost and latency are integrated over
    the lognormal answer length and latency factor (Gauss-Hermite, 24 nodes each). `utilities` of
    this is each row's expected utility; its argmax is the expected-utility oracle, against which
    regret is the pseudo-regret of bandit theory.

    Examples
    --------
    >>> data = generate(models=2, rows=2000, seed=3)
    >>> truth = expected_outcomes(data, Scales(cost=0.01, latency_ms=10000.0))
    >>> observed = np.stack([data.quality, np.minimum(data.cost / 0.01, 1.0)], axis=-1)
    >>> bool(np.all(np.abs(observed.mean(axis=0) - truth[:, :, :2].mean(axis=0)) < 0.005))
    True
    """
    ladder = {m.name: m for m in MODEL_LADDER}
    calls = _Calls([ladder[name] for name in data.models], data.prompts, data.task_index)
    spread = np.hypot(ROW_SHIFT_STD, QUALITY_NOISE_STD)
    low, high = -data.expected_quality / spread, (1.0 - data.expected_quality) / spread
    quality = (
        data.expected_quality * (norm.cdf(high) - norm.cdf(low))
        + spread * (norm.pdf(low) - norm.pdf(high))
        + norm.sf(high)
    )
    cost = np.zeros_like(quality)
    latency = np.zeros_like(quality)
    for node, weight in zip(_NODES, _WEIGHTS, strict=True):
        call_cost, work_ms = calls.cost_and_work_ms(np.exp(OUTPUT_TOKENS_SIGMA * node))
        cost += weight * np.minimum(call_cost / scales.cost, 1.0)
        for latency_node, latency_weight in zip(_NODES, _WEIGHTS, strict=True):
            factor = np.exp(LATENCY_SIGMA * latency_node)
            latency += weight * latency_weight * np.minimum(work_ms * factor / scales.latency_ms, 1.0)
    return np.stack([quality, cost, latency], axis=-1)


def write_csv(data: SynthData, path: str | Path) -> None:
    """Write `data` in the wide layout (quality 4 decimals, cost 8, latency 1).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     target = Path(folder) / "synth.csv"
    ...     write_csv(generate(models=2, rows=3, seed=0), target)
    ...     target.read_text().splitlines()[0]
    'sample_id,eval_name,prompt,synth-nano,synth-ultra,synth-nano|total_cost,synth-ultra|total_cost,synth-nano|latency_ms,synth-ultra|latency_ms'
    """
    header = ["sample_id", "eval_name", "prompt", *data.models]
    header += [f"{m}|total_cost" for m in data.models]
    header += [f"{m}|latency_ms" for m in data.models]
    # Format whole columns at once; per-cell f-strings dominate the runtime otherwise.
    quality = np.char.mod("%.4f", data.quality)
    cost = np.char.mod("%.8f", data.cost)
    latency = np.char.mod("%.1f", data.latency_ms)
    numbers = np.concatenate([quality, cost, latency], axis=1).tolist()
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for sample_id, eval_name, prompt, values in zip(
            data.sample_ids, data.eval_names, data.prompts, numbers, strict=True
        ):
            writer.writerow([sample_id, eval_name, prompt, *values])


def to_dataset(data: SynthData) -> RoutingDataset:
    """The generated data as a `RoutingDataset`, as if read back from its CSV (unrounded)."""
    return RoutingDataset(
        models=data.models,
        sample_ids=data.sample_ids,
        eval_names=data.eval_names,
        prompts=data.prompts,
        quality=data.quality,
        cost=data.cost,
        latency_ms=data.latency_ms,
    )
