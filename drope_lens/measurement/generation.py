"""Batched greedy decoding with a KV cache under any hook set.

:func:`greedy_generate` runs prompts in batches (sorted by length, left-padded with an attention
mask), one prefill forward per batch and then one forward per new token over a preallocated key /
value cache. Hooks given as ``fwd_hooks`` are active in every forward, prefill and decode.

Absolute positions. A decode forward sees only the new token, and a left-padded row's first
real token is not at index 0. Position-aware hooks therefore read
:func:`absolute_positions`, which gives the absolute position of every entry of the current
forward (``-1`` for padding) while :func:`greedy_generate` or :func:`padded_forward` runs, and
``model.position_offset + arange`` otherwise. ``hooks.conditions`` builds its position-targeted
conditions on it, so "position 0" means each prompt's first token (its BOS), never a padding
slot or a generated token.

Compared with TransformerLens's ``generate``: no per-step host synchronisation unless stop tokens
are given (then one ``any()`` per step, as Hugging Face does), no tokenizer call per step, a
cache written in place instead of concatenated, and the embedding's vocabulary check only on
prompt tokens (generated ids come from the model's own vocabulary).

Static decoding and CUDA graphs. When a batch has no hooks, or only hooks the project marks
graph-safe (:func:`graph_safe_hooks`: ``hooks.zero_dims``, ``hooks.replace_topk_with_mean``,
``hooks.ablate_positions`` of position 0 only, and ``batched_conditions`` over them: every named
condition, e.g. Exp 3's ``massive_zero`` / ``topk_mean_q_k`` and ``l1_both_bos``), and no hook
was left on the model, its decode steps run with fixed shapes (:class:`_StaticDecode`:
whole-length cache written at a slot index held on the device, an attention-mask buffer updated
in place), and on CUDA the second of them is captured as a CUDA graph that every later step
replays (``cuda_graphs=False`` runs the same steps eagerly). The rule for hooks: a graph replays
kernels, not Python, so a hook runs once at capture and never again; any other hook (every user
hook, ``ablate_positions`` beyond position 0, hooks on ``hook_rot_k`` / scores / pattern)
puts the whole batch on the dynamic path, where every hook runs at every step. Models split over
devices and sliding windows shorter than the sequence also stay dynamic. Static and dynamic
decoding compute the same numbers up to the attention kernel's rounding over masked slots
(tested equal to 1e-5 in float32, and graph == eager exactly on CUDA on the test models).
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import torch
from jaxtyping import Float, Int
from transformer_lens.components import Embed

Prompt = Union[str, Sequence[int], torch.Tensor]
HookPair = tuple


# ------------------------------------------------------------------------------------------
# Absolute positions of the current forward
# ------------------------------------------------------------------------------------------
_ROWS: contextvars.ContextVar[Optional[torch.Tensor]] = contextvars.ContextVar("drope_lens_rows", default=None)


@dataclass
class GenerationState:
    """Where the current forward sits in a generation: published on the model while
    :func:`greedy_generate` / :func:`padded_forward` run.

    ``positions`` ``[batch, total]``: absolute position of every slot (``-1`` on left padding);
    ``prompt`` ``[batch, total]``: True on prompt tokens; the current forward holds slots
    ``begin:end`` (its queries) and attends to slots ``0:end`` (its keys). ``prompt_end``, when
    known: no slot from there on holds a prompt token (the padded prompt length of a generation).
    """

    positions: torch.Tensor
    prompt: torch.Tensor
    begin: int
    end: int
    prompt_end: Optional[int] = None

    def _slice(self, table: torch.Tensor, n_pos: int, device) -> torch.Tensor:
        if n_pos == self.end - self.begin:
            out = table[:, self.begin : self.end]
        elif n_pos == self.end:
            out = table[:, : self.end]
        else:
            raise RuntimeError(f"a hooked tensor with {n_pos} positions in a forward over slots "
                               f"{self.begin}:{self.end}; cannot place it.")
        rows = _ROWS.get()
        if rows is not None:
            out = out[rows.to(out.device)]
        return out if device is None else out.to(device)

    def positions_for(self, n_pos: int, device=None) -> torch.Tensor:
        return self._slice(self.positions, n_pos, device)

    def new_tokens_only(self, n_pos: int) -> bool:
        """True when a hooked tensor of ``n_pos`` positions holds only a decode forward's new
        tokens, none of them a prompt token (decided on the host from ``prompt_end``)."""
        return (self.prompt_end is not None and self.begin >= self.prompt_end and n_pos == self.end - self.begin
                and n_pos != self.end)

    def prompt_slots(self, n_pos: int, device=None) -> Optional[torch.Tensor]:
        """``[batch, n_pos]`` bool, True on prompt tokens; None when :meth:`new_tokens_only`
        (prompt hooks then skip their work)."""
        if self.new_tokens_only(n_pos):
            return None
        return self._slice(self.prompt, n_pos, device)


def generation_state(model) -> Optional[GenerationState]:
    """The :class:`GenerationState` of the forward now running, or None outside this module's loops."""
    return getattr(model, "_lens_generation_state", None)


