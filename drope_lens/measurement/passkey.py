"""Passkey and RULER retrieval prompts (METHODS.md Exp 10), answer categories, Wilson intervals.

Prompt formats (verbatim from the study):

- ``simple`` (Exp 3's): filler ``The grass is green. The sky is blue. The sun is yellow. `` repeated,
  the needle `` The secret passkey is {key}. Remember this number. `` inside it, then
  ``{text}\\n\\nWhat is the secret passkey mentioned above? Answer with just the number:``; 5-digit keys.
- ``ruler``: ``Some special magic numbers are hidden ...\\n\\n{context}\\n\\nWhat is the special magic
  number for {name} mentioned in the provided text? The special magic number for {name} is:`` with
  the needle ``The special magic number for {name} is: {key}``, a 7-digit key, and RULER's noise
  haystack (``The grass is green. The sky is blue. The sun is yellow. Here we go. There and back
  again.``); ``name`` is a seeded two-word label.
- ``verify`` (the verification prompt): ``Remember the magic number in the text below.\\n\\n{context}
  \\n\\nIs {X} the magic number from the text? Answer Yes or No:`` around a format's haystack and needle.

Lengths are counted in the model's own tokens, special tokens included (what the model is fed):
filler words are added until the whole prompt is within +-1% of the target (closest count wins).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

FORMATS: tuple[str, ...] = ("simple", "ruler")
KEY_DIGITS: dict[str, int] = {"simple": 5, "ruler": 7}
CATEGORIES: tuple[str, ...] = ("exact", "near_miss", "wrong_digits", "off_by_one_length", "wrong_length", "no_number")
LENGTH_TOLERANCE = 0.01  # a prompt is within +-1% of its target length, in tokens

SIMPLE_FILLER = "The grass is green. The sky is blue. The sun is yellow. "
SIMPLE_NEEDLE = " The secret passkey is {key}. Remember this number. "
SIMPLE_TEMPLATE = "{text}\n\nWhat is the secret passkey mentioned above? Answer with just the number:"
RULER_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
RULER_NEEDLE = "The special magic number for {name} is: {key}"
RULER_TEMPLATE = (
    "Some special magic numbers are hidden within the following text. Make sure to memorize it. I will quiz you "
    "about the numbers afterwards.\n\n{context}\n\nWhat is the special magic number for {name} mentioned in the "
    "provided text? The special magic number for {name} is:"
)
VERIFY_TEMPLATE = "Remember the magic number in the text below.\n\n{context}\n\nIs {candidate} the magic number from the text? Answer Yes or No:"

_NAME_WORDS = ("amber apple autumn bright calm copper coral crimson dusty eager gentle golden hidden hollow ivory "
               "jolly lively lucky misty noble olive pale quiet rapid rustic silver sleepy steady swift tidy velvet "
               "wild").split()
_NAME_NOUNS = ("anchor badge beacon bridge candle canoe castle cottage feather garden harbor kettle ladder lantern "
               "meadow mirror orchard pebble quilt ribbon saddle shelf tower violin wagon window").split()


class PromptError(ValueError):
    """A prompt cannot be built as asked (unknown format, target length too short for the needle, ...)."""


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise PromptError(f"format={fmt!r}: allowed values are {list(FORMATS)}.")
    return fmt


def random_key(rng: random.Random, digits: int, divisor: Optional[int] = None) -> str:
    """A ``digits``-digit decimal key (no leading zero); a multiple of ``divisor`` when given."""
    if digits < 2:
        raise PromptError(f"digits={digits}: keys need at least 2 digits.")
    low, high = 10 ** (digits - 1), 10**digits - 1
    if divisor is None:
        return str(rng.randint(low, high))
    first = -(-low // divisor)
    return str(divisor * rng.randint(first, high // divisor))


def random_name(rng: random.Random) -> str:
    """A RULER needle label such as ``quiet-lantern``."""
    return f"{rng.choice(_NAME_WORDS)}-{rng.choice(_NAME_NOUNS)}"


def near_misses(key: str, rng: random.Random, count: int = 3) -> list[str]:
    """``count`` distinct keys of the same length differing from ``key`` in exactly one digit
    (never a leading zero): the candidates ranked against the true key."""
    if not key.isdigit() or len(key) < 2:
        raise PromptError(f"key={key!r}: need a string of at least 2 digits.")
    out: list[str] = []
    while len(out) < count:
        position = rng.randrange(len(key))
        choices = [d for d in "0123456789" if d != key[position] and not (position == 0 and d == "0")]
        candidate = key[:position] + rng.choice(choices) + key[position + 1 :]
        if candidate not in out:
            out.append(candidate)
    return out


@dataclass(frozen=True)
class Needle:
    """What a trial hides: the key (digits), its RULER label (``""`` for simple) and the format."""

    format: str
    key: str
    name: str = ""

    @property
    def sentence(self) -> str:
        if self.format == "simple":
            return SIMPLE_NEEDLE.format(key=self.key)
        return RULER_NEEDLE.format(name=self.name, key=self.key)

    @property
    def filler(self) -> str:
        return SIMPLE_FILLER if self.format == "simple" else RULER_FILLER


def _stream(needle: Needle, words: int) -> list[str]:
    """``words`` filler words: the filler repeated, the first repeat cut short so that the haystack
    ends with a whole repeat (what precedes the question is always the full filler)."""
    unit = needle.filler.split()
    return [unit[(i - words) % len(unit)] for i in range(words)]


def needle_index(needle: Needle, words: int, depth: float) -> int:
    """Words before the needle: the boundary between whole filler repeats closest to
    ``depth * words``, as Exp 3 puts the needle between repeats (the earlier wins a tie)."""
    unit = len(needle.filler.split())
    bounds = [0] + list(range(words % unit, words + 1, unit))
    return min(bounds, key=lambda i: (abs(i - depth * words), i))


def _haystack(needle: Needle, words: int, depth: float) -> str:
    """``words`` filler words with the needle at the repeat boundary nearest ``depth`` of them."""
    stream = _stream(needle, words)
    before = needle_index(needle, words, depth)
    left, right = " ".join(stream[:before]), " ".join(stream[before:])
    if needle.format == "simple":  # as Exp 3: filler sentences end with a space and the needle starts
        # and ends with one (two spaces at each side of it, as the study's prompts and the toy corpus have)
        return ((left + " " if left else "") + needle.sentence + right).strip()
    parts = [p for p in (left, needle.sentence + ".", right) if p]
    return " ".join(parts)


def render(needle: Needle, words: int, depth: float, candidate: Optional[str] = None) -> str:
    """The retrieval prompt of ``needle`` (``candidate=None``) or its verification prompt asking
    about ``candidate``, with ``words`` filler words and the needle at ``depth`` (0..1) of them."""
    text = _haystack(needle, words, depth)
    if candidate is not None:
        return VERIFY_TEMPLATE.format(context=text, candidate=candidate)
    if needle.format == "simple":
        return SIMPLE_TEMPLATE.format(text=text)
    return RULER_TEMPLATE.format(context=text, name=needle.name)


Counter = Callable[[str], int]


def fit_words(build: Callable[[int], str], count: Counter, target: int, tolerance: float = LENGTH_TOLERANCE) -> tuple[int, int]:
    """``(words, tokens)``: the filler word count whose prompt ``build(words)`` has the token count
    closest to ``target``; raises :class:`PromptError` if that is not within ``tolerance`` of it.

    Starts from the slope measured between 0 and a long filler and corrects with the measured
    error (the filler is periodic, so one or two corrections suffice), then checks neighbours.
    """
    base = count(build(0))
    if base > target * (1 + tolerance):
        raise PromptError(
            f"target length {target} tokens is shorter than the prompt without filler ({base} tokens: template, "
            "needle and question); ask for a longer length."
        )
    probe = max(64, target)
    per_word = max(1e-3, (count(build(probe)) - base) / probe)
    words = max(0, round((target - base) / per_word))
    seen: dict[int, int] = {}
    for _ in range(8):
        seen[words] = count(build(words))
        step = round((target - seen[words]) / per_word)
        if step == 0:
            break
        words = max(0, words + step)
    best = min(seen, key=lambda w: (abs(seen[w] - target), w))
    for neighbour in (best - 2, best - 1, best + 1, best + 2):
        if neighbour >= 0 and neighbour not in seen:
            seen[neighbour] = count(build(neighbour))
    best = min(seen, key=lambda w: (abs(seen[w] - target), w))
    if abs(seen[best] - target) > tolerance * target:
        raise PromptError(
            f"cannot reach {target} tokens within {tolerance:.0%}: closest is {seen[best]} tokens; filler words "
            f"are {per_word:.2f} tokens each (ask for a longer target length)."
        )
    return best, seen[best]


# ------------------------------------------------------------------------------------------
# Answers
# ------------------------------------------------------------------------------------------
_NUMBER = re.compile(r"\d+")


def extract_answer(generated: str, key: str) -> Optional[str]:
    """The digit run of ``generated`` closest in length to ``key`` (the first such one on a tie;
    the key itself if it occurs as a run), or None when there is no digit."""
    runs = _NUMBER.findall(generated)
    if not runs:
        return None
    if key in runs:
        return key
    return min(runs, key=lambda r: abs(len(r) - len(key)))  # min keeps the first of equals


def categorize(generated: str, key: str) -> str:
    """Error category of a generated answer (METHODS.md Exp 10).

    Numbers are digit runs; the one closest in length to ``key`` is the answer (first on ties,
    the key if present). ``exact``: equals the key; ``near_miss``: same length, 1-2 digits
    differ; ``wrong_digits``: same length, more differ; ``off_by_one_length``: one digit longer or
    shorter; ``wrong_length``: otherwise; ``no_number``: no digit at all.
    """
    if not key.isdigit():
        raise ValueError(f"key={key!r}: must be a string of digits.")
    answer = extract_answer(generated, key)
    if answer is None:
        return "no_number"
    if answer == key:
        return "exact"
    if len(answer) == len(key):
        return "near_miss" if sum(a != b for a, b in zip(answer, key)) <= 2 else "wrong_digits"
    return "off_by_one_length" if abs(len(answer) - len(key)) == 1 else "wrong_length"


# ------------------------------------------------------------------------------------------
# Intervals
# ------------------------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval (default 95%) of a binomial proportion ``successes / n``."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"successes={successes}, n={n}: need n >= 1 and 0 <= successes <= n.")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # exactly 0 at no successes and 1 at all (the formula leaves rounding residue such as 5.55e-17)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mean_interval(values: Sequence[float], z: float = 1.959963984540054) -> tuple[float, float, float]:
    """``(mean, low, high)``: normal-approximation 95% interval of a mean (low = high = mean for n < 2)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, mean - z * sd / math.sqrt(n), mean + z * sd / math.sqrt(n)


