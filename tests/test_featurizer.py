"""What the prompt featurizer must guarantee: shape, unit-norm hashing, determinism, signals."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from bandit_router import featurizer as featurizer_module
from bandit_router.dataset import load_routing_csv
from bandit_router.featurizer import (
    N_DENSE,
    VERSION,
    Featurizer,
    _ascii_tokens,
    _unicode_tokens,
)
from tests.conftest import SAMPLE_DATA

REPO_ROOT = Path(__file__).resolve().parents[1]
LOG_LENGTH, DIGITS, CODE, MATH, LINES = range(5)
CHOICES = N_DENSE - 1

PROMPTS = [
    "Summarise the attached quarterly report in three bullet points.",
    "Solve for x: 3x + 4 = 19",
    "def add(a, b):\n    return a + b\n",
    "今天天气很好，我们去公园散步吧。",
    "Ship it 🚀🚀 — naïve café, Straße, ÉCOLE",
    "",
    "   \n\t ",
]


def dense(featurizer: Featurizer, prompt: str) -> np.ndarray:
    return featurizer.transform(prompt)[featurizer.dense_slice]


def hashed(featurizer: Featurizer, prompt: str) -> np.ndarray:
    return featurizer.transform(prompt)[: featurizer.hashed_dims]


def digest(featurizer: Featurizer, prompt: str) -> str:
    return hashlib.sha256(featurizer.transform(prompt).tobytes()).hexdigest()


# --- shape and validation -------------------------------------------------------------------


@pytest.mark.parametrize("dim", [256, 64, N_DENSE + 9, 1000])
def test_shape_dtype_and_layout(dim: int) -> None:
    featurizer = Featurizer() if dim == 256 else Featurizer(dim=dim)
    x = featurizer.transform("Route me to the cheapest model that can do this.")
    assert x.shape == (dim,)
    assert x.dtype == np.float64
    assert featurizer.hashed_dims == dim - N_DENSE
    assert featurizer.dense_slice == slice(dim - N_DENSE, dim)
    assert x[featurizer.dense_slice].shape == (N_DENSE,)


def test_default_dim_is_256() -> None:
    assert Featurizer().dim == 256


@pytest.mark.parametrize("dim", [N_DENSE + 8, 5, 0, -3])
def test_too_small_dim_is_rejected_with_the_limit_in_the_message(dim: int) -> None:
    with pytest.raises(ValueError, match=rf"greater than {N_DENSE + 8}.*got {dim}"):
        Featurizer(dim=dim)


@pytest.mark.parametrize("dim", [64.0, "64", True])
def test_non_integer_dim_is_rejected(dim: object) -> None:
    with pytest.raises(ValueError, match="must be an integer"):
        Featurizer(dim=dim)  # type: ignore[arg-type]


def test_numpy_integer_dim_is_accepted_as_int() -> None:
    featurizer = Featurizer(dim=np.int64(40))  # type: ignore[arg-type]
    assert type(featurizer.dim) is int
    assert featurizer.transform("hello").shape == (40,)


# --- normalisation --------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [p for p in PROMPTS if p.strip()] + ["a", "!!!", "x" * 5000])
def test_hashed_part_has_unit_norm(prompt: str) -> None:
    for featurizer in (Featurizer(), Featurizer(dim=32)):
        assert abs(np.linalg.norm(hashed(featurizer, prompt)) - 1.0) < 1e-12


@pytest.mark.parametrize("prompt", ["", " ", "   \n\t \r\n"])
def test_blank_prompt_gives_zero_hashed_part_and_finite_output(prompt: str) -> None:
    featurizer = Featurizer()
    x = featurizer.transform(prompt)
    assert np.all(np.isfinite(x))
    assert np.count_nonzero(x[: featurizer.hashed_dims]) == 0


def test_empty_prompt_is_all_zero() -> None:
    x = Featurizer().transform("")
    assert np.array_equal(x, np.zeros(256))


def test_case_and_whitespace_do_not_change_the_hashed_part() -> None:
    featurizer = Featurizer()
    a = hashed(featurizer, "Explain   the Theory of\nRelativity")
    b = hashed(featurizer, "explain the theory of relativity")
    assert np.array_equal(a, b)


# --- determinism ----------------------------------------------------------------------------


def test_identical_across_processes_with_different_hash_seeds() -> None:
    featurizer = Featurizer(dim=128)
    expected = [digest(featurizer, p) for p in PROMPTS]
    script = (
        "import hashlib, json, sys\n"
        "from bandit_router.featurizer import Featurizer\n"
        "f = Featurizer(dim=128)\n"
        "prompts = json.loads(sys.stdin.read())\n"
        "digests = [hashlib.sha256(f.transform(p).tobytes()).hexdigest() for p in prompts]\n"
        "print(json.dumps(digests))\n"
    )
    for seed in ("0", "1", "random", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO_ROOT)}
        result = subprocess.run(
            [sys.executable, "-c", script],
            input=json.dumps(PROMPTS),
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO_ROOT,
            check=True,
        )
        assert json.loads(result.stdout) == expected, f"PYTHONHASHSEED={seed}"


def test_same_prompt_same_vector_and_fresh_instances_agree() -> None:
    for prompt in PROMPTS:
        assert np.array_equal(Featurizer().transform(prompt), Featurizer().transform(prompt))


def test_known_vector_is_pinned() -> None:
    # Failing here means every logged context and learned weight vector is now stale: a deliberate
    # change must bump featurizer.VERSION, which snapshots and decision logs record.
    assert VERSION == 1
    x = Featurizer(dim=24).transform("Hello, world")
    expected = [
        -0.156366517598, 0.541669506166, 0.541669506166, -0.156366517598, 0.0, 0.0,
        -0.156366517598, 0.539384698570, -0.156366517598, -0.156366517598, 0.0,
        0.258993248037, 0.0, 0.0, 0.0, 0.02, 0.096, 0.048, 0.024, 0.012, 0.006, 0.003,
        0.0015, 0.0,
    ]  # fmt: skip
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-12)


# --- geometry -------------------------------------------------------------------------------


def test_similar_prompts_are_closer_than_unrelated_ones() -> None:
    featurizer = Featurizer()
    train_a = hashed(
        featurizer,
        "A train travels 120 miles in 2 hours. How many miles does it travel in 5 hours "
        "at the same speed?",
    )
    train_b = hashed(
        featurizer,
        "A car travels 150 miles in 3 hours. At the same speed, how many miles will it "
        "travel in 7 hours?",
    )
    lease_a = hashed(
        featurizer,
        "Can my landlord keep my security deposit if I gave written notice before "
        "terminating the lease?",
    )
    lease_b = hashed(
        featurizer,
        "Is a landlord allowed to withhold the security deposit after a tenant ends the "
        "lease early?",
    )
    # Vectors have unit norm, so the dot product is the cosine.
    assert train_a @ train_b > 0.6
    assert train_a @ lease_a < 0.2
    assert train_a @ train_b - max(train_a @ lease_a, train_b @ lease_b) > 0.4
    assert lease_a @ lease_b - max(lease_a @ train_a, lease_b @ train_b) > 0.2


def test_word_signs_are_balanced() -> None:
    # With a huge table, a one-word prompt's largest entry is its word feature (weight 1 against
    # 0.5 / sqrt(n) for each 3-gram), so its sign is the word's hash sign.
    featurizer = Featurizer(dim=2**16 + N_DENSE)
    rng = np.random.default_rng(7)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = {"".join(rng.choice(letters, size=rng.integers(4, 10))) for _ in range(2100)}
    signs = []
    for word in sorted(words)[:2000]:
        x = hashed(featurizer, word)
        signs.append(np.sign(x[np.argmax(np.abs(x))]))
    assert len(signs) == 2000
    assert -0.1 <= float(np.mean(signs)) <= 0.1


def test_all_hashed_entries_are_about_half_negative() -> None:
    featurizer = Featurizer(dim=4096 + N_DENSE)
    x = hashed(featurizer, " ".join(f"token{i} word{i * 7}" for i in range(400)))
    nonzero = x[x != 0]
    assert nonzero.size > 1000
    assert 0.4 <= float(np.mean(nonzero < 0)) <= 0.6


# --- dense signals --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "snippet",
    [
        "```python\nprint('hi')\n```",
        "def add(a, b):\n    return a + b",
        "class Stack(list):\n    pass",
        "#include <stdio.h>\nint main() { return 0; }",
        "const f = (x) => x * 2",
        "import numpy as np\nx = np.ones(3)",
        "from collections import deque",
        "int x = 3;\nint y = 4;",
        "function f(x) {\n  return x;\n}",
    ],
)
def test_code_marker_fires_on_code(snippet: str) -> None:
    assert dense(Featurizer(), snippet)[CODE] == 1.0


@pytest.mark.parametrize(
    "prose",
    [
        "Please summarise the report; keep it short.",
        "Is a class action lawsuit worth joining? It is important to decide.",
        "We define success as shipping on time.",
        "Write me a haiku about autumn leaves.",
    ],
)
def test_code_marker_stays_off_for_prose(prose: str) -> None:
    assert dense(Featurizer(), prose)[CODE] == 0.0


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("Solve 3x + 4 = 19 for x.", 2 / 3),  # equation and arithmetic
        ("What is 12 * 7?", 1 / 3),
        ("Compute \\frac{1}{2} + 3/4 = ?", 1.0),
        ("Find the roots of x^2 - 5x + 6 = 0", 2 / 3),
        ("What is sqrt(2)?", 1 / 3),
        ("Write a poem about the sea.", 0.0),
        ("The meeting is on 2024-01-05 at 10:30.", 0.0),  # dates and times are not arithmetic
    ],
)
def test_math_marker_counts_cue_kinds(prompt: str, expected: float) -> None:
    assert dense(Featurizer(), prompt)[MATH] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("12ab", 0.5), ("abcd", 0.0), ("2024", 1.0), ("a1 b2 c3 d4", 4 / 11), ("Ünï 99", 2 / 6)],
)
def test_digit_fraction(prompt: str, expected: float) -> None:
    assert dense(Featurizer(), prompt)[DIGITS] == pytest.approx(expected, abs=1e-12)


def test_log_length_is_monotone_and_capped() -> None:
    featurizer = Featurizer()
    lengths = [1, 10, 100, 1_000, 10_000, 20_000]
    values = [dense(featurizer, "a" * n)[LOG_LENGTH] for n in lengths]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    assert values[0] == pytest.approx(np.log1p(1) / np.log1p(20_000), abs=1e-12)
    assert values[-1] == pytest.approx(1.0, abs=1e-12)
    assert dense(featurizer, "a" * 50_000)[LOG_LENGTH] == 1.0


def test_line_density() -> None:
    featurizer = Featurizer()
    assert dense(featurizer, "one line")[LINES] == pytest.approx(1 / 50)
    assert dense(featurizer, "a\nb\nc")[LINES] == pytest.approx(3 / 50)
    assert dense(featurizer, "x\n" * 200)[LINES] == 1.0


@pytest.mark.parametrize("prompt", PROMPTS + ["x" * 30_000, "1" * 100, "\n" * 100])
def test_dense_signals_stay_in_unit_interval(prompt: str) -> None:
    d = dense(Featurizer(), prompt)
    assert np.all((d >= 0.0) & (d <= 1.0))


# --- batch and unicode ----------------------------------------------------------------------


def test_transform_many_equals_stacked_transform() -> None:
    featurizer = Featurizer(dim=96)
    batch = featurizer.transform_many(p for p in PROMPTS)  # any iterable, even a generator
    assert batch.shape == (len(PROMPTS), 96)
    assert batch.dtype == np.float64
    assert np.array_equal(batch, np.stack([featurizer.transform(p) for p in PROMPTS]))


def test_transform_many_of_nothing_is_an_empty_matrix() -> None:
    assert Featurizer(dim=50).transform_many([]).shape == (0, 50)


@pytest.mark.parametrize(
    "prompt",
    [
        "今天天气很好，我们去公园散步吧。",
        "🚀🔥💯",
        "Привет, мир!",
        "مرحبا بالعالم",
        "naïve café 😀 日本語",
    ],
)
def test_unicode_prompts_are_finite_with_unit_norm(prompt: str) -> None:
    featurizer = Featurizer()
    x = featurizer.transform(prompt)
    assert np.all(np.isfinite(x))
    assert abs(np.linalg.norm(x[: featurizer.hashed_dims]) - 1.0) < 1e-12


def test_lone_surrogate_from_json_does_not_crash() -> None:
    featurizer = Featurizer()
    x = featurizer.transform(json.loads('"caf\\u00e9 \\ud800 broken"'))
    assert np.all(np.isfinite(x))
    assert abs(np.linalg.norm(x[: featurizer.hashed_dims]) - 1.0) < 1e-12


def test_different_scripts_are_told_apart() -> None:
    featurizer = Featurizer()
    # `\w+` reads a run of Chinese characters as one word, so here only the 3-grams can match.
    a = hashed(featurizer, "今天天气很好，我们去公园散步吧。")
    b = hashed(featurizer, "今天天气很好，我们去公园跑步吧。")
    c = hashed(featurizer, "🚀🔥💯")
    assert a @ b > a @ c + 0.3


@pytest.mark.parametrize(
    "prompt",
    [
        "Hello, World_1!  foo-bar\tbaz\n",
        "MiXeD CaSe 42 x^2 + y_3 = z;\r\n",
        "ctrl\x1cchars\x1fand\x0bvertical\x0ctabs",
        "   leading and trailing   ",
        "",
        "!!! ??? ...",
    ],
)
def test_ascii_fast_path_matches_the_unicode_path(prompt: str) -> None:
    fast_words, fast_points, fast_digits = _ascii_tokens(prompt)
    words, points, digits = _unicode_tokens(prompt)
    assert fast_words == words
    assert fast_points.astype(np.uint32).tolist() == points.tolist()
    assert fast_digits == digits


def test_length_hinges_and_choices_marker() -> None:
    featurizer = Featurizer()
    hinges = slice(featurizer.hashed_dims + 5, featurizer.hashed_dims + 12)
    short, long = featurizer.transform("x" * 300), featurizer.transform("x" * 3000)
    np.testing.assert_allclose(short[hinges], [1.0, 1.0, 0.6, 0.3, 0.15, 0.075, 0.0375])
    assert np.all(long[hinges] >= short[hinges]) and long[hinges][4] == 1.0
    question = "Which is a prime?\nA. 4\nB. 6\nC. 7\nD. 9\nAnswer:"
    assert featurizer.transform(question)[featurizer.hashed_dims + CHOICES] == 1.0
    assert featurizer.transform("A. single line option")[featurizer.hashed_dims + CHOICES] == 0.0


# --- the fast implementation against a plain one ---------------------------------------------
_MASK = (1 << 64) - 1


def reference_transform(prompt: str, dim: int) -> np.ndarray:
    """The module docstring's featurizer, one n-gram at a time in Python integers and floats:
    slow, but every step can be read off the spec. `Featurizer.transform` must match it bit for
    bit, on every prompt."""
    d = dim - N_DENSE
    out = np.zeros(dim)
    lowered = prompt.lower()
    words = [w.encode("utf-8", "surrogatepass") for w in re.findall(r"\w+", lowered)]
    text = " ".join(lowered.split())
    padded = f" {text} " if text else ""
    points = [ord(c) for c in padded]

    def mixed(raw: int, family: int) -> int:
        z = (raw + int(featurizer_module._FAMILY_OFFSETS[family])) & _MASK
        z ^= z >> 30
        z = (z * 0xBF58476D1CE4E5B9) & _MASK
        z ^= z >> 27
        z = (z * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    word_hashes = [zlib.crc32(w) for w in words]
    families = [
        [mixed(h, 0) for h in word_hashes],
        [mixed((word_hashes[i] << 32) | word_hashes[i + 1], 1) for i in range(len(words) - 1)],
        [mixed((points[i] << 42) | (points[i + 1] << 21) | points[i + 2], 2)
         for i in range(len(points) - 2)],
    ]
    counts = [[0] * d for _ in range(3)]
    for family, hashes in enumerate(families):
        for h in hashes:
            counts[family][h % d] += -1 if h >> 63 else 1
    gram = [[float(sum(a * b for a, b in zip(f, g, strict=True))) for g in counts] for f in counts]
    scale = [
        w / math.sqrt(gram[f][f]) if gram[f][f] else 0.0 for f, w in enumerate((1.0, 0.5, 0.5))
    ]
    total = math.sqrt(sum(scale[f] * scale[g] * gram[f][g] for f in range(3) for g in range(3)))
    if total:
        for slot in range(d):
            value = counts[0][slot] * (scale[0] / total)
            value += counts[1][slot] * (scale[1] / total)
            out[slot] = value + counts[2][slot] * (scale[2] / total)
    n = len(prompt)
    if n:
        # The cue patterns are the spec; their guards (plain substring checks) are only a shortcut.
        n_math = sum(pattern.search(prompt) is not None for _, pattern in featurizer_module._MATH_CUES)
        is_code = any(pattern.search(prompt) is not None for _, pattern in featurizer_module._CODE_CUES)
        options = re.findall(r"^[ \t]*\(?[A-Ea-e][.)][ \t]", prompt, re.MULTILINE)
        out[d:] = [
            min(math.log1p(n) / math.log1p(20_000), 1.0),
            sum(prompt.count(digit) for digit in "0123456789") / n,
            float(is_code),
            n_math / 3,
            min((prompt.count("\n") + 1) / 50.0, 1.0),
            *[min(n / (125.0 * 2**k), 1.0) for k in range(7)],
            float(len(options) >= 2),
        ]
    return out


def test_reference_matches_on_the_test_prompts() -> None:
    for prompt in [*PROMPTS, "Hello, world", "A. one\nB) two\n(c) three", "x^2 = 1/2 \\frac{1}{2}"]:
        for dim in (24, 64, 256):
            assert np.array_equal(Featurizer(dim).transform(prompt), reference_transform(prompt, dim))


def test_bit_identical_to_the_reference_on_every_prompt_of_the_data(real_data: Path) -> None:
    """The sample and the real routing data (9,377 prompts, some non-ASCII): exact equality."""
    prompts = load_routing_csv(SAMPLE_DATA).prompts + load_routing_csv(real_data).prompts
    fast = Featurizer(256)
    different = [p for p in prompts if not np.array_equal(fast.transform(p), reference_transform(p, 256))]
    assert not different, f"{len(different)} prompts differ, e.g. {different[0][:200]!r}"
