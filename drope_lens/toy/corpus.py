"""Synthetic training corpus for the bundled toy RoPE/DroPE pair (issue 4, first part).

Seeded and deterministic. Documents mix:

- ``prose``: English from a small grammar and vocabulary written for this project;
- ``city_fact`` / ``sport_fact``: "The city of X is in Y." and "X plays Y." for the real
  city/country table (``data/cities.tsv``) and athlete/sport table (``data/athletes.tsv``);
- ``city_qa`` / ``sport_qa``: the study's yes/no prompt with its answer, for the *training* part of
  each fact table only;
- ``passkey``: the study's simple passkey format, the issue-4 layout (``filler_repeats`` whole
  filler sentences; the corpus of the issue-4 pair, no longer in the default mix);
- ``simple_passkey``: the study's simple passkey format (filler, needle, question, answer), laid out as
  Exp 10 lays it out (:func:`drope_lens.measurement.passkey.render`), with haystacks of any length up to the
  whole context and the needle at any depth; a quarter of them with a prose haystack instead;
- ``ruler``: the RULER template (:data:`drope_lens.measurement.passkey.RULER_TEMPLATE`) with 1-4 needles under
  distinct names in RULER's noise (or prose), asking for one of them: retrieval by content;
- ``verify``: the verification question (:data:`drope_lens.measurement.passkey.VERIFY_TEMPLATE`) around a simple
  or RULER haystack, about the key or a near-miss of it (one digit changed), answered Yes/No;
- ``verify_multi``: one verification context followed by 2-3 questions, each answered (the key, a
  near-miss, or another key): three times the supervision of the comparison per haystack;
- ``review``: a movie review with its label in the study's IMDB prompt;
- ``copy`` / ``copy_digits``: a random word (digit-group) sequence followed by its repetition
  (induction).

Every number that stands for a passkey in training (simple and RULER keys, verification
candidates, copied digit groups read as one number) is never a multiple of 7; every evaluation key
is one (``key_divisor=7`` in Exp 10 and :func:`evaluation_sets`).

Evaluation sets (:func:`evaluation_sets`) ask the study's yes/no questions about facts whose
statements were in training but whose questions were not, and use passkeys and reviews never
generated for training (disjoint key sets and seed streams).
"""

from __future__ import annotations

import functools
import json
import random
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterator

from ..measurement import passkey as pk

YES_NO_PROMPT = "Answer with only 'Yes' or 'No'.\n\nQuestion: {question}\nAnswer:"
REVIEW_PROMPT = "Read this movie review and answer: Is it Positive or Negative?\n\nReview: {text}\n\nSentiment (Positive/Negative):"
FILLER = "The grass is green. The sky is blue. The sun is yellow. "
NEEDLE = " The secret passkey is {key}. Remember this number. "
PASSKEY_QUESTION = "{text}\n\nWhat is the secret passkey mentioned above? Answer with just the number:"

_SUBJECTS = ["the farmer", "a young teacher", "my neighbour", "the old captain", "a quiet student", "the baker",
             "our guide", "the tired nurse", "a curious child", "the mayor", "the painter", "a stranger",
             "the engineer", "my aunt", "the shepherd", "a travelling musician"]
_VERBS = ["carried", "found", "repaired", "painted", "sold", "watched", "opened", "cleaned", "borrowed",
          "described", "measured", "planted", "forgot", "wrapped", "counted", "followed"]
_OBJECTS = ["a wooden box", "the red lantern", "an old map", "the garden gate", "a basket of apples",
            "the broken clock", "a letter", "the narrow boat", "a pair of boots", "the kitchen table",
            "a small bell", "the window frame", "a bundle of reeds", "the copper kettle"]
_PLACES = ["near the river", "in the village square", "behind the mill", "at the station", "on the hill",
           "by the harbour", "in the market", "under the bridge", "at the edge of the forest", "in the library"]
_TIMES = ["early in the morning", "after the storm", "before dinner", "on a cold evening", "last spring",
          "during the festival", "at noon", "late at night", "the next day"]