# ------------------------------------------------------------------------------------------
# Trials
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trial:
    """One retrieval prompt and its verification prompts, fitted to ``length`` tokens.

    ``depth``: the asked share of filler words before the needle (grid value or drawn);
    ``needle_at``: the share actually before it (nearest boundary between filler repeats); ``words``: filler words;
    ``candidates``: the key then its 3 near-misses (verification/ranking); ``prompt_tokens``
    and ``verify_tokens``: token counts of the retrieval prompt and of the key's verification prompt.
    """

    format: str
    length: int
    depth: float
    trial: int
    needle: Needle
    words: int
    prompt: str
    prompt_tokens: int
    candidates: tuple[str, ...]
    verify_words: int
    verify_tokens: int

    @property
    def needle_at(self) -> float:
        return needle_index(self.needle, self.words, self.depth) / max(1, self.words)

    def verification_prompts(self) -> list[str]:
        return [render(self.needle, self.verify_words, self.depth, c) for c in self.candidates]


def make_trial(fmt: str, length: int, depth: Optional[float], trial: int, seed: int, count: Counter,
               key_divisor: Optional[int] = None, verification: bool = True) -> Trial:
    """Trial ``trial`` of the cell (``fmt``, ``length``, ``depth``), deterministic given ``seed``.

    ``depth=None`` draws the depth uniformly from the middle half (0.25-0.75). ``count(text)``
    returns the model's token count of a prompt. Every random choice comes from a generator
    seeded by (seed, format, length, depth, trial), so a cell never depends on the others.
    """
    check_format(fmt)
    if depth is not None and not 0.0 <= depth <= 1.0:
        raise PromptError(f"depth={depth}: must be within 0..1.")
    rng = random.Random(f"{seed}|{fmt}|{length}|{depth}|{trial}")
    drawn = rng.uniform(0.25, 0.75) if depth is None else float(depth)
    needle = Needle(fmt, random_key(rng, KEY_DIGITS[fmt], key_divisor), random_name(rng) if fmt == "ruler" else "")
    words, tokens = fit_words(lambda w: render(needle, w, drawn), count, length)
    candidates = (needle.key, *near_misses(needle.key, rng))
    verify_words, verify_tokens = (fit_words(lambda w: render(needle, w, drawn, needle.key), count, length)
                                   if verification else (0, 0))
    return Trial(fmt, length, drawn, trial, needle, words, render(needle, words, drawn), tokens, candidates,
                 verify_words, verify_tokens)


