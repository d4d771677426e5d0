"""Scoring of task answers, identical for every task (METHODS.md, Exp 3).

Primary, for two-choice tasks: logit comparison at the last prompt position between the first
tokens of the two answers as they follow the prompt (" Yes" vs " No", " Positive" vs
" Negative"). :func:`answer_token_ids` finds those tokens whether the tokenizer merges the
leading space into the word (GPT-2 ``ĠYes``, SentencePiece ``▁Yes``) or emits it as a token of
its own (then the first token after it is used).

Secondary: the study's generation scoring of a greedy continuation (20 new tokens): the first
word names the answer, else exactly one answer appearing in the text does; anything else is
*unparseable*, reported in its own column and counted wrong (always in the denominator).
Passkey: correct if the key appears in the continuation; unparseable if it holds no digit.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from jaxtyping import Float


def _is_blank(tokenizer, token_id: int) -> bool:
    return tokenizer.decode([token_id]).strip() == ""


def answer_token_id(tokenizer, word: str) -> int:
    """The first token of ``" " + word`` that carries the word (a bare space token is skipped)."""
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    ids = [i for i in ids if not _is_blank(tokenizer, i)] or ids
    if not ids:
        raise ValueError(f"{word!r} tokenizes to nothing.")
    return int(ids[0])


def answer_token_ids(tokenizer, choices: Sequence[str]) -> list[int]:
    """First tokens of each choice (see :func:`answer_token_id`); they must differ."""
    ids = [answer_token_id(tokenizer, c) for c in choices]
    if len(set(ids)) != len(ids):
        raise ValueError(f"answers {list(choices)} share their first token {ids}; logit scoring cannot tell them apart.")
    return ids


@dataclass(frozen=True)
class LogitScore:
    """``answer``: the choice with the larger logit; ``margin``: logit(label) - logit(other)."""

    answer: str
    correct: bool
    margin: float


def logit_score(logits: Float[torch.Tensor, "n_choices"], choices: Sequence[str], label: str) -> LogitScore:
    """Compare the logits of the two choices' first tokens (``logits[i]`` belongs to ``choices[i]``)."""
    if label not in choices:
        raise ValueError(f"label {label!r} is not one of the choices {list(choices)}.")
    values = [float(v) for v in logits]
    best = max(range(len(choices)), key=lambda i: values[i])
    index = list(choices).index(label)
    other = max(v for i, v in enumerate(values) if i != index)
    return LogitScore(choices[best], best == index, values[index] - other)


@dataclass(frozen=True)
class GenerationScore:
    """``answer``: the parsed answer ("" when unparseable)."""

    answer: str
    correct: bool
    unparseable: bool


_WORD = re.compile(r"[A-Za-z]+|\d+")


def parse_choice(text: str, choices: Sequence[str]) -> Optional[str]:
    """The first word if it is a choice (case-insensitive), else the one choice found in the text."""
    words = _WORD.findall(text)
    lowered = {c.lower(): c for c in choices}
    if words and words[0].lower() in lowered:
        return lowered[words[0].lower()]
    found = [c for c in choices if re.search(rf"\b{re.escape(c)}\b", text, flags=re.IGNORECASE)]
    return found[0] if len(found) == 1 else None


def generation_score(text: str, label: str, choices: Optional[Sequence[str]]) -> GenerationScore:
    """Score a greedy continuation; ``choices=None`` is passkey scoring (``label`` is the key)."""
    if choices is None:
        numbers = re.findall(r"\d+", text)
        if not numbers:
            return GenerationScore("", False, True)
        exact = [n for n in numbers if label in n]
        return GenerationScore(exact[0] if exact else numbers[0], label in text, False)
    answer = parse_choice(text, choices)
    if answer is None:
        return GenerationScore("", False, True)
    return GenerationScore(answer, answer == label, False)


def accuracy(correct: Sequence[float]) -> float:
    """Share correct over ALL items (unparseable ones count as wrong); NaN for no items."""
    values = [float(c) for c in correct if not (isinstance(c, float) and math.isnan(c))]
    return sum(values) / len(values) if values else float("nan")
