"""Shared pieces of the experiments: tokenising texts, batching, perplexity, progress bars."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from drope_lens.texts import Text


def model_name(model) -> str:
    spec = getattr(model, "lens", None)
    return spec.source if spec is not None else str(getattr(model.cfg, "model_name", "model"))


def model_variant(model) -> str:
    spec = getattr(model, "lens", None)
    return spec.variant if spec is not None else "unknown"


def unit_prefix(model) -> str:
    """Names a model's units in a run store: variant plus a short hash of its source."""
    import hashlib

    return f"{model_variant(model)}-{hashlib.sha256(model_name(model).encode()).hexdigest()[:6]}"


def tokenize(model, texts: Sequence[Text], max_tokens: int) -> list[torch.Tensor]:
    """Each text tokenised by the model's tokenizer with BOS first, cut to ``max_tokens`` (CPU).

    One batched tokenizer call; the BOS id is prepended when the tokenizer does not add it.
    """
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError(f"{model_name(model)} has no tokenizer; these experiments take texts.")
    if max_tokens < 2:
        raise ValueError(f"max_tokens={max_tokens}: need at least 2 tokens.")
    bos = tokenizer.bos_token_id
    out = []
    for ids in tokenizer([t.text for t in texts], add_special_tokens=True)["input_ids"]:
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        out.append(torch.tensor(ids[:max_tokens], dtype=torch.long))
    return out


def batches_by_length(tokens: Sequence[torch.Tensor], batch_size: int) -> Iterator[tuple[list[int], torch.Tensor]]:
    """``(indices, [batch, T] tokens)`` grouping equal-length sequences, in index order."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1.")
    groups: dict[int, list[int]] = defaultdict(list)
    for index, seq in enumerate(tokens):
        groups[len(seq)].append(index)
    for length in sorted(groups, key=lambda n: groups[n][0]):
        members = groups[length]
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            yield chunk, torch.stack([tokens[i] for i in chunk])


def sequence_nll(
    logits: Float[torch.Tensor, "batch pos vocab"], tokens: Int[torch.Tensor, "batch pos"]
) -> Float[torch.Tensor, "batch"]:
    """Mean next-token NLL (nats) of tokens 1..T-1 given their prefix, per row, in float32.

    Perplexity of a text is ``exp`` of this (its first token is never predicted).
    """
    rows = []
    for row in range(tokens.shape[0]):
        rows.append(F.cross_entropy(logits[row, :-1].float(), tokens[row, 1:].to(logits.device)))
    return torch.stack(rows)


def progress(iterable, total: int, desc: str, enabled: bool = True):
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False)
