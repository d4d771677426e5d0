"""Task sets of Exp 3-6: prompts with their labels, loaded from data files in the package.

Tasks (:data:`TASKS`) and where they come from (``source="study"``, the default):

- ``cities``: ``data/tasks/cities.csv`` (the study's 1,496 labelled "The city of X is in Y."
  rows) turned into "Is the city of X in Y?"; n = 200 = 100 true + 100 false, drawn with ``seed``.
- ``sports``: ``data/tasks/sports_qa.json`` (200 yes/no questions); n = 100 drawn with ``seed``.
- ``reviews``: ``data/tasks/sentiment_reviews.jsonl`` (100 short movie reviews written for this
  project, 50 positive, 50 negative; NOT IMDB, so never reported as the study's IMDB row); n = 100,
  balanced. (Called ``sentiment`` before; that name is refused with a pointer here.)
- ``imdb``: the IMDB test split, the study's contextual sentiment task: from a file the user gives
  (``imdb_file``: ``.jsonl``/``.csv``/``.parquet`` with ``text`` and ``label`` columns, label 1 /
  ``Positive`` = positive) or else the local ``datasets`` cache (never downloaded here); n = 100,
  50 positive + 50 negative, each text cut to 1,500 characters.
- ``passkey``: generated from ``seed``: 5-digit keys, the study's simple format (filler x 30,
  needle in the middle); n = 20.

``source="toy"``: the same four tasks (cities, sports, reviews, passkey) in the bundled toy pair's own corpus
(:func:`drope_lens.toy.corpus.evaluation_sets`: questions about held-out facts, toy reviews,
passkeys that fit its 256-token context), for running the experiments on the toy pair.

Prompts are the study's, verbatim (METHODS.md, Exp 3). Every data file's SHA-256 is recorded in
``data/tasks/SHA256SUMS`` and checked on load.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import random
from dataclasses import dataclass
from importlib import resources
from typing import Literal, Optional, Sequence

YES_NO_PROMPT = "Answer with only 'Yes' or 'No'.\n\nQuestion: {question}\nAnswer:"
REVIEW_PROMPT = ("Read this movie review and answer: Is it Positive or Negative?\n\nReview: {text}\n\n"
                 "Sentiment (Positive/Negative):")
FILLER = "The grass is green. The sky is blue. The sun is yellow. "
NEEDLE = " The secret passkey is {key}. Remember this number. "
PASSKEY_QUESTION = "{text}\n\nWhat is the secret passkey mentioned above? Answer with just the number:"
FILLER_REPEATS = 30
IMDB_CHARS = 1500

TASKS: tuple[str, ...] = ("cities", "sports", "reviews", "imdb", "passkey")
DEFAULT_N = {"cities": 200, "sports": 100, "reviews": 100, "imdb": 100, "passkey": 20}
#: Which knowledge a task tests (Exp 3's split): facts stored in weights vs read from the prompt.
KIND = {"cities": "parametric", "sports": "parametric", "reviews": "contextual", "imdb": "contextual",
        "passkey": "contextual"}
CHOICES = {"cities": ("Yes", "No"), "sports": ("Yes", "No"), "reviews": ("Positive", "Negative"),
           "imdb": ("Positive", "Negative"), "passkey": None}
#: Former task names and what to use instead.
RENAMED = {"sentiment": "task 'sentiment' is now called 'reviews' (the package's own written reviews, not IMDB); "
                        "for the study's IMDB task use 'imdb' (a local datasets cache or imdb_file= / --imdb-file)."}
FILES = ("cities.csv", "sports_qa.json", "sentiment_reviews.jsonl")
Source = Literal["study", "toy"]


class TaskDataError(ValueError):
    """A task file is missing, empty, malformed or does not match its recorded hash."""


@dataclass(frozen=True)
class TaskItem:
    """One prompt: ``label`` is the right answer (``"Yes"``/``"No"``, ``"Positive"``/``"Negative"``,
    or the passkey); ``choices`` the two answers compared by logit scoring (None for passkey)."""

    task: str
    sample: int
    prompt: str
    label: str
    choices: Optional[tuple[str, str]]

    @property
    def kind(self) -> str:
        return KIND[self.task]


def check_tasks(names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(names, str):
        names = (names,)
    for name in names:
        if name in RENAMED:
            raise ValueError(f"{RENAMED[name]} Allowed values are {list(TASKS)}.")
        if name not in TASKS:
            raise ValueError(f"task {name!r} is unknown; allowed values are {list(TASKS)}.")
    if not names:
        raise ValueError(f"no tasks given; allowed values are {list(TASKS)}.")
    return tuple(names)


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------
def _data(name: str):
    return resources.files("drope_lens").joinpath(f"data/tasks/{name}")


@functools.lru_cache(maxsize=None)
def recorded_hashes() -> dict[str, str]:
    """``{file name: sha256}`` from ``data/tasks/SHA256SUMS``."""
    out = {}
    for line in _data("SHA256SUMS").read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, name = line.split()
            out[name] = digest
    return out


def read_task_file(name: str, *, verify: bool = True) -> str:
    """The text of a task data file, checked against its recorded SHA-256."""
    path = _data(name)
    if not path.is_file():
        raise TaskDataError(f"task file {name!r} is missing from drope_lens/data/tasks; reinstall drope_lens.")
    raw = path.read_bytes()
    if verify and hashlib.sha256(raw).hexdigest() != recorded_hashes().get(name):
        raise TaskDataError(f"task file {name!r} does not match its SHA-256 in data/tasks/SHA256SUMS.")
    return raw.decode("utf-8")


def parse_cities(text: str, source: str = "cities.csv") -> list[dict]:
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise TaskDataError(f"{source}: no rows.")
    missing = {"statement", "label", "city", "country"} - set(rows[0])
    if missing:
        raise TaskDataError(f"{source}: columns {sorted(missing)} missing.")
    return rows


def parse_sports(text: str, source: str = "sports_qa.json") -> list[dict]:
    try:
        data = json.loads(text)["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise TaskDataError(f"{source}: not a JSON object with a 'data' list ({error}).") from None
    if not data:
        raise TaskDataError(f"{source}: no questions.")
    return data


def parse_reviews(text: str, source: str = "sentiment_reviews.jsonl") -> list[dict]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise TaskDataError(f"{source} line {number}: not valid JSON.") from None
        if row.get("label") not in ("Positive", "Negative") or not row.get("text"):
            raise TaskDataError(f"{source} line {number}: needs 'text' and 'label' Positive/Negative.")
        rows.append(row)
    if not rows:
        raise TaskDataError(f"{source}: no reviews.")
    return rows


# ------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------
def _balanced(rows: list, is_first, n: int, seed: int, task: str) -> list:
    """n // 2 rows where ``is_first`` and n - n // 2 where not, drawn with ``seed``, interleaved."""
    first = [r for r in rows if is_first(r)]
    second = [r for r in rows if not is_first(r)]
    k = n // 2
    if k > len(first) or n - k > len(second):
        raise ValueError(f"{task}: n={n} needs {k} + {n - k} items; the data has {len(first)} + {len(second)}.")
    rng = random.Random(seed)
    a, b = rng.sample(first, k), rng.sample(second, n - k)
    out = []
    for i in range(max(len(a), len(b))):
        out += a[i : i + 1] + b[i : i + 1]
    return out


