"""Turn a prompt into the fixed-length float64 context vector every routing policy scores.

Deterministic across processes and machines, and cheap enough for the request hot path.

Layout of the ``dim`` output slots:

* ``[0, dim - N_DENSE)``: signed feature hashing (Weinberger et al., 2009) of three families over
  the lower-cased prompt: word unigrams (regex ``\\w+``, unicode), word bigrams, and character
  3-grams (of the text with whitespace runs collapsed to one space, padded with a space at each
  end). Each family is L2-normalised on its own and weighted (words 1.0, bigrams 0.5, 3-grams 0.5),
  then the hashed part as a whole is L2-normalised; a blank prompt gives all zeros here.
* ``[dim - N_DENSE, dim)``: dense signals, each in [0, 1] (all 0 for ``""``), in this order:

  0. log length: ``min(log1p(n_chars) / log1p(20000), 1)``.
  1. digit fraction: ASCII digits ``0-9`` over all characters of the prompt.
  2. code marker (0 or 1): a code fence, ``#include <``, ``=>``, ``def name(``, ``class Name``
     followed by ``:``, ``(`` or ``{``, an ``import``/``from .. import`` opening a line, or a
     line that ends in ``;`` or in ``{`` (an opened block).
  3. math marker (0, 1/3, 2/3 or 1): the share of three cue kinds present: a LaTeX command
     (``\\frac``, ``\\sqrt``, ``\\sum``, ...) or ``sqrt``; a lone ``=`` (not ``==``, ``=>``,
     ``<=``, ``+=``, ...); arithmetic on a number (``3 + 4``, ``3x+4``, ``2*5``, ``1/2``,
     ``7 - 1`` with spaces so dates do not count, or a power such as ``x^2``).
  4. line density: ``min(n_lines / 50, 1)``, ``n_lines`` being ``prompt.count("\\n") + 1``.
  5-11. length hinges: ``min(n_chars / s, 1)`` for s = 125 * 2**k characters, k = 0..6 (125 to
     8000). Price is linear in tokens while the utility caps cost at its scale, so a linear model
     needs length at several scales to predict a model's capped cost wherever the cap falls.
  12. choices marker (0 or 1): two or more lines open with an option label (``A.``, ``B)``,
     ``(c)``): a multiple-choice question, whose answer (and so output cost) is short.

Hashing never uses Python's salted ``hash()``: a word is ``zlib.crc32`` of its UTF-8 bytes, a bigram
packs its two word hashes into 64 bits, a 3-gram packs its three code points into 63 bits (a
polynomial in base 2**21, exact because code points are below 2**21); every raw value gets a
per-family offset and splitmix64's finalizer in numpy ``uint64``, then the slot is the result
modulo ``hashed_dims`` and the sign its top bit.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

N_DENSE = 13
# Bumped whenever the same prompt would map to a different vector: learned weights depend on it.
VERSION = 1

# Words carry most of the topic; bigrams (word order) and 3-grams (morphology, typos, scripts
# written without spaces) are supporting evidence, so each gets half a word's weight. Normalising
# each family first stops a long prompt's many 3-grams from drowning its words.
_FAMILY_WEIGHTS = (1.0, 0.5, 0.5)

# Distinct offsets per family (words, bigrams, 3-grams) so that equal raw values from two families
# (a word hash and a packed 3-gram can be the same integer) land in unrelated slots.
_FAMILY_OFFSETS = (
    np.uint64(0x9E3779B97F4A7C15),
    np.uint64(0xD1B54A32D192ED03),
    np.uint64(0x8CB92BA72F3D8DD7),
)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_SHIFT_21, _SHIFT_27, _SHIFT_30, _SHIFT_31, _SHIFT_32 = map(np.uint64, (21, 27, 30, 31, 32))
_LOG_LENGTH_CAP = math.log1p(20_000)
_LINES_CAP = 50.0
_LENGTH_HINGES = tuple(125.0 * 2**k for k in range(7))
_CHOICE_LINE = re.compile(r"^[ \t]*\(?[A-Ea-e][.)][ \t]", re.MULTILINE)
_NO_POINTS = np.zeros(0, dtype=np.uint8)

_WORD = re.compile(r"\w+")
# ASCII prompts (most traffic) skip the unicode regex: for ASCII, `\w` is exactly [A-Za-z0-9_]
# and str.split()'s whitespace adds \x1c-\x1f to bytes.split()'s, so both paths agree.
_ASCII_LOWER = bytes(
    0x20 if 0x1C <= c <= 0x1F else c + 32 if 0x41 <= c <= 0x5A else c for c in range(256)
)
_ASCII_DIGITS = b"0123456789"
_ASCII_WORD_CHARS = _ASCII_DIGITS + b"_abcdefghijklmnopqrstuvwxyz"
_ASCII_NON_WORD_TO_SPACE = bytes(c if c in _ASCII_WORD_CHARS else 0x20 for c in range(256))

# A cue is (guards, pattern): the pattern runs only if a guard substring occurs, because a plain
# `in` check costs far less than a regex scan and most prompts contain none of the guards.
_Cue = tuple[tuple[str, ...], re.Pattern[str]]
_CODE_CUES: tuple[_Cue, ...] = (
    (("```",), re.compile("```")),
    (("#include",), re.compile(r"#include\s*[<\"]")),
    (("=>",), re.compile("=>")),
    # Patterns open with their literal (and check the word boundary behind it) so re can jump
    # between occurrences instead of trying every position.
    (("def",), re.compile(r"def(?<!\wdef)\s+[A-Za-z_]\w*\s*\(")),
    (("class",), re.compile(r"class(?<!\wclass)\s+[A-Za-z_]\w*\s*[:({]")),
    (("import ",), re.compile(r"^[ \t]*(?:from\s+[\w.]+\s+)?import\s+[\w.]", re.MULTILINE)),
    ((";",), re.compile(r";[ \t\r]*$", re.MULTILINE)),
    (("{",), re.compile(r"\{[ \t\r]*$", re.MULTILINE)),
)
_MATH_CUES: tuple[_Cue, ...] = (
    (
        ("\\", "sqrt"),
        re.compile(r"\\(?:frac|sqrt|sum|prod|int|lim|cdot|times|div|pm|le|ge|neq|infty|pi)\b|sqrt"),
    ),
    (("=",), re.compile(r"=(?<![=!<>+\-*/%&|^:]=)(?![=>])")),
    (
        ("+", "*", "/", "^", "×", "÷", " - ", " − "),
        re.compile(r"[0-9][A-Za-z]?(?:\s?[+*/×÷^]\s?|\s[-−]\s)[A-Za-z(]?[0-9]|[\w)]\^[\w({]"),
    ),
)


def _fires(cue: _Cue, prompt: str) -> bool:
    guards, pattern = cue
    for guard in guards:
        if guard in prompt:
            return pattern.search(prompt) is not None
    return False


def _tokens(prompt: str) -> tuple[list[bytes], np.ndarray, int]:
    """Lower-cased words as UTF-8 bytes, code points of the padded collapsed text, digit count.

    Lower-casing and collapsing whitespace never add or remove an ASCII digit, so the digits are
    counted on the shorter normalised text.
    """
    return _ascii_tokens(prompt) if prompt.isascii() else _unicode_tokens(prompt)


def _ascii_tokens(prompt: str) -> tuple[list[bytes], np.ndarray, int]:
    """``_tokens`` for ASCII prompts, on bytes: same result, several times faster."""
    lowered = prompt.encode("ascii").translate(_ASCII_LOWER)
    words = lowered.translate(_ASCII_NON_WORD_TO_SPACE).split()
    text = b" ".join(lowered.split())
    points = np.frombuffer(b" " + text + b" ", dtype=np.uint8) if text else _NO_POINTS
    return words, points, len(text) - len(text.translate(None, _ASCII_DIGITS))


def _unicode_tokens(prompt: str) -> tuple[list[bytes], np.ndarray, int]:
    """``_tokens`` for any prompt."""
    lowered = prompt.lower()
    # surrogatepass: JSON can carry lone surrogates ("\ud800"), which strict codecs reject.
    words = [w.encode("utf-8", "surrogatepass") for w in _WORD.findall(lowered)]
    text = " ".join(lowered.split())
    # Little-endian UTF-32 gives one fixed-width code point per character on every machine.
    padded = f" {text} ".encode("utf-32-le", "surrogatepass") if text else b""
    return words, np.frombuffer(padded, dtype="<u4"), sum(map(text.count, "0123456789"))


def _finalize(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, in place: every input bit flips about half of the output bits."""
    shifted = np.empty_like(z)
    z ^= np.right_shift(z, _SHIFT_30, out=shifted)
    z *= _MIX_1
    z ^= np.right_shift(z, _SHIFT_27, out=shifted)
    z *= _MIX_2
    z ^= np.right_shift(z, _SHIFT_31, out=shifted)
    return z