def absolute_positions(model, n_pos: int, device=None) -> Int[torch.Tensor, "batch_or_1 pos"]:
    """Absolute token position of each entry of the current forward; ``-1`` marks left padding.

    While :func:`greedy_generate` / :func:`padded_forward` run, these are each row's own positions
    (restricted to the rows of the current condition group inside :func:`rows_of_group`); a tensor
    with as many positions as the forward's keys (``hook_rot_k`` under a cache) gets the keys'
    positions. Otherwise ``model.position_offset + arange(n_pos)`` with batch 1.
    """
    state = generation_state(model)
    if state is not None:
        return state.positions_for(n_pos, device)
    offset = int(getattr(model, "position_offset", 0))
    return torch.arange(offset, offset + n_pos, device=device)[None]


@contextlib.contextmanager
def rows_of_group(rows: Union[Sequence[int], torch.Tensor]) -> Iterator[None]:
    """Inside: :func:`absolute_positions` returns only batch rows ``rows`` (a condition's sub-batch)."""
    token = _ROWS.set(rows if isinstance(rows, torch.Tensor) else torch.as_tensor(list(rows), dtype=torch.long))
    try:
        yield
    finally:
        _ROWS.reset(token)


@contextlib.contextmanager
def _publish(model, state: Optional[GenerationState]) -> Iterator[None]:
    previous = generation_state(model)
    model._lens_generation_state = state
    try:
        yield
    finally:
        model._lens_generation_state = previous


