"""Texts for the experiments: built-in, a user's file or folder, or wikitext-2 from a local cache.

Built-in texts were written for this project (narrative, technical, dialogue and factual
registers, 650+ words each) and ship in ``drope_lens/data/texts``. Identification and evaluation
sets are made disjoint by :func:`split_texts`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

REGISTERS = ("narrative", "technical", "dialogue", "factual")


@dataclass(frozen=True)
class Text:
    """One document: ``name`` (unique), ``register`` (genre label or source), ``text``."""

    name: str
    register: str
    text: str

    @property
    def words(self) -> int:
        return len(self.text.split())


def builtin_texts() -> list[Text]:
    """The project's own texts, sorted by name."""
    folder = resources.files("drope_lens").joinpath("data/texts")
    texts = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".txt"):
            name = entry.name[: -len(".txt")]
            texts.append(Text(name, name.rsplit("_", 1)[0], entry.read_text(encoding="utf-8").strip()))
    return texts


class TextInputError(ValueError):
    """Texts that cannot be used: the message names the file and line, or the item and its index."""


#: What the experiments accept as texts (see :func:`as_texts`).
TextsLike = Union[str, Text, Iterable[Union[str, Text]], Any]


def as_texts(texts: TextsLike, *, name_prefix: str = "text", register: str = "user") -> list[Text]:
    """The one normaliser of user texts, used by every experiment.

    Accepts a ``str`` (one text), a :class:`Text`, a list/tuple of ``str`` or ``Text`` (mixed is
    fine), a pandas ``Series`` (its index becomes the names unless it is the default range
    index), a ``datasets`` column or ``Dataset`` with a ``text`` column, or any other iterable of
    strings. Texts without a name get ``{name_prefix}_{index:03d}``. Raises
    :class:`TextInputError` naming the offending item (index and type) for anything that is not
    text, for empty or whitespace-only strings, for duplicate names, and for an empty input.
    """
    if isinstance(texts, (str, Text)):
        items: list[tuple[Optional[str], Any]] = [(None, texts)]
    else:
        items = _named_items(texts)
    out: list[Text] = []
    for index, (name, item) in enumerate(items):
        if isinstance(item, Text):
            text = item
        elif isinstance(item, str):
            text = Text(name if name is not None else f"{name_prefix}_{index:03d}", register, item)
        else:
            raise TextInputError(
                f"texts[{index}] is a {type(item).__name__} ({item!r:.60}), not a str or drope_lens.measurement.texts.Text; "
                "pass strings, Text objects, a pandas Series of strings or a datasets column."
            )
        if not text.text.strip():
            raise TextInputError(f"texts[{index}] ({text.name!r}) is empty; every text needs some content.")
        out.append(text)
    if not out:
        raise TextInputError("no texts given (an empty list); pass at least one string.")
    seen: dict[str, int] = {}
    for index, text in enumerate(out):
        if text.name in seen:
            raise TextInputError(
                f"texts[{seen[text.name]}] and texts[{index}] are both named {text.name!r}; names must be unique."
            )
        seen[text.name] = index
    return out


def require_disjoint(evaluation: Sequence[Text], others: Sequence[Text], what: str) -> None:
    """Raise if an evaluation text is also one of ``others`` (``what``: their role, e.g. "reference")."""
    seen = {t.text for t in others}
    overlap = [t.name for t in evaluation if t.text in seen]
    if overlap:
        raise ValueError(f"evaluation texts {overlap} are also {what} texts; use disjoint sets.")


def _named_items(texts: Any) -> list[tuple[Optional[str], Any]]:
    """``(name or None, item)`` pairs of a list, Series, datasets column/Dataset or iterable."""
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None
    if pd is not None and isinstance(texts, pd.DataFrame):
        if "text" not in texts.columns:
            raise TextInputError(f"a DataFrame of texts needs a 'text' column; it has {list(texts.columns)}.")
        names = texts["name"].astype(str).tolist() if "name" in texts.columns else [None] * len(texts)
        return list(zip(names, texts["text"].tolist()))
    if pd is not None and isinstance(texts, pd.Series):
        default_index = isinstance(texts.index, pd.RangeIndex)
        names = [None if default_index else str(i) for i in texts.index]
        return list(zip(names, texts.tolist()))
    column_names = getattr(texts, "column_names", None)  # a datasets.Dataset
    if isinstance(column_names, list):
        if "text" not in column_names:
            raise TextInputError(f"a datasets.Dataset of texts needs a 'text' column; it has {column_names}.")
        return [(None, t) for t in texts["text"]]
    if isinstance(texts, (bytes, dict)) or not hasattr(texts, "__iter__"):
        raise TextInputError(
            f"texts is a {type(texts).__name__}; pass a str, a list of str or Text, a pandas Series or a datasets column."
        )
    return [(None, t) for t in texts]


