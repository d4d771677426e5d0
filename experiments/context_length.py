"""Experiment 10: passkey/RULER retrieval against context length, error types, verification.

A cell is (length, format, depth); it holds ``n`` seeded trials (see :mod:`drope_lens.measurement.passkey`):
prompts of ``length`` tokens (+-1%, the model's own tokens), the needle at ``depth`` of the filler
(a grid value, or uniform in the middle half when ``depths=None``).

- Retrieval: greedy decoding (``max_new_tokens``, 20 as the study, stopping at EOS), the answer
  categorised by :func:`categorize`; ``correct`` = category ``exact``.
- Verification (``verify=True``): ``Remember the magic number ... Is {X} the magic number from the
  text? Answer Yes or No:`` around the same needle and depth, for X = the key and 3 near-misses
  (one digit changed); P(Yes) = softmax over the logits of the first tokens of " Yes" and " No" at
  the last prompt position (of "Yes"/"No" if the space is a token of its own: :func:`yes_no_tokens`). ``rank_correct``: the key has the highest P(Yes) (a tie is wrong).

``run`` returns one row per trial. Long prompts go through :func:`drope_lens.measurement.generation.greedy_generate`
(KV cache, SDPA attention: no ``[T, T]`` tensor unless a pattern hook asks for one); the 4 verification
prompts of a trial share their context, which runs once (:func:`drope_lens.measurement.generation.score_shared_prefix`); a RoPE model past
its trained context warns once and runs. Optional ``scaling``: the attention logits of ``scaling_layers``
multiplied by ``1 + scaling * ln(max(1, L / trained_context))`` for a prompt of L tokens (log-length
softmax scaling at inference; identity within the trained context).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import pandas as pd
import torch

from drope_lens.measurement.generation import greedy_generate, prompt_ids, score_shared_prefix
from drope_lens.measurement.passkey import (CATEGORIES, FORMATS, PromptError, Trial, answer_token, categorize,  # noqa: F401
                                check_format, cell_trials, extract_answer, make_trials, mean_interval, token_counter,
                                wilson_interval, yes_no_tokens)
from drope_lens.engine.results import RunStore
from drope_lens.measurement.summaries import trial_accuracy as accuracy  # noqa: F401  (importable here as before)
from drope_lens.measurement.summaries import trial_error_shares as error_shares, trial_verification as verification  # noqa: F401

from drope_lens.engine.options import DEPTH_GRID, REAL_MODEL_LENGTHS  # noqa: F401  (the defaults of the CLI options)
from drope_lens.engine.sweep import Planned, bind_store, run_sweep, unit_prefix
from drope_lens.measurement.tokens import BosPolicy, check_bos, model_name, model_variant

EXPERIMENT = "context_length"
CLI_TAKES_TEXTS = False
TOY_MULTIPLES = (0.5, 1, 2, 4, 8)

__all__ = ["ContextLengthConfig", "run", "categorize", "accuracy", "error_shares", "verification"]


@dataclass(frozen=True)
class ContextLengthConfig:
    lengths: tuple[int, ...]
    formats: tuple[str, ...] = FORMATS
    n: int = 20
    depths: Optional[tuple[float, ...]] = None
    seed: int = 0
    max_new_tokens: int = 20
    verify: bool = True
    key_divisor: Optional[int] = None  # keys only among multiples of this (the toy trains on none of 7)
    batch_tokens: int = 65_536  # prompt tokens per batch (rows = max(1, batch_tokens // length))
    scaling: float = 0.0
    scaling_layers: Optional[tuple[int, ...]] = None  # None: every layer
    bos: BosPolicy = "checkpoint"

    def __post_init__(self) -> None:
        check_bos(self.bos)
        if not self.lengths or any(not isinstance(x, int) or x < 8 for x in self.lengths):
            raise ValueError(f"lengths={self.lengths}: need positive integers of at least 8 tokens.")
        if not self.formats:
            raise ValueError(f"formats={self.formats}: allowed values are {list(FORMATS)}.")
        for fmt in self.formats:
            check_format(fmt)
        if self.n < 1:
            raise ValueError(f"n={self.n}: need at least 1 trial per cell.")
        if self.depths is not None and (not self.depths or any(not 0 <= d <= 1 for d in self.depths)):
            raise ValueError(f"depths={self.depths}: need fractions within 0..1 (or None: uniform in the middle half).")
        if self.max_new_tokens < 1 or self.batch_tokens < 1 or self.scaling < 0:
            raise ValueError("max_new_tokens and batch_tokens must be >= 1, scaling >= 0.")
        if self.key_divisor is not None and self.key_divisor < 1:
            raise ValueError(f"key_divisor={self.key_divisor}: must be a positive integer or None.")


def scaling_hooks(model, length: int, beta: float, layers: Optional[Sequence[int]]) -> list:
    """Log-length softmax scaling: ``hook_rot_q`` (q as it enters q.k, every variant) of ``layers``
    times ``1 + beta * ln(max(1, length / trained_context))``; no hooks when that factor is 1."""
    trained = int(getattr(model.lens, "max_position_embeddings", 0) or 0)
    factor = 1.0 + beta * math.log(max(1.0, length / trained)) if trained else 1.0
    if factor == 1.0:
        return []
    chosen = range(model.cfg.n_layers) if layers is None else layers
    bad = [layer for layer in chosen if not 0 <= layer < model.cfg.n_layers]
    if bad:
        raise ValueError(f"scaling_layers {bad}: the model has layers 0..{model.cfg.n_layers - 1}.")
    return [(f"blocks.{layer}.attn.hook_rot_q", lambda q, hook: q * factor) for layer in chosen]


def _cell_rows(model, trials: list[Trial], config: ContextLengthConfig, yes_no: tuple[int, int]) -> pd.DataFrame:
    length = trials[0].length
    hooks = scaling_hooks(model, length, config.scaling, config.scaling_layers)
    rows = max(1, config.batch_tokens // length)
    eos = model.tokenizer.eos_token_id
    out = greedy_generate(model, [t.prompt for t in trials], config.max_new_tokens, fwd_hooks=hooks,
                          stop_token_ids=[eos] if eos is not None else None, batch_size=rows, bos=config.bos)
    frame = pd.DataFrame({
        "model": model_name(model), "variant": model_variant(model), "length": length,
        "format": [t.format for t in trials], "depth": [t.depth for t in trials],
        "needle_at": [t.needle_at for t in trials],
        "depth_mode": "uniform" if config.depths is None else "grid", "trial": [t.trial for t in trials],
        "prompt_tokens": out.prompt_lengths, "key": [t.needle.key for t in trials],
        "name": [t.needle.name for t in trials], "generated": out.texts,
        "answer": [extract_answer(g, t.needle.key) or "" for g, t in zip(out.texts, trials)],
        "category": [categorize(g, t.needle.key) for g, t in zip(out.texts, trials)],
    })
    frame["correct"] = frame["category"] == "exact"
    if config.verify:
        # the candidates' prompts share everything up to the question: that prefix runs once per trial
        groups = [prompt_ids(model, t.verification_prompts(), bos=config.bos) for t in trials]  # tokenised once
        scores = score_shared_prefix(model, groups, list(yes_no), fwd_hooks=hooks, batch_size=rows, bos=config.bos)
        p_yes = torch.softmax(scores, dim=-1)[..., 0]  # [trial, candidate]
        frame["verify_tokens"] = [max(len(ids) for ids in g) for g in groups]
        frame["p_yes_key"] = p_yes[:, 0].tolist()
        frame["p_yes_near"] = p_yes[:, 1:].mean(dim=1).tolist()
        frame["p_yes_candidates"] = p_yes.tolist()
        frame["rank_correct"] = (p_yes[:, 0] > p_yes[:, 1:].max(dim=1).values).tolist()
    return frame


def run(
    model,
    lengths: Sequence[int],
    formats: Sequence[str] = FORMATS,
    n: int = 20,
    depths: Optional[Sequence[float]] = None,
    seed: int = 0,
    *,
    max_new_tokens: int = 20,
    verify: bool = True,
    key_divisor: Optional[int] = None,
    batch_tokens: int = 65_536,
    scaling: float = 0.0,
    scaling_layers: Optional[Sequence[int]] = None,
    bos: BosPolicy = "checkpoint",
    skip_too_short: bool = False,
    store: Optional[RunStore] = None,
    show_progress: bool = True,
) -> pd.DataFrame:
    """Exp 10 grid for one model: one row per (length, format, depth, trial).

    Columns: ``model``, ``variant``, ``length`` (target tokens), ``format``, ``depth`` (asked share of filler
    before the needle), ``needle_at`` (actual share: nearest boundary between filler repeats), ``depth_mode`` (``grid``/``uniform``), ``trial``, ``prompt_tokens`` (actual),
    ``key``, ``name`` (RULER label), ``generated`` (decoded new tokens, up to EOS), ``answer`` (the
    number extracted), ``category``, ``correct``; with ``verify``: ``verify_tokens``, ``p_yes_key``,
    ``p_yes_near`` (mean over the 3 near-misses), ``p_yes_candidates``, ``rank_correct``. With
    ``store``, each cell is saved as it finishes and cells already saved are loaded, not rerun.
    A length too short for a format's template, needle and question raises :class:`PromptError`,
    or with ``skip_too_short`` leaves that cell out with a warning.
    """
    config = ContextLengthConfig(tuple(int(x) for x in lengths), tuple(formats), n,
                                 None if depths is None else tuple(float(d) for d in depths), seed, max_new_tokens,
                                 verify, key_divisor, batch_tokens, float(scaling),
                                 None if scaling_layers is None else tuple(scaling_layers), bos)
    store = bind_store(store, model, EXPERIMENT, config, skip_too_short=bool(skip_too_short))
    count = token_counter(model, bos)
    yes_no = yes_no_tokens(model.tokenizer)
    if verify and yes_no[0] == yes_no[1]:
        raise ValueError(f"' Yes' and ' No' begin with the same token ({yes_no[0]}) for {model_name(model)}; "
                         "verification cannot tell them apart (pass verify=False).")
    cells = [(length, fmt, depth) for length in config.lengths for fmt in config.formats
             for depth in (config.depths or (None,))]
    # Every cell is one unit and one planned batch of the engine (drope_lens.engine.sweep): cells
    # are shared among ranks under torchrun (balanced by prompt tokens) and resumed from the store.
    # Trials are made for every cell first (cheap), so that a too-short cell is left out on every rank.
    unit = lambda length, fmt, depth: f"{unit_prefix(model)}-{length}-{fmt}-{'uniform' if depth is None else depth}"  # noqa: E731
    planned: dict[str, list[Trial]] = {}
    for length, fmt, depth in cells:
        if store is not None and store.has(unit(length, fmt, depth)):
            planned[unit(length, fmt, depth)] = []  # loaded, not rerun: its trials are not needed
            continue
        trials = cell_trials(fmt, length, depth, n, seed, count, key_divisor, verify, skip_too_short, stacklevel=2)
        if trials is not None:
            planned[unit(length, fmt, depth)] = trials
    names = list(planned)

    def step(k: int, done: frozenset):
        frame = _cell_rows(model, planned[names[k]], config, yes_no)
        yield lambda: {names[k]: frame}

    costs = [float(length * n) for length, fmt, depth in cells if unit(length, fmt, depth) in planned]
    parts = run_sweep([Planned((name,), cost) for name, cost in zip(names, costs)], store, step,
                      label=f"context length {model_variant(model)}", device=model.cfg.device,
                      show_progress=show_progress)
    frames = [parts[name] for name in names]
    df = pd.concat(frames, ignore_index=True)
    if "p_yes_candidates" in df:
        df["p_yes_candidates"] = [list(map(float, v)) for v in df["p_yes_candidates"]]
    return df


# ------------------------------------------------------------------------------------------
# Summaries: DataFrame in, DataFrame out.
# ------------------------------------------------------------------------------------------
def compare(df: pd.DataFrame) -> pd.DataFrame:
    """Accuracy by length x format, RoPE and DroPE side by side (``acc_rope``/``acc_drope`` with intervals)."""
    table = accuracy(df)
    table["cell"] = [f"{a:.0%} [{lo:.0%}, {hi:.0%}]" for a, lo, hi in zip(table.accuracy, table.low, table.high)]
    wide = table.pivot_table(index=["format", "length"], columns="variant", values="cell", aggfunc="first")
    return wide.reset_index().rename_axis(columns=None)


# ------------------------------------------------------------------------------------------
# Command line: ``drope-lens run context-length``.
# ------------------------------------------------------------------------------------------
from drope_lens.engine.options import context_length as add_cli_arguments  # noqa: E402  (options importable without torch)


def run_cli(ctx) -> int:
    from drope_lens.engine.results import model_identity
    from drope_lens.engine.runner import print_table, trained_context

    args = ctx.args
    lengths = args.lengths
    if lengths is None:
        if ctx.is_toy:
            trained = min(c for c in (trained_context(s) for s in ctx.sources) if c)
            lengths = [int(m * trained) for m in TOY_MULTIPLES]
        else:
            lengths = list(REAL_MODEL_LENGTHS)
    divisor = args.key_divisor if args.key_divisor is not None else (7 if ctx.is_toy else None)
    config = ContextLengthConfig(tuple(lengths), tuple(args.formats), args.n,
                                 None if args.depths is None else tuple(args.depths), args.seed, args.max_new_tokens,
                                 not args.no_verify, divisor, args.batch_tokens, args.scaling,
                                 None if args.scaling_layers is None else tuple(args.scaling_layers), args.bos)
    kwargs = {k: v for k, v in asdict(config).items() if k not in ("lengths", "formats", "n", "depths", "seed")}
    kwargs["skip_too_short"] = args.lengths is None  # the default toy grid starts below RULER's template
    store = ctx.store(EXPERIMENT, config, {"skip_too_short": kwargs["skip_too_short"]})
    frames, identities = [], []
    for model in ctx.models():
        frames.append(run(model, config.lengths, config.formats, config.n, config.depths, config.seed,
                          store=store, **kwargs))
        identities.append(model_identity(model))
    ctx.finalize(store, frames, {"config": asdict(config), "seed": config.seed}, identities)
    df = pd.concat(frames, ignore_index=True)
    for fmt in config.formats:  # one table per format: formats are never averaged together
        if (df.format == fmt).any():
            print_table(f"Passkey accuracy, {fmt} format, by length (exact match, Wilson 95% interval):",
                        compare(df[df.format == fmt]).drop(columns="format"))
    shares = error_shares(df)
    print_table("Answer categories (share of trials):", shares.round(3))
    if config.verify:
        print_table("Verification: P(Yes) for the key vs near-misses, discrimination, ranking (95% intervals):",
                    verification(df).round(3))
    return 0