# ------------------------------------------------------------------------------------------
# Cache written in place
# ------------------------------------------------------------------------------------------
class _CacheEntry:
    """One layer's keys and values in buffers of the final length, filled left to right.

    Same interface as TransformerLens's ``TransformerLensKeyValueCacheEntry`` (``past_keys``,
    ``past_values``, ``append``), without the concatenation per step.

    Static mode (``slot`` set, see :class:`_StaticDecode`): ``append`` writes one new position at
    the slot named by the device tensor ``slot`` and returns the whole buffers, and
    ``past_keys`` has ``length - 1`` positions, so the attention places the query at the last
    slot; which slots a query sees is then entirely the attention mask's business. Shapes no
    longer change from step to step and nothing is read on the host: a CUDA graph can replay it.
    """

    frozen = False
    #: Device types on which keys are stored rotated: RoPE layers then rotate each key once, as it
    #: is appended (:class:`drope_lens.model.attention.layer.LensAttentionMixin`), instead of every
    #: cached key again at every step as TransformerLens's cache needs; ``hook_rot_k`` still
    #: receives every key, rotated, and the numbers are the same to the last bit
    #: (``tests/test_generation_static.py``). On the 2-core CPU it took Exp 10 of the toy study
    #: from 123.6 s to 108.3-120.4 s (session 27). On CUDA since session 28, after that test and the
    #: whole suite passed on an H200 with it on.
    ROTATED_KEYS_ON = frozenset({"cpu", "cuda"})
    #: Device types on which the buffers are laid out head-major (``[batch, head, pos, d_head]`` in
    #: memory; ``keys``/``values`` stay ``[batch, pos, head, d_head]`` views of them): the attention
    #: reads each head's keys contiguously. On the 2-core CPU a decode step's attention over 20 rows x
    #: 8 heads x 2,068 cached keys of 32 took 5.1 ms instead of 13.5 ms (session 31; whole Exp 10
    #: runs through ``drope-lens`` showed no difference beyond the machine's noise, README); CUDA's
    #: kernels take the strides as they are.
    HEAD_MAJOR_ON = frozenset({"cpu"})

    def __init__(self, batch: int, length: int, n_heads: int, d_head: int, dtype, device, zeroed: bool = False):
        self.stores_rotated_keys = torch.device(device).type in self.ROTATED_KEYS_ON
        make = torch.zeros if zeroed else torch.empty  # static mode reads unwritten slots (masked, times 0)
        if torch.device(device).type in self.HEAD_MAJOR_ON:
            self.keys = make(batch, n_heads, length, d_head, dtype=dtype, device=device).transpose(1, 2)
            self.values = make(batch, n_heads, length, d_head, dtype=dtype, device=device).transpose(1, 2)
        else:
            self.keys = make(batch, length, n_heads, d_head, dtype=dtype, device=device)
            self.values = make(batch, length, n_heads, d_head, dtype=dtype, device=device)
        self.length = 0
        self.slot: Optional[torch.Tensor] = None

    @property
    def past_keys(self) -> torch.Tensor:
        if self.slot is not None:
            return self.keys[:, : self.keys.shape[1] - 1]
        return self.keys[:, : self.length]

    @property
    def past_values(self) -> torch.Tensor:
        if self.slot is not None:
            return self.values[:, : self.values.shape[1] - 1]
        return self.values[:, : self.length]

    def append(self, new_keys: torch.Tensor, new_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.slot is not None:
            if new_keys.shape[1] != 1:
                raise RuntimeError("a static-mode KV cache takes one new position per forward, "
                                   f"got {new_keys.shape[1]}.")
            self.keys.index_copy_(1, self.slot, new_keys)
            self.values.index_copy_(1, self.slot, new_values)
            return self.keys, self.values
        end = self.length + new_keys.shape[1]
        if end > self.keys.shape[1]:
            raise RuntimeError(f"KV cache of {self.keys.shape[1]} positions is full.")
        self.keys[:, self.length : end] = new_keys
        self.values[:, self.length : end] = new_values
        self.length = end
        return self.keys[:, :end], self.values[:, :end]


class _Cache:
    """Per-layer :class:`_CacheEntry` list, indexable like TransformerLens's cache."""

    frozen = False

    def __init__(self, model, batch: int, length: int, zeroed: bool = False):
        cfg = model.cfg
        n_kv = cfg.n_key_value_heads or cfg.n_heads
        self.entries = []
        for block in model.blocks:
            weight = block.attn.W_Q
            self.entries.append(_CacheEntry(batch, length, n_kv, cfg.d_head, cfg.dtype, weight.device, zeroed))

    def __getitem__(self, index: int) -> _CacheEntry:
        return self.entries[index]

    def __len__(self) -> int:
        return len(self.entries)

    def make_static(self, slot: torch.Tensor) -> None:
        """Switch every layer to static mode, writing at the slot held by ``slot`` (``[1]`` long)."""
        for entry in self.entries:
            entry.slot = slot


# ------------------------------------------------------------------------------------------
# Prompts
# ------------------------------------------------------------------------------------------
def prompt_ids(model, prompts: Sequence[Prompt], *, bos: str = "checkpoint") -> list[list[int]]:
    """Token ids of each prompt: strings through the model's tokenizer (position 0 as ``bos``
    says, see :func:`drope_lens.measurement.tokens.tokenize`), token lists and tensors as given."""
    if isinstance(prompts, (str, torch.Tensor)):
        prompts = [prompts] if isinstance(prompts, str) or prompts.ndim == 1 else list(prompts)
    if bos not in ("checkpoint", "always"):
        raise ValueError(f"bos={bos!r}: allowed values are ['checkpoint', 'always'].")
    out: list[list[int]] = []
    strings = [i for i, p in enumerate(prompts) if isinstance(p, str)]
    encoded: dict[int, list[int]] = {}
    if strings:
        tokenizer = model.tokenizer
        if tokenizer is None:
            raise ValueError("the model has no tokenizer; pass token ids instead of strings.")
        ids = tokenizer([prompts[i] for i in strings], add_special_tokens=True)["input_ids"]
        bos_id = tokenizer.bos_token_id
        if bos == "always" and bos_id is None:
            raise ValueError("bos='always' but the tokenizer defines no BOS token; use bos='checkpoint'.")
        for i, row in zip(strings, ids):
            encoded[i] = [bos_id] + list(row) if bos == "always" and (not row or row[0] != bos_id) else list(row)
    for i, prompt in enumerate(prompts):
        row = encoded[i] if i in encoded else [int(t) for t in (prompt.tolist() if isinstance(prompt, torch.Tensor) else prompt)]
        if not row:
            raise ValueError(f"prompt {i} has no tokens.")
        out.append(row)
    return out


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r) for r in rows)
    tokens = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, length - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, length - len(row):] = 1
    return tokens.to(device), mask.to(device)