def city_items(n: int = 200, seed: int = 42, text: Optional[str] = None) -> list[TaskItem]:
    rows = parse_cities(text if text is not None else read_task_file("cities.csv"))
    chosen = _balanced(rows, lambda r: r["label"] == "1", n, seed, "cities")
    return [TaskItem("cities", i, YES_NO_PROMPT.format(question=f"Is the city of {r['city']} in {r['country']}?"),
                     "Yes" if r["label"] == "1" else "No", CHOICES["cities"]) for i, r in enumerate(chosen)]


def sports_items(n: int = 100, seed: int = 42, text: Optional[str] = None) -> list[TaskItem]:
    rows = parse_sports(text if text is not None else read_task_file("sports_qa.json"))
    if n > len(rows):
        raise ValueError(f"sports: n={n} but the data has {len(rows)} questions.")
    chosen = random.Random(seed).sample(rows, n)
    return [TaskItem("sports", i, YES_NO_PROMPT.format(question=r["question"]), "Yes" if r["answer"] else "No",
                     CHOICES["sports"]) for i, r in enumerate(chosen)]


def review_items(n: int = 100, seed: int = 42, text: Optional[str] = None) -> list[TaskItem]:
    """The package's written movie reviews (task ``reviews``; not IMDB), balanced."""
    rows = parse_reviews(text if text is not None else read_task_file("sentiment_reviews.jsonl"))
    chosen = _balanced(rows, lambda r: r["label"] == "Positive", n, seed, "reviews")
    return [TaskItem("reviews", i, REVIEW_PROMPT.format(text=r["text"]), r["label"], CHOICES["reviews"])
            for i, r in enumerate(chosen)]


def imdb_items(n: int = 100, seed: int = 42, rows: Optional[Sequence[dict]] = None,
               path: Optional[str] = None) -> list[TaskItem]:
    """IMDB test reviews (label 1 = positive), 50/50, text cut to 1,500 characters.

    ``rows`` (dicts with ``text`` and ``label``), else the file ``path`` (:func:`read_imdb_file`),
    else the test split in the local ``datasets`` cache; nothing is downloaded."""
    if rows is None:
        rows = read_imdb_file(path) if path is not None else _imdb_from_cache()
    chosen = _balanced(list(rows), lambda r: int(r["label"]) == 1, n, seed, "imdb")
    return [TaskItem("imdb", i, REVIEW_PROMPT.format(text=r["text"][:IMDB_CHARS]),
                     "Positive" if int(r["label"]) == 1 else "Negative", CHOICES["imdb"]) for i, r in enumerate(chosen)]


