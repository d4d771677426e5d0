"""Texts into model inputs, as every experiment takes them: the position-0 (BOS) policy,
tokenising and cutting texts, batching equal lengths, next-token NLL, model names, and the
defaults that suit a model (its texts, tokens per text, the out-of-distribution warning)."""

from __future__ import annotations

import math
import statistics
import warnings
import weakref
from collections import defaultdict
from typing import Iterator, Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

from drope_lens.measurement.texts import Text, TextInputError, TextsLike, as_texts

#: Where position 0 comes from. ``"checkpoint"``: the checkpoint's tokenizer decides, as in
#: Hugging Face (Llama-2 prepends ``<s>``; SmolLM2 and Qwen prepend nothing, so position 0 is the
#: text's first token and a warning says so). ``"always"``: the tokenizer's BOS token is put at
#: position 0 when the tokenizer does not put it there itself (an error if it has none).
BosPolicy = Literal["checkpoint", "always"]
BOS_POLICIES: tuple[str, ...] = ("checkpoint", "always")
#: Fewest tokens (position 0 included) a text may have: statistics over query positions t >= 1
#: and next-token losses need at least one token after position 0.
MIN_TOKENS = 2


def check_bos(bos: str) -> str:
    if bos not in BOS_POLICIES:
        raise ValueError(f"bos={bos!r}: allowed values are {list(BOS_POLICIES)}.")
    return bos


def model_name(model) -> str:
    spec = getattr(model, "lens", None)
    return spec.source if spec is not None else str(getattr(model.cfg, "model_name", "model"))


def model_variant(model) -> str:
    spec = getattr(model, "lens", None)
    return spec.variant if spec is not None else "unknown"


PREFIX_CHARS_PER_TOKEN = 6  # generous: English BPE averages about 4 characters per token
PREFIX_MARGIN_TOKENS = 16  # tokens past max_tokens that a prefix must reach to be trusted
#: Headroom over the most characters per token a tokenizer has shown on cut prefixes so far: the
#: prefix length after its first call (never above PREFIX_CHARS_PER_TOKEN per token).
PREFIX_HEADROOM = 1.15
_CHARS_PER_TOKEN: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def tokenize(
    model,
    texts: TextsLike,
    max_tokens: int,
    *,
    bos: BosPolicy = "checkpoint",
    min_tokens: int = MIN_TOKENS,
) -> list[torch.Tensor]:
    """Each text tokenised by the model's tokenizer, position 0 as ``bos`` says, cut to ``max_tokens`` (CPU).

    ``texts`` is anything :func:`drope_lens.measurement.texts.as_texts` accepts. ``bos="checkpoint"`` keeps the
    tokenizer's own special tokens (warning once per call when position 0 is then not a special
    token, since the study's "BOS" measurements read position 0); ``bos="always"`` puts the
    tokenizer's BOS token first when the tokenizer did not. A text with fewer than
    ``min_tokens`` tokens raises :class:`~drope_lens.measurement.texts.TextInputError` naming it.

    Only a prefix of each text is tokenised: the text cut at a whitespace boundary after about
    ``6 * max_tokens`` characters, or fewer once the tokenizer has shown how many characters its
    tokens take (:func:`_prefix_chars`). The prefix's tokens are used only if they run at least
    ``PREFIX_MARGIN_TOKENS`` past ``max_tokens``, so that the cut cannot reach the tokens kept;
    otherwise the whole text is tokenised. (Tokenising 900-word texts whole to keep 512 tokens
    costs as much as a third of a 7B forward on a fast GPU.) One batched tokenizer call per pass.
    """
    texts = as_texts(texts)
    check_bos(bos)
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError(f"{model_name(model)} has no tokenizer; these experiments take texts.")
    if max_tokens < 2:
        raise ValueError(f"max_tokens={max_tokens}: need at least 2 tokens.")
    bos_id = tokenizer.bos_token_id
    if bos == "always" and bos_id is None:
        raise ValueError(
            f"bos='always' but the tokenizer of {model_name(model)} defines no BOS token; use bos='checkpoint'."
        )
    limit = _prefix_chars(tokenizer, max_tokens)
    prefixes = [_whitespace_prefix(t.text, limit) for t in texts]
    encoded = _encode(tokenizer, prefixes)
    cut = [i for i, prefix in enumerate(prefixes) if len(prefix) < len(texts[i].text)]
    redo = [i for i in cut if len(encoded[i]) < max_tokens + PREFIX_MARGIN_TOKENS]
    trusted = set(cut) - set(redo)
    _remember_chars_per_token(tokenizer, [(len(prefixes[i]), len(encoded[i])) for i in sorted(trusted)])
    if redo:
        for i, ids in zip(redo, _encode(tokenizer, [texts[i].text for i in redo])):
            encoded[i] = ids
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out, not_special = [], []
    for text, ids in zip(texts, encoded):
        if bos == "always" and (not ids or ids[0] != bos_id):
            ids = [bos_id] + ids
        if len(ids) < min_tokens:
            raise TextInputError(
                f"text {text.name!r} has {len(ids)} token(s) (position 0 included); at least {min_tokens} are "
                "needed. Pass a longer text."
            )
        if ids[0] not in special:
            not_special.append(text.name)
        out.append(torch.from_numpy(np.array(ids[:max_tokens], dtype=np.int64)))  # 5x faster than torch.tensor(list)
    if not_special:
        warnings.warn(
            f"position 0 is not a special token for {len(not_special)} text(s) ({not_special[0]!r}, ...): the "
            f"tokenizer of {model_name(model)} prepends no BOS, so 'BOS' statistics read the first text token. "
            "Pass bos='always' to put the BOS token there.",
            UserWarning,
            stacklevel=2,
        )
    return out


