"""Experiment 5 (statistics part): what each head writes from the BOS token.

Per text, layer and head:

* ``v_norm_bos`` = ||hook_v[0, kv(h)]||_2, the value vector at position 0 of the key/value head
  that query head h reads (h itself without grouped-query attention), float32;
* ``bos_mass`` = mean over query positions t >= 1 of the attention on position 0 (the model's real
  attention, streamed; the same number as Exp 4's sink score);
* ``write`` = ``bos_mass * v_norm_bos``: the mean norm of what the head adds from BOS before W_O.

Per text and layer also the BOS residual norms (``bos_norm`` = ||resid_post[0]||, ``bos_norm_pre``
= ||resid_pre[0]||, ``bos_ratio`` = bos_norm / mean_{t>=1} ||resid_post[t]||), so that the spike
layer is reported under every rule of :mod:`drope_lens.measurement.analysis` next to where BOS is written.

Max-write layer of a text: the layer with the largest head-mean ``write``. Layers are categories:
summarised by mode and distribution over texts (:func:`layer_table`), never by a mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pandas as pd
import torch

from drope_lens.measurement import analysis
from drope_lens.hooks.capture import capture_bos_norms
from drope_lens.engine.results import RunStore
from drope_lens.measurement.texts import TextsLike

from drope_lens.measurement.tokens import BosPolicy
from drope_lens.engine.measure import ANY_WINDOW, Batch, Measurement, measure, per_head_frame, TextMeasurementConfig
from drope_lens.measurement.summaries import compare_variants, summarize

EXPERIMENT = "bos_write"


@dataclass(frozen=True)
class BosWriteConfig(TextMeasurementConfig):
    """Tokens per text, texts per forward, position-0 policy (see :class:`TextMeasurementConfig`)."""


def _v_hooks(model, captured: dict):
    def fn(v, hook):
        captured.setdefault("v", {})[hook.layer()] = torch.linalg.vector_norm(v[:, 0], dim=-1, dtype=torch.float32)  # [batch, kv_head]
        return None

    return capture_bos_norms(captured.setdefault("resid", {}), model.cfg.n_layers) + [
        (f"blocks.{layer}.attn.hook_v", fn) for layer in range(model.cfg.n_layers)]


def measurement(config: BosWriteConfig) -> Measurement:
    def rows(model, batch: Batch) -> pd.DataFrame:
        n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
        v = torch.stack([batch.captured["v"][layer] for layer in range(n_layers)])  # [layer, batch, kv]
        v = v.repeat_interleave(n_heads // v.shape[-1], dim=-1)  # query head h reads kv head h // rep
        mass = torch.stack([batch.attention[layer].sink_score for layer in range(n_layers)])
        columns = {"v_norm_bos": v, "bos_mass": mass, "write": mass * v}
        for name in ("bos_norm", "bos_norm_pre", "bos_ratio"):
            per_layer = torch.stack([batch.captured["resid"][layer][name] for layer in range(n_layers)])
            columns[name] = per_layer[..., None].expand(-1, -1, n_heads)
        return per_head_frame(batch.samples, columns)

    return Measurement(EXPERIMENT, _v_hooks, rows, attention=ANY_WINDOW, config=config)


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
    ``head``, ``v_norm_bos``, ``bos_mass``, ``write``, ``bos_norm``, ``bos_norm_pre``, ``bos_ratio``
    (the last three per layer, repeated on its heads; see module doc)."""
    config = BosWriteConfig(max_tokens, batch_size, bos)
    return measure(model, texts, [measurement(config)], max_tokens=max_tokens, bos=bos, batch_size=batch_size,
                   store=store, show_progress=show_progress)[EXPERIMENT]


def per_layer(df: pd.DataFrame) -> pd.DataFrame:
    """Per layer: head-mean V norm at BOS, BOS mass and write, over texts (mean, std, 95% CI)."""
    return summarize(df, ["v_norm_bos", "bos_mass", "write"], by=["layer"])


def max_write_layers(df: pd.DataFrame, spike_ratio: float = analysis.SPIKE_THRESHOLD) -> pd.DataFrame:
    """Per text: the layer whose head-mean write is largest and that write, and (when the results
    hold BOS norms) the spike layer under each rule (``spike_layer_<rule>``, ``<NA>`` = no spike)."""
    layer_means = df.groupby(["model", "variant", "sample", "layer"])["write"].mean().reset_index()
    best = layer_means.loc[layer_means.groupby(["model", "variant", "sample"])["write"].idxmax()]
    best = best.rename(columns={"layer": "max_write_layer", "write": "max_write"}).reset_index(drop=True)
    if "bos_ratio" in df.columns:
        columns = [c for c in ("bos_ratio", "bos_norm", "bos_norm_pre") if c in df.columns]
        layers = df.groupby(["model", "variant", "sample", "layer"])[columns].first().reset_index()
        best = best.merge(analysis.spike_table(layers, threshold=spike_ratio), on=["model", "variant", "sample"])
    return best


def overall(df: pd.DataFrame) -> pd.DataFrame:
    """Per model: mean over layers and heads of V norm, mass and write, and the largest head-mean
    write of a text (mean, std, 95% CI over texts). Layers are not averaged: see :func:`layer_table`."""
    per_text = df.groupby(["model", "variant", "sample"])[["v_norm_bos", "bos_mass", "write"]].mean().reset_index()
    table = per_text.merge(max_write_layers(df), on=["model", "variant", "sample"])
    return summarize(table, ["v_norm_bos", "bos_mass", "write", "max_write"])


def layer_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per model: the max-write layer and the spike layer under each rule as categories: mode and
    distribution over texts (see :func:`drope_lens.measurement.analysis.layer_summary`)."""
    table = max_write_layers(df)
    columns = ["max_write_layer"] + [c for c in table.columns if c.startswith("spike_layer_")]
    return analysis.layer_summary(table, columns)


def compare(df: pd.DataFrame) -> pd.DataFrame:
    return compare_variants(overall(df))


def compare_layers(df: pd.DataFrame) -> pd.DataFrame:
    """RoPE vs DroPE: each layer quantity as ``mode (distribution over texts)``."""
    return analysis.compare_layers(layer_table(df))


from drope_lens.engine.options import add_text_arguments as add_cli_arguments  # noqa: E402  (options importable without torch)


def run_cli(ctx) -> int:
    from drope_lens.engine.runner import print_table

    from drope_lens.engine.measure import run_cli_measurement

    args = ctx.args
    config = BosWriteConfig(args.max_tokens, args.batch_size, args.bos)
    df = run_cli_measurement(ctx, EXPERIMENT, config, lambda model, texts, store: run(
        model, texts, max_tokens=config.max_tokens, batch_size=config.batch_size, bos=config.bos, store=store))
    layers = per_layer(df)
    print_table("Effective BOS write per layer (head mean of bos_mass x ||v[0]||; mean, 95% CI over texts):",
                compare_variants(layers[layers["quantity"] == "write"], by=["layer"]))
    print_table("Overall (means over layers and heads; max_write: the largest head-mean write; mean, 95% CI "
                "over texts):", compare(df))
    print_table("Layers are categories: mode (distribution over texts; none = no spike). max_write_layer: layer "
                "of the largest head-mean write; spike_layer_<rule>: argmax (the study's), first_above 2, jump:",
                compare_layers(df))
    return 0