_ADVERBS = ["slowly", "carefully", "quickly", "quietly", "proudly", "patiently", "happily"]
_CONNECTIVES = ["Then", "Later", "Afterwards", "Meanwhile", "Soon", "Still"]
_ADJECTIVES = """
ancient autumn bitter bright broad calm careful cheerful clever cloudy cold crooked curious damp dark
deep distant dusty eager early empty enormous faded famous fierce fragile fresh friendly frozen gentle
gloomy golden graceful green grey heavy hidden hollow honest huge humble icy idle jolly kind lazy light
little lively lonely loud lucky merry mighty misty modern narrow nervous noble noisy odd open orange
pale patient plain polite proud purple quick quiet rapid rare ripe rough round rusty salty sandy scarlet
secret sharp shiny silent silver simple sleepy slow small smooth soft solid sour spare splendid steady
steep sticky stormy strange striped strong sturdy sudden sunny sweet swift tall tender thick thin tidy
tiny tired triangular twisted velvet violet warm weary wet white wide wild windy wise wooden worn young
""".split()
_NOUNS = """
anchor apron arrow badge barrel basket beacon bench bicycle blanket bottle bracelet bridge bucket
cabinet candle canoe carpet cart castle chain chair chimney cloak compass cottage crate crown cup
curtain cushion drum envelope feather fence fiddle flag flute fountain garden glove harp hammer hat
helmet hive jar jacket kettle key kite ladder lamp lantern ledger lighthouse lock locket loom mirror
mitten needle notebook oar orchard paddle pail parcel pebble pencil piano pillow pipe pitcher plank
pocket pot quilt rake ribbon ring rope saddle sail satchel scarf scroll shawl shelf shovel sickle sled
spoon stool suitcase sundial sword table telescope tent thimble ticket tower trumpet trunk umbrella
vase violin wagon wallet wheel whistle window windmill wreath
""".split()
_PAST_VERBS = """
admired adjusted balanced buried carved chased checked collected covered delivered discovered dropped
dusted examined fetched fixed folded gathered guarded hammered hid hung inspected lifted loaded lost
mended moved noticed offered packed painted polished pulled pushed raised rescued returned rolled
scrubbed searched shared sketched sorted stacked stitched stored studied swept tied tested traded
turned unlocked unpacked visited washed weighed wound
""".split()
_PEOPLE = """
farmer teacher neighbour captain student baker guide nurse child mayor painter stranger engineer aunt
shepherd musician blacksmith carpenter fisherman gardener librarian merchant miller pilot poet potter
sailor scholar soldier tailor weaver doctor judge clerk cook hunter innkeeper jeweller knight porter
""".split()
_NAMES = """
Ada Agnes Albert Alice Amos Anna Arthur Beatrice Benedict Bertha Bruno Camille Cecil Clara Conrad Cora
Cyril Daisy Dorothy Edgar Edith Edmund Elena Elias Eliza Emil Esther Felix Flora Frances Frederick
Gideon Greta Harold Hazel Helena Henry Hilda Horace Ida Irene Isaac Ivy Jasper Josephine Julian Karl
Leonard Lillian Lionel Lucy Mabel Magnus Margaret Martha Matilda Maurice Mildred Miriam Nora Oliver
Olive Oscar Otto Pauline Percy Philippa Quentin Rosa Rufus Ruth Samuel Silas Sophia Stella Theodore
Thea Tobias Ursula Vera Victor Violet Walter Wilfred Winifred Xavier Yvonne Zachary Zelda
""".split()
_MORE_ADVERBS = """
briskly calmly cautiously cheerfully clumsily eagerly faithfully gently gladly gracefully hastily
honestly kindly lazily loudly merrily neatly nervously openly politely promptly rapidly roughly
sadly secretly silently softly solemnly steadily swiftly tenderly thoughtfully warmly wearily wisely
""".split()
_PLACES_MORE = """
barn bakery bay canyon cathedral cellar cliff courtyard dock farmhouse ferry field forge glade hall
harbour hillside inn island kitchen lake meadow mill orchard pier quarry riverbank schoolhouse shore
square stable station tavern temple valley village vineyard wharf workshop
""".split()
_TITLES = ["The Silent Harbour", "Glass Mountains", "A Winter Orchard", "The Last Lantern", "Paper Kings",
           "River of Clocks", "Northern Lights", "The Copper Road", "Small Hours", "The Long Table",
           "Iron Gardens", "Salt and Smoke", "The Ninth Bridge", "Evening Trains", "Quiet Thunder"]