def _read_utf8(path: Path) -> str:
    """The file's text; a file that is not UTF-8 is refused with its name and the first bad byte."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise TextInputError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}, line {line}); "
            "text files must be UTF-8: convert it, e.g. iconv -f latin1 -t utf-8."
        ) from None


def _from_file(path: Path) -> list[Text]:
    if path.suffix == ".jsonl":
        texts = []
        for i, line in enumerate(_read_utf8(path).splitlines()):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TextInputError(f"{path}:{i + 1}: not a JSON object ({exc.msg}); each line must be "
                                     '{"text": ..., "name": ...}.') from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise TextInputError(f"{path}:{i + 1}: each JSON line needs a string 'text' field.")
            if not record["text"].strip():
                raise TextInputError(f"{path}:{i + 1}: the 'text' field is empty.")
            texts.append(Text(str(record.get("name", f"{path.stem}_{i}")), str(record.get("register", path.stem)),
                              record["text"]))
        if not texts:
            raise TextInputError(f"{path}: no texts in this file (it is empty).")
        return texts
    content = _read_utf8(path).strip()
    if not content:
        raise TextInputError(f"{path}: the file is empty; a text file must hold the text to analyse.")
    return [Text(path.stem, "user", content)]


def wikitext_texts(min_words: int = 600, split: str = "test") -> list[Text]:
    """Articles of wikitext-2-raw-v1 with at least ``min_words`` words, from the local datasets cache.

    Needs the ``datasets`` package and a cached copy; never downloads in tests.
    """
    try:
        import datasets
    except ImportError as exc:
        raise ValueError("texts='wikitext' needs the 'datasets' package (pip install datasets).") from exc
    try:
        rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"]
    except Exception as exc:
        raise ValueError(f"wikitext-2-raw-v1 ({split}) is not available locally: {exc}") from exc
    articles: list[list[str]] = []
    for line in rows:
        stripped = line.strip()
        if stripped.startswith("= ") and stripped.endswith(" =") and not stripped.startswith("= ="):
            articles.append([])
        if articles and stripped:
            articles[-1].append(stripped)
    texts = []
    for i, lines in enumerate(articles):
        body = "\n".join(lines[1:])
        if len(body.split()) >= min_words:
            texts.append(Text(f"wikitext_{i:04d}", "wikitext", body))
    return texts


def toy_texts(n: int = 12, min_words: int = 250) -> list[Text]:
    """``n`` texts in the bundled toy pair's own distribution: consecutive documents of its
    corpus's held-out stream (never trained on), joined until each has ``min_words`` words
    (about 300 toy tokens, more than the toy's trained context of 256).

    Documents are joined with ``</s><s>``, which the toy tokenizer reads as EOS and BOS: the
    document boundary the pair was trained on. (Joined with blank lines instead, the toy
    pair's perplexity on Exp 2's 9 evaluation texts, 256 tokens each, goes from 2.52 to 3.91 for
    RoPE and from 2.51 to 5.06 for DroPE; ``docs/toy_pair.md``.)"""
    from ..model.bundled import resolve
    from ..toy.corpus import heldout_documents
    from ..toy.corpus import toy_metadata

    config, _ = toy_metadata(resolve("bundled:toy/rope"))
    texts: list[Text] = []
    current: list[str] = []
    n_docs = 64
    while len(texts) < n:
        texts, current = [], []
        for doc in heldout_documents(replace(config, n_heldout=n_docs)):
            current.append(doc.text)
            if sum(len(t.split()) for t in current) >= min_words:
                texts.append(Text(f"toy-heldout-{len(texts):02d}", "toy-corpus", "</s><s>".join(current)))
                current = []
                if len(texts) == n:
                    break
        n_docs *= 2
    return texts


def load_texts(source: Union[None, str, Path] = None) -> list[Text]:
    """Texts from ``source``: None/"builtin", "wikitext", "toy" (the toy corpus's held-out
    stream), a ``.txt``/``.jsonl`` file, or a folder."""
    if source is None or str(source) == "builtin":
        return builtin_texts()
    if str(source) == "wikitext":
        return wikitext_texts()
    if str(source) == "toy":
        return toy_texts()
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".txt", ".jsonl"))
        if not files:
            raise ValueError(f"{path}: no .txt or .jsonl files.")
        texts = [t for f in files for t in _from_file(f)]
    elif path.is_file():
        texts = _from_file(path)
    else:
        raise FileNotFoundError(f"{source}: no such text file or folder (or use 'builtin' / 'wikitext' / 'toy').")
    if not texts:
        raise ValueError(f"{source}: no texts found.")
    return texts


def split_texts(
    texts: Sequence[Text], n_identification: int, n_evaluation: Optional[int] = None, seed: int = 0
) -> tuple[list[Text], list[Text]]:
    """Disjoint identification and evaluation sets, drawn deterministically from ``seed``.

    Registers are interleaved so both sets mix genres. Duplicate texts are dropped first, so no
    text can be in both sets.
    """
    unique, seen = [], set()
    for text in texts:
        if text.text not in seen:
            seen.add(text.text)
            unique.append(text)
    rng = random.Random(seed)
    by_register: dict[str, list[Text]] = {}
    for text in unique:
        by_register.setdefault(text.register, []).append(text)
    for group in by_register.values():
        rng.shuffle(group)
    order: list[Text] = []
    while any(by_register.values()):
        for register in sorted(by_register):
            if by_register[register]:
                order.append(by_register[register].pop())
    n_evaluation = len(order) - n_identification if n_evaluation is None else n_evaluation
    if n_identification < 1 or n_evaluation < 1 or n_identification + n_evaluation > len(order):
        raise ValueError(
            f"cannot draw {n_identification} identification + {n_evaluation} evaluation texts from "
            f"{len(order)} distinct texts."
        )
    return order[:n_identification], order[n_identification : n_identification + n_evaluation]