def read_imdb_file(path) -> list[dict]:
    """IMDB rows from a user's file: ``.jsonl`` (one object per line), ``.csv`` or ``.parquet``, each
    with ``text`` and ``label`` (1 / ``"Positive"`` / ``"pos"`` = positive, 0 / ``"Negative"`` /
    ``"neg"`` = negative). Errors name the file and what is allowed."""
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise TaskDataError(f"imdb file {str(file)!r} does not exist.")
    suffix = file.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        elif suffix == ".csv":
            rows = list(csv.DictReader(io.StringIO(file.read_text(encoding="utf-8"))))
        elif suffix == ".parquet":
            import pandas as pd

            rows = pd.read_parquet(file).to_dict("records")
        else:
            raise TaskDataError(f"imdb file {str(file)!r}: suffix {suffix!r}; allowed: .jsonl, .csv, .parquet.")
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, OSError) as error:
        if isinstance(error, TaskDataError):
            raise
        raise TaskDataError(f"imdb file {str(file)!r} cannot be read: {type(error).__name__}: {error}") from None
    labels = {"1": 1, "positive": 1, "pos": 1, "0": 0, "negative": 0, "neg": 0}
    out = []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not row.get("text") or str(row.get("label")).strip().lower() not in labels:
            raise TaskDataError(f"imdb file {str(file)!r} row {number}: needs 'text' and 'label' "
                                "(1/0, Positive/Negative or pos/neg).")
        out.append({"text": str(row["text"]), "label": labels[str(row["label"]).strip().lower()]})
    if not out:
        raise TaskDataError(f"imdb file {str(file)!r}: no rows.")
    return out


def _imdb_from_cache() -> list[dict]:
    import os

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets

        split = datasets.load_dataset("imdb", split="test")
    except Exception as error:
        raise TaskDataError(
            "task 'imdb' needs the IMDB test split: give a file (imdb_file= / --imdb-file, .jsonl/.csv/.parquet "
            "with text and label) or put it in the local datasets cache (run "
            "datasets.load_dataset('imdb', split='test') once with network access); "
            f"loading it failed: {type(error).__name__}: {error}") from None
    return [{"text": t, "label": l} for t, l in zip(split["text"], split["label"])]


def passkey_prompt(key: str, repeats: int = FILLER_REPEATS) -> str:
    """The study's simple passkey prompt: ``repeats`` filler sentences, the needle in the middle."""
    half = repeats // 2
    text = FILLER * half + NEEDLE.format(key=key) + FILLER * (repeats - half)
    return PASSKEY_QUESTION.format(text=text)


def passkey_items(n: int = 20, seed: int = 42, repeats: int = FILLER_REPEATS) -> list[TaskItem]:
    rng = random.Random(f"passkey-{seed}")
    keys = [str(rng.randint(10000, 99999)) for _ in range(n)]
    return [TaskItem("passkey", i, passkey_prompt(k, repeats), k, None) for i, k in enumerate(keys)]


def toy_items(task: str, n: Optional[int] = None, seed: int = 42) -> list[TaskItem]:
    """The bundled toy pair's own version of ``task`` (see the module docstring)."""
    from ..model.bundled import resolve
    from ..toy.corpus import evaluation_sets
    from ..toy.corpus import toy_metadata

    if task == "imdb":
        raise ValueError("task 'imdb' has no toy version; the toy pair has cities, sports, reviews, passkey.")
    config, _ = toy_metadata(resolve("bundled:toy/rope"))
    count = n if n is not None else DEFAULT_N[task]
    key = "sentiment" if task == "reviews" else task  # the toy corpus's name for its reviews
    items = evaluation_sets(config, n_sentiment=count if task == "reviews" else 0,
                            n_passkey=count if task == "passkey" else 0)[key]
    if task in ("cities", "sports"):
        items = random.Random(seed).sample(items, min(count, len(items)))
    return [TaskItem(task, i, it.prompt, it.answer, CHOICES[task]) for i, it in enumerate(items)]


def load_task(name: str, n: Optional[int] = None, seed: int = 42, source: Source = "study",
              imdb_file: Optional[str] = None) -> list[TaskItem]:
    """The items of task ``name`` (``n`` default: the study's, :data:`DEFAULT_N`); ``imdb_file``:
    where task ``imdb`` reads IMDB from (default: the local ``datasets`` cache)."""
    check_tasks([name])
    if source not in ("study", "toy"):
        raise ValueError(f"source={source!r}: allowed values are 'study', 'toy'.")
    if n is not None and n < 1:
        raise ValueError(f"n={n}: need at least one item.")
    if source == "toy":
        return toy_items(name, n, seed)
    count = n if n is not None else DEFAULT_N[name]
    if name == "imdb":
        return imdb_items(count, seed, path=imdb_file)
    return {"cities": city_items, "sports": sports_items, "reviews": review_items,
            "passkey": passkey_items}[name](count, seed)