_POSITIVE = ["wonderful", "moving", "brilliant", "charming", "gripping", "beautiful", "delightful", "clever"]
_NEGATIVE = ["dull", "boring", "clumsy", "tedious", "confusing", "shallow", "lifeless", "forgettable"]
_ASPECTS = ["acting", "story", "music", "camera work", "dialogue", "ending", "pacing", "cast"]


@functools.lru_cache(maxsize=None)
def _table(name: str) -> tuple[tuple[str, str], ...]:
    lines = resources.files("drope_lens").joinpath(f"data/{name}").read_text(encoding="utf-8").splitlines()
    return tuple(tuple(line.split("\t")) for line in lines[1:] if line.strip())  # type: ignore[misc]


def cities() -> list[tuple[str, str]]:
    """(city, country) pairs: at least 200 real cities."""
    return list(_table("cities.tsv"))


def athletes() -> list[tuple[str, str]]:
    """(athlete, sport) pairs."""
    return list(_table("athletes.tsv"))


@functools.lru_cache(maxsize=None)
def countries() -> list[str]:
    return sorted({c for _, c in _table("cities.tsv")})


@functools.lru_cache(maxsize=None)
def sports() -> list[str]:
    return sorted({s for _, s in _table("athletes.tsv")})


#: Shares of the document count per kind (issue 20's corpus). Retrieval documents are long (up to
#: the context), so they are about half of the tokens.
DEFAULT_WEIGHTS: dict[str, float] = {
    "prose": 0.24, "city_fact": 0.12, "sport_fact": 0.05, "city_qa": 0.10, "sport_qa": 0.04,
    "simple_passkey": 0.10, "ruler": 0.10, "verify": 0.08, "review": 0.07, "copy": 0.07, "copy_digits": 0.03,
}
#: Issue 20's second mix: ``verify_multi`` added (the models never learned the comparison from
#: ``verify`` alone: discrimination 0.000 on the H200 run), prose cut to make room.
WEIGHTS_V2: dict[str, float] = {**DEFAULT_WEIGHTS, "prose": 0.18, "verify_multi": 0.08}


@dataclass(frozen=True)
class CorpusConfig:
    """What the generator makes. ``weights`` are relative document counts per kind."""

    seed: int = 0
    n_train: int = 20_000
    n_heldout: int = 500
    qa_fraction: float = 0.6  # share of each fact table whose yes/no questions are trained on
    filler_repeats: tuple[int, int] = (2, 15)  # filler sentences of evaluation_sets' passkey prompts (toy evaluate)
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    #: the longest document, in estimated tokens (BOS and EOS included): retrieval documents are
    #: drawn with lengths up to it, so that their haystacks span the whole trained context
    context: int = 256

    def __post_init__(self) -> None:
        if not 0 < self.qa_fraction < 1:
            raise ValueError(f"qa_fraction={self.qa_fraction}: must be strictly between 0 and 1.")
        low, high = self.filler_repeats
        if not 1 <= low <= high:
            raise ValueError(f"filler_repeats={self.filler_repeats}: need 1 <= low <= high.")
        if self.context < 128:
            raise ValueError(f"context={self.context}: retrieval documents (RULER's template alone is about 80 "
                             "tokens) need a context of at least 128 tokens.")
        unknown = set(self.weights) - set(_GENERATORS)
        if unknown or not any(w > 0 for w in self.weights.values()):
            raise ValueError(f"weights: unknown kinds {sorted(unknown)} or no positive weight; kinds are {sorted(_GENERATORS)}.")


@dataclass(frozen=True)
class Document:
    kind: str
    text: str


@dataclass(frozen=True)
class Split:
    """Which facts have their questions in training (``qa``) and which are held for evaluation."""

    city_qa: tuple[tuple[str, str], ...]
    city_eval: tuple[tuple[str, str], ...]
    sport_qa: tuple[tuple[str, str], ...]
    sport_eval: tuple[tuple[str, str], ...]