# ------------------------------------------------------------------------------------------
# A model's side of the trials: its token counter, the answer tokens, a cell's trials
# ------------------------------------------------------------------------------------------
class TokenCounter:
    """Tokens of a text as a tokenizer reads it (with its special tokens, and a BOS when ``bos="always"``
    and the tokenizer adds none): the length measure of :func:`fit_words`.

    ``key``: what the count depends on (the tokenizer's class and its whole serialised definition,
    and the BOS policy), or None when the tokenizer cannot be serialised (no fast backend). Two
    counters with the same key count every text alike, so :func:`make_trials` builds a cell's trials
    once for both models of a pair that share a tokenizer.
    """

    def __init__(self, tokenizer, bos: str = "checkpoint"):
        self.tokenizer = tokenizer
        self.extra = bos == "always" and tokenizer.bos_token_id is not None
        self.bos = bos
        self._key: Optional[tuple] = None

    def __call__(self, text: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        return len(ids) + (1 if self.extra and (not ids or ids[0] != self.tokenizer.bos_token_id) else 0)

    @property
    def key(self) -> Optional[tuple]:
        if self._key is None:
            import hashlib

            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            if backend is None:
                return None
            definition = hashlib.sha256(backend.to_str().encode()).hexdigest()
            cls = type(self.tokenizer)
            self._key = (f"{cls.__module__}.{cls.__qualname__}", definition, self.bos, self.extra,
                         self.tokenizer.bos_token_id)
        return self._key


def token_counter(model, bos: str = "checkpoint") -> TokenCounter:
    """:class:`TokenCounter` of ``model``'s tokenizer: tokens of a text as ``model`` reads it."""
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError(f"{getattr(getattr(model, 'lens', None), 'source', 'the model')} has no tokenizer; Exp 10 builds prompts from text.")
    return TokenCounter(tokenizer, bos)


def answer_token(tokenizer, word: str, prompt: str = "Answer Yes or No:", space: bool = True) -> int:
    """First token of `` word`` (``space=False``: of ``word``) as it follows ``prompt``."""
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    text = (" " if space else "") + word
    full = tokenizer(prompt + text, add_special_tokens=False)["input_ids"]
    if full[: len(head)] == head and len(full) > len(head):
        return int(full[len(head)])
    return int(tokenizer(text, add_special_tokens=False)["input_ids"][0])


def yes_no_tokens(tokenizer) -> tuple[int, int]:
    """The first tokens of " Yes" and " No"; of "Yes" and "No" when a tokenizer makes the space a
    token of its own (both answers would then start with it)."""
    pair = answer_token(tokenizer, "Yes"), answer_token(tokenizer, "No")
    if pair[0] == pair[1]:
        pair = answer_token(tokenizer, "Yes", space=False), answer_token(tokenizer, "No", space=False)
    return pair


def make_trials(fmt: str, length: int, depth: Optional[float], n: int, seed: int, count: Counter,
                key_divisor: Optional[int] = None, verify: bool = True) -> list[Trial]:
    """The cell's ``n`` trials. Fitting a prompt to its length tokenises it about ten times (the
    host's share of Exp 10 at long lengths); trials are independent (each seeded by itself), so
    they are built on threads: the fast tokenizer releases the GIL while it encodes. A counter with
    a ``key`` (:class:`TokenCounter`) lets a later call with an equal key and the same arguments
    return the same trials without tokenising again (the other model of a pair)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    counter_key = getattr(count, "key", None)
    key = None if counter_key is None else (counter_key, fmt, length, depth, n, seed, key_divisor, verify)
    if key is not None and key in _MADE:
        return list(_MADE[key])
    workers = min(n, os.cpu_count() or 1)
    build = lambda i: make_trial(fmt, length, depth, i, seed, count, key_divisor, verify)  # noqa: E731
    if workers < 2:
        trials = [build(i) for i in range(n)]
    else:
        with ThreadPoolExecutor(workers) as pool:
            trials = list(pool.map(build, range(n)))
    if key is not None:
        while len(_MADE) >= _MADE_CELLS:
            _MADE.pop(next(iter(_MADE)))
        _MADE[key] = tuple(trials)
    return trials


#: Cells already built, by their counter's key and arguments (the oldest dropped past _MADE_CELLS):
#: the second model of a pair with the same tokenizer reuses the first one's trials (Trial is frozen).
_MADE: dict[tuple, tuple[Trial, ...]] = {}
_MADE_CELLS = 64


def cell_trials(fmt: str, length: int, depth: Optional[float], n: int, seed: int, count: Counter,
                key_divisor: Optional[int] = None, verify: bool = True, skip_too_short: bool = False,
                stacklevel: int = 1) -> Optional[list[Trial]]:
    """:func:`make_trials` of one cell, a length too short for the format's template, needle and
    question raising :class:`PromptError` that names the cell (length, format), or with
    ``skip_too_short`` warning (``UserWarning``; ``stacklevel`` counted from the caller, as if the
    caller called :func:`warnings.warn`) and returning None."""
    try:
        return make_trials(fmt, length, depth, n, seed, count, key_divisor, verify)
    except PromptError as error:
        if skip_too_short and "shorter than the prompt without filler" in str(error):
            import warnings

            warnings.warn(f"length {length}, format {fmt!r} skipped: {error}", UserWarning, stacklevel=stacklevel + 1)
            return None
        raise PromptError(f"length {length}, format {fmt!r}: {error}") from None