def _family_hashes(words: list[bytes], points: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """Mixed uint64 hashes of all words, bigrams and 3-grams, in that order, and each count."""
    n_words = len(words)
    sizes = (n_words, max(n_words - 1, 0), max(len(points) - 2, 0))
    hashes = np.empty(sum(sizes), dtype=np.uint64)
    w, b, t = hashes[:n_words], hashes[n_words : n_words + sizes[1]], hashes[n_words + sizes[1] :]
    crc = np.fromiter(map(zlib.crc32, words), dtype=np.uint64, count=n_words)
    # In-place shifts and ors into the preallocated slices: no temporaries on the hot path.
    np.left_shift(crc[:-1], _SHIFT_32, out=b)
    b |= crc[1:]
    b += _FAMILY_OFFSETS[1]
    np.add(crc, _FAMILY_OFFSETS[0], out=w)
    np.left_shift(points[:-2], _SHIFT_21, out=t, dtype=np.uint64)
    t |= points[1:-1]
    t <<= _SHIFT_21
    t |= points[2:]
    t += _FAMILY_OFFSETS[2]
    return _finalize(hashes), sizes


def _write_hashed_part(words: list[bytes], points: np.ndarray, out: np.ndarray) -> None:
    """Hash the three families into ``out`` (length d), normalised as the module docstring says."""
    d = len(out)
    hashes, sizes = _family_hashes(words, points)
    # The sign is the top bit; the slot, h mod d, is dominated by the 63 bits below it, so the two
    # are independent for any d far below 2**63. Each family counts into its own block of d slots
    # so that it can be normalised on its own.
    signs = np.where(hashes.view(np.int64) < 0, -1.0, 1.0)
    slots = np.remainder(hashes, np.uint64(d), out=hashes).view(np.int64)
    slots[sizes[0] : sizes[0] + sizes[1]] += d
    slots[sizes[0] + sizes[1] :] += 2 * d
    counts = np.bincount(slots, weights=signs, minlength=3 * d).reshape(3, d)
    # The counts are integers, so their Gram matrix is exact in any summation order (BLAS may
    # reorder); every later step is scalar or elementwise, so no machine-dependent rounding
    # enters. The norm of sum_f c_f v_f comes from the Gram matrix: sum_fg c_f c_g <v_f, v_g>.
    gram = (counts @ counts.T).tolist()
    scale = [
        w / math.sqrt(gram[f][f]) if gram[f][f] else 0.0 for f, w in enumerate(_FAMILY_WEIGHTS)
    ]
    total = math.sqrt(sum(scale[f] * scale[g] * gram[f][g] for f in range(3) for g in range(3)))
    if total == 0:  # every family empty or cancelled out exactly: leave the zeros
        return
    np.multiply(counts[0], scale[0] / total, out=out)
    out += counts[1] * (scale[1] / total)
    out += counts[2] * (scale[2] / total)


def _dense_signals(prompt: str, n_digits: int) -> np.ndarray:
    """The N_DENSE dense slots of ``prompt``, which has ``n_digits`` ASCII digits."""
    n_chars = len(prompt)
    if n_chars == 0:
        return np.zeros(N_DENSE)
    n_math = 0
    for cue in _MATH_CUES:
        n_math += _fires(cue, prompt)
    is_code = False
    for cue in _CODE_CUES:
        if _fires(cue, prompt):
            is_code = True
            break
    return np.array(
        [
            min(math.log1p(n_chars) / _LOG_LENGTH_CAP, 1.0),
            n_digits / n_chars,
            float(is_code),
            n_math / len(_MATH_CUES),
            min((prompt.count("\n") + 1) / _LINES_CAP, 1.0),
            *[min(n_chars / hinge, 1.0) for hinge in _LENGTH_HINGES],
            float(_has_choices(prompt)),
        ]
    )


def _has_choices(prompt: str) -> bool:
    """Two or more option lines (``A.``, ``B)``, ``(c)``): a multiple-choice question."""
    if "\n" not in prompt:
        return False
    matches = _CHOICE_LINE.finditer(prompt)
    return next(matches, None) is not None and next(matches, None) is not None


@dataclass(frozen=True)
class Featurizer:
    """Hash a prompt's words, word bigrams and character 3-grams, then append dense signals.

    Parameters
    ----------
    dim
        Total output length: ``dim - N_DENSE`` hashed slots followed by ``N_DENSE`` dense slots.
        Must exceed ``N_DENSE + 8`` so the hashed part has room to spread collisions.

    References
    ----------
    Weinberger, Dasgupta, Langford, Smola and Attenberg (2009), "Feature Hashing for Large Scale
    Multitask Learning", ICML.

    Examples
    --------
    >>> featurizer = Featurizer(dim=64)
    >>> x = featurizer.transform("Solve 3x + 4 = 19 for x.")
    >>> x.shape, x.dtype
    ((64,), dtype('float64'))
    >>> round(float(np.linalg.norm(x[: featurizer.hashed_dims])), 12)
    1.0
    >>> x[featurizer.dense_slice].round(3).tolist()  # log length, digits, code, math, lines, ...
    [0.325, 0.167, 0.0, 0.667, 0.02, 0.192, 0.096, 0.048, 0.024, 0.012, 0.006, 0.003, 0.0]
    >>> bool(np.array_equal(x, Featurizer(dim=64).transform("Solve 3x + 4 = 19 for x.")))
    True
    >>> y = featurizer.transform("SOLVE 3x + 4 = 19  for X.")  # case and spacing: same hashed part
    >>> bool(np.array_equal(x[: featurizer.hashed_dims], y[: featurizer.hashed_dims]))
    True
    """

    dim: int = 256

    def __post_init__(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, int | np.integer):
            raise ValueError(f"dim must be an integer, got {self.dim!r}")
        if self.dim <= N_DENSE + 8:
            raise ValueError(
                f"dim must be greater than {N_DENSE + 8} "
                f"({N_DENSE} dense slots plus room to hash into), got {self.dim}"
            )
        object.__setattr__(self, "dim", int(self.dim))

    @property
    def hashed_dims(self) -> int:
        """Number of leading slots that hold hashed n-grams: ``dim - N_DENSE``."""
        return self.dim - N_DENSE

    @property
    def dense_slice(self) -> slice:
        """Where the dense signals sit: the last ``N_DENSE`` slots."""
        return slice(self.hashed_dims, self.dim)

    def transform(self, prompt: str) -> np.ndarray:
        """Featurize one prompt into a float64 vector of shape ``(dim,)``."""
        words, points, n_digits = _tokens(prompt)
        out = np.zeros(self.dim)
        out[self.dense_slice] = _dense_signals(prompt, n_digits)
        if len(points) == 0:  # nothing but whitespace: no words and no 3-grams
            return out
        _write_hashed_part(words, points, out[: self.hashed_dims])
        return out

    def transform_many(self, prompts: Iterable[str]) -> np.ndarray:
        """Featurize several prompts into a float64 array of shape ``(n, dim)``."""
        rows = [self.transform(p) for p in prompts]
        return np.stack(rows) if rows else np.zeros((0, self.dim))