def _prefix_chars(tokenizer, max_tokens: int) -> int:
    """Characters of each text to tokenise for ``max_tokens`` tokens: :data:`PREFIX_CHARS_PER_TOKEN`
    per token until the tokenizer has shown its characters per token on cut prefixes, then
    :data:`PREFIX_HEADROOM` times the most it showed, for ``max_tokens + PREFIX_MARGIN_TOKENS`` tokens,
    if that is fewer characters. (A prefix that falls short is tokenised whole again, so this sets
    the cost, never the tokens.)"""
    try:
        seen = _CHARS_PER_TOKEN.get(tokenizer)
    except TypeError:  # a tokenizer that cannot be weakly referenced
        seen = None
    if seen is None:
        return max_tokens * PREFIX_CHARS_PER_TOKEN
    return min(max_tokens * PREFIX_CHARS_PER_TOKEN,
               int(PREFIX_HEADROOM * seen * (max_tokens + PREFIX_MARGIN_TOKENS)) + 1)


def _remember_chars_per_token(tokenizer, lengths: list[tuple[int, int]]) -> None:
    """Keep the most characters per token among ``(characters, tokens)`` of cut prefixes."""
    ratios = [chars / tokens for chars, tokens in lengths if tokens]
    if ratios:
        try:
            _CHARS_PER_TOKEN[tokenizer] = max(ratios + [_CHARS_PER_TOKEN.get(tokenizer, 0.0)])
        except TypeError:
            pass


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of ``texts`` with the tokenizer's special tokens: a fast tokenizer's Rust backend
    directly (``encode_batch_fast``: no character offsets) when it has no truncation, padding or
    special-token splitting set, which is what ``tokenizer(texts)`` then does; else ``tokenizer(texts)``."""
    backend = getattr(tokenizer, "_tokenizer", None)
    fast = getattr(backend, "encode_batch_fast", None)
    splits_special = bool(getattr(tokenizer, "split_special_tokens", False))
    if (fast is not None and getattr(tokenizer, "is_fast", False) and backend.truncation is None
            and backend.padding is None and bool(getattr(backend, "encode_special_tokens", False)) == splits_special):
        return [encoding.ids for encoding in fast(texts, add_special_tokens=True)]
    return tokenizer(texts, add_special_tokens=True)["input_ids"]


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


# ------------------------------------------------------------------------------------------
# Defaults of the Python API that suit the model (what the CLI does: texts, max_tokens) and
# the warning when a model's perplexity says the texts are not its kind of text.
# ------------------------------------------------------------------------------------------
STUDY_MAX_TOKENS = 512  # tokens per text in the study's Exp 1/2


class OutOfDistributionWarning(UserWarning):
    """The measured texts are not the model's kind of text (or run past its trained context)."""


def trained_context_of(model) -> Optional[int]:
    spec = getattr(model, "lens", None)
    return getattr(spec, "max_position_embeddings", None)


def resolve_max_tokens(model, max_tokens: Optional[int], *, what: str = "max_tokens") -> int:
    """``max_tokens``, or by default the study's 512 capped at the model's trained context.

    An explicit value past the trained context is kept (it may be the experiment) but warns
    loudly, naming the cap: the positions past it were never trained."""
    context = trained_context_of(model)
    if max_tokens is None:
        return min(STUDY_MAX_TOKENS, context) if context else STUDY_MAX_TOKENS
    if context and max_tokens > context:
        warnings.warn(
            f"{what}={max_tokens} is past {model_name(model)}'s trained context of {context} tokens: positions "
            f"{context}..{max_tokens - 1} were never trained on, so their numbers are not the model's normal "
            f"behaviour. Leave {what} unset (None) to cap at {context}.",
            OutOfDistributionWarning, stacklevel=3)
    return max_tokens


def default_texts(model) -> list[Text]:
    """Texts that suit ``model``: the toy corpus's held-out text for the bundled toy pair (which
    never saw real English), the built-in English texts for any other model. The same choice as
    ``drope-lens run`` makes without ``--texts``."""
    from drope_lens.measurement.texts import builtin_texts, toy_texts

    source = str(getattr(getattr(model, "lens", None), "source", ""))
    return toy_texts() if source.startswith("bundled:toy/") else builtin_texts()


def warn_if_out_of_distribution(model, nll_per_text: Sequence[float]) -> None:
    """Warn when the median perplexity over texts is above the vocabulary size, i.e. worse than
    guessing every token uniformly: the texts are then out of the model's distribution (e.g.
    English for the toy pair) and what is measured on them says little about the model."""
    if not len(nll_per_text):
        return
    median_ppl = float(math.exp(statistics.median(nll_per_text)))
    vocab = int(model.cfg.d_vocab)
    if median_ppl > vocab:
        warnings.warn(
            f"{model_name(model)}: median perplexity {median_ppl:,.0f} over {len(nll_per_text)} texts is above its "
            f"vocabulary size {vocab:,} (a uniform guess): these texts are out of the model's distribution and its "
            "numbers on them mean little. Use texts like its training data (drope_lens.measurement.tokens."
            "default_texts(model); for the toy pair drope_lens.measurement.texts.toy_texts()).",
            OutOfDistributionWarning, stacklevel=3)
