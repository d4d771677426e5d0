"""Experiments 8-9: what each layer writes, attention vs MLP, and the size of Q and K.

Per text and layer, token means (over all T positions, BOS included) of L2 norms, float32:

* ``attn_norm`` = mean_t ||hook_attn_out[t]||, ``mlp_norm`` = mean_t ||hook_mlp_out[t]||;
* ``attn_fraction`` = attn_norm / (attn_norm + mlp_norm);
* ``q_norm``, ``k_norm``: mean_t of the norm of ``hook_q`` / ``hook_k`` (the raw projections, all
  heads concatenated, as the study measured); ``q_norm_normed``, ``k_norm_normed``: the same after
  DroPE's q/k RMSNorm (``hook_q_normed`` / ``hook_k_normed``; equal to the raw ones for models
  without q/k norms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pandas as pd
import torch

from drope_lens.hooks import capture_token_mean_norm
from drope_lens.engine.results import RunStore
from drope_lens.measurement.texts import TextsLike

from drope_lens.measurement.tokens import BosPolicy
from drope_lens.engine.measure import Batch, Measurement, TextMeasurementConfig, measure, per_layer_frame
from drope_lens.measurement.summaries import compare_variants, summarize

EXPERIMENT = "layer_balance"
#: column -> hook name pattern
HOOKS = {"attn_norm": "blocks.{}.hook_attn_out", "mlp_norm": "blocks.{}.hook_mlp_out",
         "q_norm": "blocks.{}.attn.hook_q", "k_norm": "blocks.{}.attn.hook_k",
         "q_norm_normed": "blocks.{}.attn.hook_q_normed", "k_norm_normed": "blocks.{}.attn.hook_k_normed"}
VALUES = ("attn_norm", "mlp_norm", "attn_fraction", "q_norm", "k_norm", "q_norm_normed", "k_norm_normed")


@dataclass(frozen=True)
class LayerBalanceConfig(TextMeasurementConfig):
    """Tokens per text, texts per forward, position-0 policy (see :class:`TextMeasurementConfig`)."""


def _hooks(model, captured: dict):
    names = [pattern.format(layer) for pattern in HOOKS.values() for layer in range(model.cfg.n_layers)]
    return capture_token_mean_norm(captured, names)


def measurement(config: LayerBalanceConfig) -> Measurement:
    def rows(model, batch: Batch) -> pd.DataFrame:
        n_layers = model.cfg.n_layers
        columns = {column: torch.stack([batch.captured[pattern.format(layer)] for layer in range(n_layers)])
                   for column, pattern in HOOKS.items()}  # [layer, batch]
        columns["attn_fraction"] = columns["attn_norm"] / (columns["attn_norm"] + columns["mlp_norm"])
        return per_layer_frame(batch.samples, {name: columns[name] for name in VALUES})

    return Measurement(EXPERIMENT, _hooks, rows, config=config)


def run(
    model,
    texts: TextsLike,
    *,
    max_tokens: int = 512,
    batch_size: int = 10,
    bos: BosPolicy = "checkpoint",
    store: Optional[RunStore] = None,
    show_progress: bool = True,
) -> pd.DataFrame:
    """Columns: ``model``, ``variant``, ``sample``, ``text``, ``register``, ``n_tokens``, ``layer``,
    ``attn_norm``, ``mlp_norm``, ``attn_fraction``, ``q_norm``, ``k_norm``, ``q_norm_normed``,
    ``k_norm_normed`` (see module doc)."""
    config = LayerBalanceConfig(max_tokens, batch_size, bos)
    return measure(model, texts, [measurement(config)], max_tokens=max_tokens, bos=bos, batch_size=batch_size,
                   store=store, show_progress=show_progress)[EXPERIMENT]


def per_layer(df: pd.DataFrame) -> pd.DataFrame:
    """Per layer, every value over texts (mean, std, 95% bootstrap CI)."""
    return summarize(df, list(VALUES), by=["layer"])


def compare(df: pd.DataFrame, quantity: str = "attn_fraction") -> pd.DataFrame:
    """RoPE vs DroPE per layer for one quantity."""
    layers = per_layer(df)
    return compare_variants(layers[layers["quantity"] == quantity], by=["layer"])


from drope_lens.engine.options import add_text_arguments as add_cli_arguments  # noqa: E402  (options importable without torch)


def run_cli(ctx) -> int:
    from drope_lens.engine.runner import print_table

    from drope_lens.engine.measure import run_cli_measurement

    args = ctx.args
    config = LayerBalanceConfig(args.max_tokens, args.batch_size, args.bos)
    df = run_cli_measurement(ctx, EXPERIMENT, config, lambda model, texts, store: run(
        model, texts, max_tokens=config.max_tokens, batch_size=config.batch_size, bos=config.bos, store=store))
    print_table("Attention fraction per layer (attn_norm / (attn_norm + mlp_norm), token means; 95% CI over texts):",
                compare(df, "attn_fraction"))
    for quantity in ("attn_norm", "mlp_norm", "q_norm", "k_norm"):
        print_table(f"{quantity} per layer (token-mean L2 norm):", compare(df, quantity))
    return 0