def _positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """``cumsum - 1`` of the attention mask, ``-1`` on padding (absolute positions of each row)."""
    return torch.where(mask.bool(), mask.cumsum(dim=1) - 1, torch.full_like(mask, -1))


def _pad_id(model) -> int:
    tokenizer = model.tokenizer
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if candidate is not None:
            return int(candidate)
    return 0


def _embed(model, tokens: torch.Tensor, checked: bool) -> torch.Tensor:
    embed = model.embed(tokens) if checked else Embed.forward(model.embed, tokens)
    return model.hook_embed(embed)


def _check_model(model) -> None:
    if getattr(model, "lens", None) is None:
        raise TypeError("greedy_generate needs a model loaded by drope_lens (load_model/load_pair/to_drope).")
    if model.cfg.positional_embedding_type != "rotary":
        raise TypeError(f"positional_embedding_type={model.cfg.positional_embedding_type!r}: only 'rotary' models.")


# ------------------------------------------------------------------------------------------
# Forwards
# ------------------------------------------------------------------------------------------
@torch.inference_mode()
def padded_forward(
    model, rows: Sequence[Sequence[int]], *, fwd_hooks: Sequence[HookPair] = (),
) -> tuple[Float[torch.Tensor, "batch pos vocab"], Int[torch.Tensor, "batch pos"]]:
    """One forward over left-padded ``rows`` with hooks; returns logits and the attention mask.

    Position-aware hooks see each row's absolute positions (see :func:`absolute_positions`).
    """
    _check_model(model)
    tokens, mask = _left_pad(rows, _pad_id(model), model.cfg.device)
    padded = bool((mask == 0).any())
    state = GenerationState(_positions_from_mask(mask), mask.bool(), 0, mask.shape[1])
    with _publish(model, state), model.hooks(fwd_hooks=list(fwd_hooks)):
        model.position_offset = 0
        residual = _embed(model, tokens, checked=True)
        logits = model(residual, start_at_layer=0, attention_mask=mask if padded else None)
    return logits, mask


def _hooked(module) -> bool:
    """True when any hook point inside ``module`` has a hook attached."""
    from transformer_lens.hook_points import HookPoint

    from ..model.hooks_state import is_hooked

    return any(isinstance(m, HookPoint) and is_hooked(m) for m in module.modules())


