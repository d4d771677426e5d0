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
from typing import Optional, Sequence, Union

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


def _from_file(path: Path) -> list[Text]:
    if path.suffix == ".jsonl":
        texts = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                record = json.loads(line)
                if "text" not in record:
                    raise ValueError(f"{path}:{i + 1}: each JSON line needs a 'text' field.")
                texts.append(Text(str(record.get("name", f"{path.stem}_{i}")), str(record.get("register", path.stem)),
                                  record["text"]))
        return texts
    return [Text(path.stem, "user", path.read_text(encoding="utf-8").strip())]


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
    pair's perplexity on 9 such texts goes from 3.8 to 8.3 for RoPE and from 3.6 to 11.7 for
    DroPE.)"""
    from .bundled import resolve
    from .toy.corpus import heldout_documents
    from .toy.evaluate import toy_metadata

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