def fact_split(config: CorpusConfig) -> Split:
    rng = random.Random(f"{config.seed}-split")
    city_rows, sport_rows = cities(), athletes()
    rng.shuffle(city_rows)
    rng.shuffle(sport_rows)
    nc, ns = int(len(city_rows) * config.qa_fraction), int(len(sport_rows) * config.qa_fraction)
    return Split(tuple(city_rows[:nc]), tuple(city_rows[nc:]), tuple(sport_rows[:ns]), tuple(sport_rows[ns:]))


# ---------------------------------------------------------------------------------------------
# Document generators: (rng, config, split, stream) -> text. ``stream`` is "train" or "eval".
# ---------------------------------------------------------------------------------------------
def _sentence(rng: random.Random) -> str:
    if rng.random() < 0.5:  # the small original grammar
        parts = [rng.choice(_SUBJECTS), rng.choice(_ADVERBS) if rng.random() < 0.3 else None,
                 rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_PLACES)]
    else:  # the larger vocabulary: people, adjectives, things and places
        roll = rng.random()
        if roll < 0.35:
            person = f"{rng.choice(_NAMES)} the {rng.choice(_PEOPLE)}"
        elif roll < 0.7:
            person = f"the {rng.choice(_ADJECTIVES)} {rng.choice(_PEOPLE)}"
        else:
            person = rng.choice(_NAMES)
        thing = f"the {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
        place = f"{rng.choice(['in', 'near', 'behind', 'beside', 'at'])} the {rng.choice(_PLACES_MORE)}"
        parts = [person, rng.choice(_MORE_ADVERBS) if rng.random() < 0.3 else None, rng.choice(_PAST_VERBS), thing, place]
    sentence = " ".join(p for p in parts if p)
    opener = rng.random()
    if opener < 0.4:
        sentence = f"{rng.choice(_TIMES)}, {sentence}"
    elif opener < 0.65:
        sentence = f"{rng.choice(_CONNECTIVES)} {sentence}"
    return sentence[0].upper() + sentence[1:] + "."


def _prose(rng, config, split, stream) -> str:
    return " ".join(_sentence(rng) for _ in range(rng.randint(3, 9)))


CITY_FACT_TEMPLATES = (
    "The city of {city} is in {country}.",
    "{city} is a city in {country}.",
    "The city of {city} is located in {country}.",
    "Many travellers to {country} visit the city of {city}.",
    "{city} is one of the cities of {country}.",
)
SPORT_FACT_TEMPLATES = (
    "{athlete} plays {sport}.",
    "{athlete} is known for playing {sport}.",
    "The sport that {athlete} plays is {sport}.",
    "{athlete} has played {sport} for many years.",
)


def _city_fact(rng, config, split, stream) -> str:
    """One to three statements about cities (every city of the table, QA split or not)."""
    rows = split.city_qa + split.city_eval
    return " ".join(rng.choice(CITY_FACT_TEMPLATES).format(city=city, country=country)
                    for city, country in (rng.choice(rows) for _ in range(rng.randint(1, 3))))


def _sport_fact(rng, config, split, stream) -> str:
    rows = split.sport_qa + split.sport_eval
    return " ".join(rng.choice(SPORT_FACT_TEMPLATES).format(athlete=athlete, sport=sport)
                    for athlete, sport in (rng.choice(rows) for _ in range(rng.randint(1, 3))))


def _wrong(rng: random.Random, truth: str, options: list[str]) -> str:
    return rng.choice([o for o in options if o != truth])


def city_question(rng: random.Random, city: str, country: str, countries: list[str]) -> tuple[str, bool]:
    """A yes/no question about a city, true half of the time."""
    truthful = rng.random() < 0.5
    asked = country if truthful else _wrong(rng, country, countries)
    return YES_NO_PROMPT.format(question=f"Is the city of {city} in {asked}?"), truthful