def _last_logits(model, residual, cache, attention_mask) -> torch.Tensor:
    """Logits ``[batch, vocab]`` at the last position of a cached forward.

    Only the last position is normalised and unembedded (the others' logits are never read: in a
    prefill of T tokens this skips T - 1 rows of the ``[d_model, vocab]`` product), unless a hook
    on ``ln_final`` wants to see every position; then the whole forward runs as usual.
    """
    if _hooked(model.ln_final):
        return model(residual, start_at_layer=0, past_kv_cache=cache, attention_mask=attention_mask)[:, -1]
    resid = model(residual, start_at_layer=0, stop_at_layer=model.cfg.n_layers, past_kv_cache=cache,
                  attention_mask=attention_mask)
    return model.unembed(model.ln_final(resid[:, -1:]))[:, 0]


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by all ``rows``, leaving each row >= 1 token after it."""
    limit = min(len(r) for r in rows) - 1
    n = 0
    while n < limit and all(r[n] == rows[0][n] for r in rows[1:]):
        n += 1
    return n


@torch.inference_mode()
def score_shared_prefix(
    model,
    groups: Sequence[Sequence[Prompt]],
    score_ids: Sequence[int],
    *,
    fwd_hooks: Sequence[HookPair] = (),
    batch_size: int = 16,
    bos: str = "checkpoint",
) -> Float[torch.Tensor, "group member score"]:
    """Logits of ``score_ids`` at the last position of every prompt, for groups of prompts that
    begin alike (e.g. one long context followed by different questions).

    Each group's longest common token prefix runs once; its keys and values are then shared by
    the group's members, which run only their own remaining tokens (right-padded, so causal
    attention never lets a real token see padding). The result is the same as scoring every
    prompt whole (``greedy_generate(..., 0, score_ids=...)``; tested to 1e-5 in float32) for
    ``len(group)`` times less prefix work. ``fwd_hooks`` are active in both forwards; position-aware
    hooks see absolute positions (:func:`absolute_positions`). The prefix forward stops after the
    last block (its logits are never read). ``batch_size``: prompts per forward (groups of equal
    prefix length are batched together). Returns float32 ``[n_groups, group_size, len(score_ids)]``
    on the CPU; all groups must have the same size.
    """
    _check_model(model)
    if not groups:
        raise ValueError("groups is empty: nothing to score.")
    sizes = {len(g) for g in groups}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"group sizes {sorted(sizes)}: every group needs the same number (>= 1) of prompts.")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1.")
    members = sizes.pop()
    rows = [prompt_ids(model, list(g), bos=bos) for g in groups]
    prefix = [_common_prefix(r) for r in rows]
    out = torch.empty(len(groups), members, len(score_ids), dtype=torch.float32)
    by_length: dict[int, list[int]] = {}
    for index, length in enumerate(prefix):
        by_length.setdefault(length, []).append(index)
    per_batch = max(1, batch_size // members)
    device = model.cfg.device
    pad = _pad_id(model)
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        for length, indices in sorted(by_length.items(), reverse=True):
            for start in range(0, len(indices), per_batch):
                chunk = indices[start : start + per_batch]
                suffixes = [r[length:] for i in chunk for r in rows[i]]
                longest = max(len(x) for x in suffixes)
                total = length + longest
                n_rows = len(suffixes)
                cache = _Cache(model, n_rows, total)
                if length:
                    head = torch.tensor([rows[i][0][:length] for i in chunk], dtype=torch.long, device=device)
                    state = GenerationState(torch.arange(length, device=device).expand(len(chunk), -1),
                                            torch.ones(len(chunk), length, dtype=torch.bool, device=device), 0, length)
                    shared = _Cache(model, len(chunk), length)
                    with _publish(model, state):
                        model(_embed(model, head, True), start_at_layer=0, stop_at_layer=model.cfg.n_layers,
                              past_kv_cache=shared)
                    for entry, source in zip(cache.entries, shared.entries):  # each prefix to its members' rows
                        for mine, theirs in ((entry.keys, source.keys), (entry.values, source.values)):
                            mine[:, :length].view(len(chunk), members, *theirs.shape[1:]).copy_(theirs[:, None])
                        entry.length = length
                    del shared
                tail = torch.full((n_rows, longest), pad, dtype=torch.long)
                real = torch.zeros(n_rows, total, dtype=torch.bool)
                real[:, :length] = True
                for j, x in enumerate(suffixes):
                    tail[j, : len(x)] = torch.tensor(x, dtype=torch.long)
                    real[j, length : length + len(x)] = True
                positions = torch.where(real, torch.arange(total).expand(n_rows, -1), torch.full((n_rows, total), -1))
                state = GenerationState(positions.to(device), real.to(device), length, total)
                with _publish(model, state):
                    logits = model(_embed(model, tail.to(device), True), start_at_layer=0, past_kv_cache=cache)
                last = torch.tensor([len(x) - 1 for x in suffixes], device=device)
                picked = logits[torch.arange(n_rows, device=device), last][:, list(score_ids)].float().cpu()
                out[chunk] = picked.view(len(chunk), members, -1)
    model.position_offset = 0
    return out


@dataclass
class Generation:
    """What :func:`greedy_generate` returns, one entry per prompt in the order given.

    ``tokens``: new token ids (ending at and including the first stop token, if any);
    ``texts``: their decoded text (special tokens skipped); ``prompt_lengths``: prompt tokens;
    ``logits``: float32 ``[n_prompts, len(score_ids)]`` logits of ``score_ids`` at the last
    prompt position (the prefill's prediction of the first new token), when asked for;
    ``step_logits``: float32 ``[n_prompts, max_new_tokens, len(score_ids)]``, the same at every
    generated token (``score_steps=True``; NaN after a batch stopped early).
    """

    tokens: list[list[int]]
    texts: list[str]
    prompt_lengths: list[int]
    logits: Optional[torch.Tensor] = None
    step_logits: Optional[torch.Tensor] = None


@torch.inference_mode()
def greedy_generate(
    model,
    prompts: Sequence[Prompt],
    max_new_tokens: int,
    *,
    fwd_hooks: Sequence[HookPair] = (),
    stop_token_ids: Optional[Sequence[int]] = None,
    batch_size: int = 16,
    bos: str = "checkpoint",
    score_ids: Optional[Sequence[int]] = None,
    batch_hooks=None,
    progress: Optional[str] = None,
    cuda_graphs: bool = True,
    score_steps: bool = False,
) -> Generation:
    """Greedy continuations of ``prompts`` (strings or token-id lists), ``max_new_tokens`` each.

    Prompts run in batches of ``batch_size`` rows (grouped by length, left-padded). ``fwd_hooks``
    are active in every forward (prefill and each decode step). ``stop_token_ids``: a row stops
    after producing one of them (``None``: every row produces ``max_new_tokens``). ``score_ids``:
    also return the prefill logits of these token ids. ``batch_hooks(indices) -> hook pairs``, if
    given, supplies extra hooks per batch (``indices`` = the prompts in it, in row order), e.g.
    one ablation condition per group of rows. ``progress``: a tqdm bar over batches with this label.

    Decode steps of a batch whose hooks are all :func:`graph_safe_hooks` (or none), with no hook
    left on the model, run with static shapes over the whole-length cache (:class:`_StaticDecode`)
    and, on CUDA with ``cuda_graphs=True``, are replayed as one CUDA graph; with any other hook the
    batch runs the dynamic path, every hook called at every step.
    ``score_steps``: with ``score_ids``, also return their logits at every step
    (``Generation.step_logits``).
    """
    _check_model(model)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 0.")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1.")
    rows = prompt_ids(model, prompts, bos=bos)
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i]), i))
    new_tokens: list[list[int]] = [[] for _ in rows]
    score_out = torch.empty(len(rows), len(score_ids), dtype=torch.float32) if score_ids is not None else None
    if score_steps and score_ids is None:
        raise ValueError("score_steps=True needs score_ids (the token ids whose logits to return).")
    step_out = (torch.empty(len(rows), max_new_tokens, len(score_ids), dtype=torch.float32)
                if score_steps else None)
    stops = torch.tensor(sorted(set(int(t) for t in stop_token_ids)), device=model.cfg.device) if stop_token_ids else None
    starts = range(0, len(order), batch_size)
    if progress is not None:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=progress, leave=False)
    for start in starts:
        chunk = order[start : start + batch_size]
        extra = list(batch_hooks(chunk)) if batch_hooks is not None else []
        generated, scores, steps = _generate_batch(model, [rows[i] for i in chunk], max_new_tokens,
                                                   list(fwd_hooks) + extra, stops, score_ids, cuda_graphs,
                                                   score_steps)
        for local, index in enumerate(chunk):
            new_tokens[index] = generated[local]
            if score_out is not None:
                score_out[index] = scores[local]
            if step_out is not None:
                step_out[index] = steps[local]
    texts = ([model.tokenizer.decode(t, skip_special_tokens=True) for t in new_tokens]
             if model.tokenizer is not None else [""] * len(rows))
    return Generation(new_tokens, texts, [len(r) for r in rows], score_out, step_logits=step_out)


# Hook points whose tensors span the whole cache: in static mode they would see every slot of the
# whole-length buffer instead of the keys so far, so a hook there keeps a batch dynamic.
_WHOLE_CACHE_HOOKS = ("hook_rot_k", "hook_attn_scores", "hook_pattern")


def graph_safe_hooks(hooks: Sequence[HookPair]) -> bool:
    """Whether every ``(name, fn)`` pair may run inside a static decode step and its CUDA graph.

    A hook function qualifies when it carries ``graph_safe = True``: the project sets it on hooks
    whose decode-step work is tensor operations only, on device tensors fixed for the batch, with
    nothing read back to the host and no Python state kept (``hooks.zero_dims``,
    ``hooks.replace_topk_with_mean``, ``hooks.ablate_positions`` of position 0 only (a no-op in
    every decode step), ``hooks.conditions.batched_conditions`` over such hooks).
    Anything else (every user hook) runs on the dynamic path. Hooks on whole-cache points
    (``hook_rot_k``, ``hook_attn_scores``, ``hook_pattern``) never qualify."""
    for name, fn in hooks:
        if not isinstance(name, str) or not getattr(fn, "graph_safe", False) or name.endswith(_WHOLE_CACHE_HOOKS):
            return False
    return True


def _static_decode_allowed(model, total: int, hooks: Sequence[HookPair], hooked_before: bool) -> bool:
    """Whether decode steps may run in static mode (:class:`_StaticDecode`): no hook was on the
    model before :func:`greedy_generate` attached its own, those are :func:`graph_safe_hooks`, the
    model sits on one device, and no layer has a sliding window shorter than the whole sequence
    (static mode places the query at the last slot; a window counts from there)."""
    if getattr(model.cfg, "n_devices", 1) != 1 or hooked_before or not graph_safe_hooks(hooks):
        return False
    for block in model.blocks:
        window = block.attn.settings.sliding_window
        if window is not None and window < total:
            return False
    return True


class _StaticDecode:
    """Decode steps with fixed shapes, replayed as one CUDA graph.

    Every decode forward of a batch sees the same tensors: the token buffer ``[batch, 1]``, the
    whole-length KV cache in static mode (:class:`_CacheEntry`) and an attention mask
    ``[batch, total]`` that is 1 on real prompt tokens and on slots generated so far (0 on left
    padding and future slots). Before a step the host writes the new tokens and the slot index
    (two small copies, no synchronisation); the step itself marks its slot visible, embeds,
    runs every block and unembeds the last position. Keys at absolute positions come from the
    mask (``cumsum - 1``), as in the dynamic path, so rotary angles are the same numbers.

    On CUDA (``graphs=True``) the first static step runs eagerly (it compiles kernels and grows
    the rotary table) and the second is captured into a ``torch.cuda.CUDAGraph`` that every later
    step replays: one launch instead of several thousand. Elsewhere every step runs eagerly, the
    same operations. Used only when :func:`_static_decode_allowed`: a hook runs once, at capture,
    and its kernels are replayed, so only :func:`graph_safe_hooks` may be attached; any other hook
    anywhere keeps the whole batch on the dynamic path.
    """

    def __init__(self, model, cache: _Cache, mask: torch.Tensor, prompt_length: int, graphs: bool,
                 state: GenerationState):
        self.model = model
        self.cache = cache
        self.state = state
        device = mask.device
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        cache.make_static(self.slot)
        self.visible = mask.clone()
        self.visible[:, prompt_length:] = 0
        self.tokens = torch.zeros(mask.shape[0], 1, dtype=torch.long, device=device)
        # 4-bit weights: bitsandbytes kernels are not known to be capturable; their steps stay eager.
        self.graphs = graphs and device.type == "cuda" and not getattr(model, "quantization", None)
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.out: Optional[torch.Tensor] = None
        self.eager_steps = 0

    def _forward(self) -> torch.Tensor:
        model = self.model
        self.visible.index_fill_(1, self.slot, 1)
        with _publish(model, self.state):  # graph-safe hooks read only host-fixed facts from it
            residual = _embed(model, self.tokens, checked=False)
            resid = model(residual, start_at_layer=0, stop_at_layer=model.cfg.n_layers, past_kv_cache=self.cache,
                          attention_mask=self.visible)
        return model.unembed(model.ln_final(resid[:, -1:]))[:, 0]

    def __call__(self, tokens: torch.Tensor, end: int, steps_left: int) -> torch.Tensor:
        """Logits ``[batch, vocab]`` of the step whose tokens ``[batch, 1]`` sit at slot ``end - 1``.
        The result is overwritten by the next step when a graph runs: read it before then."""
        self.tokens.copy_(tokens)
        self.slot.fill_(end - 1)
        self.state.begin, self.state.end = end - 1, end
        if self.graph is None and self.graphs and self.eager_steps >= 1 and steps_left >= 2:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.device(self.slot.device), torch.cuda.graph(graph):  # capture on the model's GPU
                self.out = self._forward()
            self.graph = graph
        if self.graph is not None:
            self.graph.replay()
            return self.out
        self.eager_steps += 1
        return self._forward()


def _generate_batch(model, rows, max_new_tokens, hooks, stops, score_ids, cuda_graphs=True, score_steps=False):
    device = model.cfg.device
    tokens, prompt_mask = _left_pad(rows, _pad_id(model), device)
    batch, length = tokens.shape
    padded = bool((prompt_mask == 0).any())
    total = length + max_new_tokens
    mask = torch.ones(batch, total, dtype=torch.long, device=device)
    mask[:, :length] = prompt_mask
    prompt = torch.zeros(batch, total, dtype=torch.bool, device=device)
    prompt[:, :length] = prompt_mask.bool()
    state = GenerationState(_positions_from_mask(mask), prompt, 0, length, prompt_end=length)
    out = torch.empty(batch, max_new_tokens, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    pad = _pad_id(model)
    scores = None
    steps = (torch.full((batch, max_new_tokens, len(score_ids)), float("nan"), dtype=torch.float32, device=device)
             if score_steps and score_ids is not None else None)
    hooked_before = _hooked(model)
    with model.hooks(fwd_hooks=hooks):
        static = max_new_tokens >= 2 and _static_decode_allowed(model, total, hooks, hooked_before)
        cache = _Cache(model, batch, total, zeroed=static)
        decode = None
        current, checked, end = tokens, True, length
        for step in range(max_new_tokens + (1 if score_ids is not None and max_new_tokens == 0 else 0)):
            begin = end - current.shape[1]
            if step >= 1 and static:
                if decode is None:
                    decode = _StaticDecode(model, cache, mask, length, cuda_graphs, state)
                last = decode(current, end, max_new_tokens - step)
            else:
                state.begin, state.end = begin, end
                with _publish(model, state):
                    residual = _embed(model, current, checked)
                    last = _last_logits(model, residual, cache, mask[:, :end] if padded else None)
            if step == 0 and score_ids is not None:
                scores = last[:, list(score_ids)].float().cpu()
            if steps is not None and step < max_new_tokens:
                steps[:, step] = last[:, list(score_ids)].float()
            if step >= max_new_tokens:
                break
            chosen = last.argmax(dim=-1)
            if stops is not None:
                chosen = torch.where(finished, torch.full_like(chosen, pad), chosen)
                finished |= torch.isin(chosen, stops)
            out[:, step] = chosen
            if stops is not None and bool(finished.all()):
                out = out[:, : step + 1]
                break
            current, checked, end = chosen[:, None], False, end + 1
        del decode
    model.position_offset = 0
    result = out.cpu().tolist()
    if stops is not None:
        stop_set = set(stops.tolist())
        for i, row in enumerate(result):
            for j, token in enumerate(row):
                if token in stop_set:
                    result[i] = row[: j + 1]
                    break
    return result, scores, (steps.cpu() if steps is not None else None)
