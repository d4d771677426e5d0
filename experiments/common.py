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


PREFIX_CHARS_PER_TOKEN = 6  # generous: English BPE averages about 4 characters per token
PREFIX_MARGIN_TOKENS = 16  # tokens past max_tokens that a prefix must reach to be trusted


def tokenize(model, texts: Sequence[Text], max_tokens: int) -> list[torch.Tensor]:
    """Each text tokenised by the model's tokenizer with BOS first, cut to ``max_tokens`` (CPU).

    Only a prefix of each text is tokenised: the text cut at a whitespace boundary after about
    ``6 * max_tokens`` characters. The prefix's tokens are used only if they run at least
    ``PREFIX_MARGIN_TOKENS`` past ``max_tokens``, so that the cut cannot reach the tokens kept;
    otherwise the whole text is tokenised. (Tokenising 900-word texts whole to keep 512 tokens
    costs as much as a third of a 7B forward on a fast GPU.) One batched tokenizer call per pass;
    the BOS id is prepended when the tokenizer does not add it.
    """
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError(f"{model_name(model)} has no tokenizer; these experiments take texts.")
    if max_tokens < 2:
        raise ValueError(f"max_tokens={max_tokens}: need at least 2 tokens.")
    bos = tokenizer.bos_token_id
    limit = max_tokens * PREFIX_CHARS_PER_TOKEN
    prefixes = [_whitespace_prefix(t.text, limit) for t in texts]
    encoded = tokenizer(prefixes, add_special_tokens=True)["input_ids"]
    redo = [i for i, (ids, prefix) in enumerate(zip(encoded, prefixes))
            if len(prefix) < len(texts[i].text) and len(ids) < max_tokens + PREFIX_MARGIN_TOKENS]
    if redo:
        for i, ids in zip(redo, tokenizer([texts[i].text for i in redo], add_special_tokens=True)["input_ids"]):
            encoded[i] = ids
    out = []
    for ids in encoded:
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        out.append(torch.tensor(ids[:max_tokens], dtype=torch.long))
    return out


def _whitespace_prefix(text: str, limit: int) -> str:
    """``text`` cut at the last whitespace before ``limit`` characters (all of it if shorter)."""
    if len(text) <= limit:
        return text
    cut = max(text.rfind(" ", 0, limit), text.rfind("\n", 0, limit))
    return text[:cut] if cut > 0 else text


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


class HostCopy:
    """Tensors (a tensor or a nested dict of them) copied from the device into pinned host memory
    without blocking; ``host()`` waits for those copies only, so the next forward can already be
    queued. CPU tensors are passed through."""

    def __init__(self, tree):
        self.tree = self._copy(tree)
        self.event = None
        if torch.cuda.is_available() and self._any_cuda(tree):
            self.event = torch.cuda.Event()
            self.event.record()

    @classmethod
    def _copy(cls, tree):
        if isinstance(tree, dict):
            return {k: cls._copy(v) for k, v in tree.items()}
        if not tree.is_cuda:
            return tree
        out = torch.empty(tree.shape, dtype=tree.dtype, pin_memory=True)
        out.copy_(tree, non_blocking=True)
        return out

    @classmethod
    def _any_cuda(cls, tree) -> bool:
        if isinstance(tree, dict):
            return any(cls._any_cuda(v) for v in tree.values())
        return tree.is_cuda

    def host(self):
        if self.event is not None:
            self.event.synchronize()
        return self.tree


def progress(iterable, total: int, desc: str, enabled: bool = True):
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False)