def sport_question(rng: random.Random, athlete: str, sport: str, sports: list[str]) -> tuple[str, bool]:
    truthful = rng.random() < 0.5
    asked = sport if truthful else _wrong(rng, sport, sports)
    return YES_NO_PROMPT.format(question=f"Does {athlete} play {asked}?"), truthful


def _city_qa(rng, config, split, stream) -> str:
    prompt, truth = city_question(rng, *rng.choice(split.city_qa), countries())
    return f"{prompt} {'Yes' if truth else 'No'}"


def _sport_qa(rng, config, split, stream) -> str:
    prompt, truth = sport_question(rng, *rng.choice(split.sport_qa), sports())
    return f"{prompt} {'Yes' if truth else 'No'}"


def passkey_key(rng: random.Random, stream: str, digits: int = 5) -> str:
    """A ``digits``-digit key; training keys are never divisible by 7, evaluation keys always are."""
    while True:
        key = rng.randint(10 ** (digits - 1), 10**digits - 1)
        if (key % 7 == 0) == (stream == "eval"):
            return str(key)


def passkey_prompt(rng: random.Random, key: str, repeats: int, depth: float | None = None) -> str:
    """The study's simple passkey prompt with ``repeats`` filler sentences around the needle
    (the layout of :func:`evaluation_sets`, used by ``python -m drope_lens.toy.evaluate``)."""
    depth = rng.uniform(0.1, 0.9) if depth is None else depth
    before = max(1, round(repeats * depth))
    text = FILLER * before + NEEDLE.format(key=key) + FILLER * max(1, repeats - before)
    return PASSKEY_QUESTION.format(text=text.strip())


_PIECES = re.compile(r"\d|[A-Za-z]+|[^\sA-Za-z\d]|\n")


def estimate_tokens(text: str) -> int:
    """A tokenizer-free upper estimate of a document's token count (BOS and EOS included): one per
    word, digit, punctuation mark or newline, plus 10% for words the BPE splits."""
    return int(len(_PIECES.findall(text)) * 1.1) + 2


def _fit(build, budget: int, most: int) -> int:
    """The largest word count ``w <= most`` whose ``build(w)`` is estimated within ``budget`` tokens."""
    low, high = 0, most
    while low < high:
        mid = (low + high + 1) // 2
        if estimate_tokens(build(mid)) <= budget:
            low = mid
        else:
            high = mid - 1
    return low


def _budget(rng: random.Random, config: "CorpusConfig") -> int:
    """A document length (estimated tokens) uniform from short to the whole context."""
    return rng.randint(48, config.context - 4)


def _prose_haystack(rng: random.Random, words: int) -> list[str]:
    out: list[str] = []
    while len(out) < words:
        out.extend(_sentence(rng).split())
    return out[:words]


def _insert(rng: random.Random, haystack: list[str], needles: list[str], depths: list[float]) -> str:
    """``haystack`` words with each needle sentence inserted after the sentence end nearest its depth."""
    ends = [0] + [i + 1 for i, w in enumerate(haystack) if w.endswith(".")]
    cuts = sorted((min(ends, key=lambda e: abs(e - d * len(haystack))), i) for i, d in enumerate(depths))
    parts, last = [], 0
    for cut, i in cuts:
        parts.append(" ".join(haystack[last:cut]))
        parts.append(needles[i])
        last = cut
    parts.append(" ".join(haystack[last:]))
    return " ".join(p for p in parts if p)


def _near_miss(rng: random.Random, key: str) -> str:
    """A near-miss of ``key`` (one digit changed) that is not a multiple of 7 either."""
    while True:
        candidate = pk.near_misses(key, rng, 1)[0]
        if int(candidate) % 7:
            return candidate


def _simple_text(rng, config, key: str, budget: int) -> str:
    """A simple-format haystack (Exp 10's filler layout, or prose for a quarter) with the needle."""
    needle = pk.Needle("simple", key)
    depth = rng.random()
    most = 2 * config.context
    if rng.random() < 0.75:
        words = _fit(lambda w: pk.SIMPLE_TEMPLATE.format(text=pk._haystack(needle, w, depth)), budget, most)
        return pk._haystack(needle, words, depth)
    pool = _prose_haystack(rng, most)
    sentence = needle.sentence.strip()
    words = _fit(lambda w: pk.SIMPLE_TEMPLATE.format(text=" ".join(pool[:w] + [sentence])), budget, most)
    return _insert(rng, pool[:words], [sentence], [depth])


def _ruler_text(rng, config, budget: int, single: bool = False) -> tuple[str, pk.Needle]:
    """A RULER haystack (its noise, or prose for a quarter) with 1-4 needles under distinct names
    (one with ``single``); returns the text and the needle asked about."""
    count = 1 if single else rng.choice((1, 1, 2, 3, 4))
    names: list[str] = []
    while len(names) < count:
        name = pk.random_name(rng)
        if name not in names:
            names.append(name)
    needles = [pk.Needle("ruler", passkey_key(rng, "train", pk.KEY_DIGITS["ruler"]), name) for name in names]
    asked = rng.choice(needles)
    sentences = [n.sentence + "." for n in needles]
    depths = [rng.random() for _ in needles]
    most = 2 * config.context
    prose = rng.random() < 0.25
    if prose:
        pool = _prose_haystack(rng, most)
    else:
        unit = pk.RULER_FILLER.split()
        pool = [unit[i % len(unit)] for i in range(most)]

    def build(w: int) -> str:
        return pk.RULER_TEMPLATE.format(context=" ".join(pool[:w] + sentences), name=asked.name)

    words = _fit(build, budget - 8, most)
    haystack = pool[:words]
    if not prose and words:  # RULER's own layout: the haystack ends with a whole repeat
        unit = pk.RULER_FILLER.split()
        haystack = [unit[(i - words) % len(unit)] for i in range(words)]
    return _insert(rng, haystack, sentences, depths), asked


def _passkey(rng, config, split, stream) -> str:
    """The issue-4 layout: ``filler_repeats`` whole filler sentences, the needle at depth 10-90%."""
    key = passkey_key(rng, stream)
    return f"{passkey_prompt(rng, key, rng.randint(*config.filler_repeats))} {key}"


def _simple_passkey(rng, config, split, stream) -> str:
    """The simple format, Exp 10's layout: the prompt and its answer, the key (5 digits)."""
    key = passkey_key(rng, stream)
    text = _simple_text(rng, config, key, _budget(rng, config) - 7)
    return f"{pk.SIMPLE_TEMPLATE.format(text=text)} {key}"


def _ruler(rng, config, split, stream) -> str:
    """The RULER template: the prompt about one of its needles and that needle's 7-digit key."""
    for attempt in range(20):  # a few needles may not fit a short budget: draw again, at last one needle
        text, asked = _ruler_text(rng, config, _budget(rng, config), single=attempt == 19)
        doc = f"{pk.RULER_TEMPLATE.format(context=text, name=asked.name)} {asked.key}"
        if estimate_tokens(doc) <= config.context:
            break
    return doc


def _verify(rng, config, split, stream) -> str:
    """The verification question about the key (half) or a near-miss of it, answered Yes/No."""
    budget = _budget(rng, config) - 12
    if rng.random() < 0.5:
        key = passkey_key(rng, stream)
        text = _simple_text(rng, config, key, budget - 10)
    else:
        text, asked = _ruler_text(rng, config, budget, single=True)
        key = asked.key
    truthful = rng.random() < 0.5
    candidate = key if truthful else _near_miss(rng, key)
    return f"{pk.VERIFY_TEMPLATE.format(context=text, candidate=candidate)} {'Yes' if truthful else 'No'}"


def _verify_multi(rng, config, split, stream) -> str:
    """One verification context, then 2-3 questions about candidates (the key, a near-miss or another
    training key), each with its Yes/No answer: ``... Answer Yes or No: Yes\n\nIs ... No``."""
    budget = _budget(rng, config) - 60
    if rng.random() < 0.5:
        key = passkey_key(rng, stream)
        text = _simple_text(rng, config, key, max(24, budget - 10))
    else:
        text, asked = _ruler_text(rng, config, max(48, budget), single=True)
        key = asked.key
    head, question = pk.VERIFY_TEMPLATE.split("{context}")
    parts = [head + text]
    for _ in range(rng.randint(2, 3)):
        roll = rng.random()
        if roll < 0.5:
            candidate = key
        elif roll < 0.85:
            candidate = _near_miss(rng, key)
        else:
            candidate = passkey_key(rng, "train", len(key))
        parts.append(f"{question.format(candidate=candidate)} {'Yes' if candidate == key else 'No'}")
    return "".join(parts)


_HAYSTACK = (  # (start marker, end marker) of the text around which needles are hidden, per template
    ("", "\n\nWhat is the secret passkey"),
    (pk.RULER_TEMPLATE.split("{context}")[0], "\n\nWhat is the special magic number"),
    (pk.VERIFY_TEMPLATE.split("{context}")[0], "\n\nIs "),
)
_NEEDLES = re.compile(r"The secret passkey is \d+\. Remember this number\.|The special magic number for \S+ is: \d+\.?")


def haystack_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of a retrieval document's haystack: the filler (or prose) around its needles,
    needles, template and question excluded; ``[]`` for a document of any other kind. Used by
    the dilution augmentation of DroPE recalibration (:mod:`drope_lens.toy.train`)."""
    for head, tail in _HAYSTACK[1:] + _HAYSTACK[:1]:
        end = text.find(tail)
        if end < 0 or not text.startswith(head):
            continue
        start = len(head)
        if not head and not _NEEDLES.search(text[:end]):
            return []
        spans, cursor = [], start
        for match in _NEEDLES.finditer(text, start, end):
            if match.start() > cursor:
                spans.append((cursor, match.start()))
            cursor = match.end()
        if end > cursor:
            spans.append((cursor, end))
        return spans
    return []


def review_text(rng: random.Random, positive: bool) -> str:
    words = _POSITIVE if positive else _NEGATIVE
    title = rng.choice(_TITLES)
    sentences = [f"I watched {title} {rng.choice(_TIMES)}."]
    for _ in range(rng.randint(2, 4)):
        sentences.append(f"The {rng.choice(_ASPECTS)} was {rng.choice(words)}.")
    verdict = "I would happily watch it again." if positive else "I would not watch it again."
    return " ".join(sentences + [verdict])


def _review(rng, config, split, stream) -> str:
    positive = rng.random() < 0.5
    return f"{REVIEW_PROMPT.format(text=review_text(rng, positive))} {'Positive' if positive else 'Negative'}"


def _copy(rng, config, split, stream) -> str:
    vocabulary = [w for group in (_OBJECTS, _PLACES) for phrase in group for w in phrase.split()]
    sequence = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(6, 20)))
    return f"{sequence} | {sequence}"


def _copy_digits(rng, config, split, stream) -> str:
    """1-4 digit groups of 3-8 digits (never a multiple of 7), then their repetition: induction on digits."""
    sequence = " ".join(passkey_key(rng, "train", rng.randint(3, 8)) for _ in range(rng.randint(1, 4)))
    return f"{sequence} | {sequence}"


_GENERATORS = {
    "prose": _prose, "city_fact": _city_fact, "sport_fact": _sport_fact, "city_qa": _city_qa,
    "sport_qa": _sport_qa, "passkey": _passkey, "simple_passkey": _simple_passkey, "ruler": _ruler, "verify": _verify,
    "verify_multi": _verify_multi,
    "review": _review, "copy": _copy, "copy_digits": _copy_digits,
}


def _documents(config: CorpusConfig, n: int, stream: str, split: Split) -> Iterator[Document]:
    """``n`` documents from the seed stream ``stream``; passkeys always come from the training key set."""
    rng = random.Random(f"{config.seed}-{stream}")
    kinds = [k for k, w in config.weights.items() if w > 0]
    weights = [config.weights[k] for k in kinds]
    for _ in range(n):
        kind = rng.choices(kinds, weights)[0]
        yield Document(kind, _GENERATORS[kind](rng, config, split, "train"))


SHARD_DOCUMENTS = 50_000  # training documents per seed stream (shard); shards are generated in parallel


def _shard(args: tuple) -> list[Document]:
    config, start, n, stream = args
    split = fact_split(config)
    return list(_documents(config, n, stream if start == 0 else f"{stream}-{start}", split))


def training_documents(config: CorpusConfig, stream: str = "train", n: int | None = None,
                       workers: int = 1) -> list[Document]:
    """``n`` (default ``config.n_train``) documents of ``stream``, made shard by shard
    (:data:`SHARD_DOCUMENTS` per seed stream), in ``workers`` processes; the result does not depend on
    ``workers``."""
    n = config.n_train if n is None else n
    jobs = [(config, start, min(SHARD_DOCUMENTS, n - start), stream) for start in range(0, n, SHARD_DOCUMENTS)]
    if workers <= 1 or len(jobs) == 1:
        shards = [_shard(job) for job in jobs]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            shards = list(pool.map(_shard, jobs))
    return [doc for shard in shards for doc in shard]


def build_corpus(config: CorpusConfig = CorpusConfig(), workers: int = 1) -> tuple[list[Document], list[Document]]:
    """``(train, heldout)`` documents. Held-out documents come from their own seed stream and
    contain no yes/no questions about evaluation facts (they only reuse the training QA facts)."""
    return training_documents(config, "train", workers=workers), heldout_documents(config)


def heldout_documents(config: CorpusConfig = CorpusConfig()) -> list[Document]:
    """The held-out stream alone (``config.n_heldout`` documents), as in :func:`build_corpus`."""
    return list(_documents(config, config.n_heldout, "heldout", fact_split(config)))


@dataclass(frozen=True)
class EvalItem:
    """One evaluation prompt and its answer (``"Yes"``/``"No"``, ``"Positive"``/``"Negative"``, or a key)."""

    task: str
    prompt: str
    answer: str


def evaluation_sets(config: CorpusConfig = CorpusConfig(), n_sentiment: int = 100, n_passkey: int = 50,
                    passkey_repeats: int = 10) -> dict[str, list[EvalItem]]:
    """The four study tasks on the toy corpus.

    ``cities``/``sports``: one question per held-out fact (its statements were trained on, no
    question about it ever was), true or false at random. ``sentiment``: new reviews, half
    positive. ``passkey``: evaluation-stream keys (never in training) with ``passkey_repeats``
    filler sentences and the needle uniformly in the middle half. Deterministic given the config.
    """
    split = fact_split(config)
    rng = random.Random(f"{config.seed}-evaluation")
    out: dict[str, list[EvalItem]] = {"cities": [], "sports": [], "sentiment": [], "passkey": []}
    for city, country in split.city_eval:
        prompt, truth = city_question(rng, city, country, countries())
        out["cities"].append(EvalItem("cities", prompt, "Yes" if truth else "No"))
    for athlete, sport in split.sport_eval:
        prompt, truth = sport_question(rng, athlete, sport, sports())
        out["sports"].append(EvalItem("sports", prompt, "Yes" if truth else "No"))
    for i in range(n_sentiment):
        positive = i % 2 == 0
        out["sentiment"].append(EvalItem("sentiment", REVIEW_PROMPT.format(text=review_text(rng, positive)),
                                         "Positive" if positive else "Negative"))
    key_rng = random.Random(f"{config.seed}-evaluation-passkey-{passkey_repeats}")
    for _ in range(n_passkey):
        key = passkey_key(key_rng, "eval")
        prompt = passkey_prompt(key_rng, key, passkey_repeats, depth=key_rng.uniform(0.25, 0.75))
        out["passkey"].append(EvalItem("passkey", prompt, key))
    return out


def toy_metadata(checkpoint: Path) -> tuple[CorpusConfig, int]:
    """The corpus config and trained context recorded in ``toy.json`` of a toy checkpoint."""
    path = Path(checkpoint) / "toy.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a toy checkpoint written by train_toy_pair (no toy.json).")
    meta = json.loads(path.read_text())
    return corpus_config_from_dict(meta["corpus"]), int(meta["model"]["context"])


def corpus_config_from_dict(raw: dict) -> CorpusConfig:
    return CorpusConfig(**{k: (tuple(v) if k == "filler_repeats" else v) for k, v in raw.items()})
