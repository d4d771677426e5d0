"""Experiment 4 (statistics part): attention sinks, BOS norm, spike layer, representation entropy.

Per text, layer and head (attention from :func:`drope_lens.hooks.capture_attention_stats`, i.e. the
model's real attention, streamed):

* ``sink_score`` = mean over query positions t >= 1 of the attention on position 0 (BOS);
  ``is_sink`` = ``sink_score >= tau`` (tau = 0.3). Sink rate = share of sink heads.

Per text and layer (``hook_resid_post``, float32):

* ``bos_norm`` = ||resid_post[0]||_2; ``bos_norm_pre`` = ||resid_pre[0]||_2 (entering the block);
  ``bos_ratio`` = bos_norm / mean over t >= 1 of ||resid_post[t]||.
  Spike layer of a text under each rule of :mod:`drope_lens.measurement.analysis` (``argmax`` of the ratio, the
  study's and the default; ``first_above`` ``spike_ratio`` (2); ``jump``, the block that raises the
  BOS norm most), all three reported per text and on each model's mean profile; a layer is
  summarised by its mode and distribution over texts, never a mean ("none": no spike).
* Representation entropy of the ``[T, d_model]`` matrix with singular values s (Queipo-de-Llano et
  al. 2025), two normalisations, each labelled: ``repr_entropy`` with p = s^2 / sum s^2,
  H = -sum p ln p (nats; the default); ``repr_entropy_norm`` with p = s / sum s, H / ln(rank)
  (in [0, 1]; rank = number of s above ``max(s) * max(T, d) * eps_float32``).

``run`` returns one row per (text, layer, head) with the layer's values repeated on its heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pandas as pd
import torch

from drope_lens.measurement import analysis
from drope_lens.hooks.capture import capture_bos_norms
from drope_lens.engine.results import RunStore
# representation entropy plumbing (importable here as before)
from drope_lens.measurement.entropy import (DEFER_GRAM_BYTES, ENTROPY_COLUMNS, DeferredEntropies,  # noqa: F401
                                          entropies_from_gram, entropies_from_spectrum, entropy_table,
                                          gram_matrix, per_head_entropies, representation_entropy)
from drope_lens.measurement.texts import TextsLike
from drope_lens.measurement.tokens import BosPolicy, check_bos
from drope_lens.engine.measure import ANY_WINDOW, Batch, Measurement, filled_later, measure, per_head_columns
from drope_lens.measurement.summaries import compare_variants, summarize

EXPERIMENT = "sinks"


@dataclass(frozen=True)
class SinksConfig:
    tau: float = 0.3
    spike_ratio: float = 2.0
    max_tokens: int = 512
    batch_size: int = 10
    bos: BosPolicy = "checkpoint"

    def __post_init__(self) -> None:
        check_bos(self.bos)
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau={self.tau}: the sink threshold must be in (0, 1].")
        if not self.spike_ratio > 0:
            raise ValueError(f"spike_ratio={self.spike_ratio}: must be positive.")
        if self.max_tokens < 2 or self.batch_size < 1:
            raise ValueError(f"max_tokens={self.max_tokens}, batch_size={self.batch_size}: need >= 2 and >= 1.")


#: key of the :class:`~drope_lens.measurement.entropy.DeferredEntropies` in the captured dict (CUDA)
DEFERRED = "repr_deferred"


def _resid_hooks(model, captured: dict):
    # On CUDA each layer's Gram matrix waits in one DeferredEntropies, launched by the engine after the
    # captures' host copy: one batched solve of all layers (its cost is per step, not per matrix) while
    # the host builds the frames. On the CPU (LAPACK, matrix by matrix) and for large matrices: at once.
    n_layers = model.cfg.n_layers

    def fn(x, hook):
        shape = tuple(x.shape[-2:])
        m = min(shape)
        if _defer(x, m, n_layers):  # written into the layers' one buffer: solved there, no concatenation
            deferred = captured.setdefault(DEFERRED, DeferredEntropies(n_layers))
            deferred.add(hook.layer(), gram_matrix(x, out=deferred.slot(x.shape[0], m, x.device)), shape)
        else:
            gram = gram_matrix(x)
            slot = captured.setdefault(hook.layer(), {})
            slot["repr_entropy"], slot["repr_entropy_norm"] = entropies_from_gram(gram, *shape)
        return None

    return capture_bos_norms(captured, n_layers) + [
        (f"blocks.{layer}.hook_resid_post", fn) for layer in range(n_layers)]


def _defer(x: torch.Tensor, m: int, n_layers: int) -> bool:
    """Whether a layer's ``[batch, m, m]`` float64 Gram matrix of ``x`` waits for the batched solve after
    the forward (CUDA, and all layers' matrices within :data:`DEFER_GRAM_BYTES`)."""
    return x.is_cuda and x.shape[0] * m * m * 8 * n_layers <= DEFER_GRAM_BYTES


def measurement(config: SinksConfig) -> Measurement:
    def rows(model, batch: Batch) -> pd.DataFrame:
        n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
        sink = torch.stack([batch.attention[layer].sink_score for layer in range(n_layers)])  # [layer, batch, head]
        columns = {"sink_score": sink}
        for name in ("bos_norm", "bos_norm_pre", "bos_ratio"):
            per_layer = torch.stack([batch.captured[layer][name] for layer in range(n_layers)])  # [layer, batch]
            columns[name] = per_layer[..., None].expand(-1, -1, n_heads)
        frame = per_head_columns(batch.samples, columns)
        frame = {**{k: frame[k] for k in ("sample", "layer", "head", "sink_score")},
                 "is_sink": frame["sink_score"] >= config.tau, **frame}
        if DEFERRED not in batch.captured:
            solved = {layer: tuple(batch.captured[layer][name] for name in ENTROPY_COLUMNS) for layer in range(n_layers)}
            return pd.DataFrame({**frame, **per_head_entropies(entropy_table(solved, n_layers), n_heads)})
        # on CUDA the spectra are still being solved: filled once every frame of the forward is built
        later = filled_later(batch, ENTROPY_COLUMNS, len(frame["sample"]),
                             lambda: per_head_entropies(batch.captured[DEFERRED].entropy_table(n_layers), n_heads))
        return pd.DataFrame({**frame, **later})

    return Measurement(EXPERIMENT, _resid_hooks, rows, attention=ANY_WINDOW, config=config)


def run(
    model,
    texts: TextsLike,
    *,
    tau: float = 0.3,
    spike_ratio: float = 2.0,
    max_tokens: int = 512,
    batch_size: int = 10,
    bos: BosPolicy = "checkpoint",
    store: Optional[RunStore] = None,
    show_progress: bool = True,
) -> pd.DataFrame:
    """Sink scores per head and BOS norm / ratio / representation entropy per layer (module doc).

    Columns: ``model``, ``variant``, ``sample``, ``text``, ``register``, ``n_tokens``, ``layer``,
    ``head``, ``sink_score``, ``is_sink``, ``bos_norm``, ``bos_norm_pre``, ``bos_ratio``, ``repr_entropy``,
    ``repr_entropy_norm``. Texts are anything :func:`~drope_lens.measurement.texts.as_texts` accepts.
    """
    config = SinksConfig(tau, spike_ratio, max_tokens, batch_size, bos)
    return measure(model, texts, [measurement(config)], max_tokens=max_tokens, bos=bos, batch_size=batch_size,
                   store=store, show_progress=show_progress)[EXPERIMENT]


# ------------------------------------------------------------------------------------------
# Summaries: DataFrame in, DataFrame out.
# ------------------------------------------------------------------------------------------
LAYER_VALUES = ("bos_norm", "bos_norm_pre", "bos_ratio", "repr_entropy", "repr_entropy_norm")
SPIKE_COLUMNS = tuple(f"spike_layer_{rule}" for rule in analysis.SPIKE_RULES)
#: Per-text quantities that are layers (categories: mode and distribution, never a mean).
LAYER_QUANTITIES = (*SPIKE_COLUMNS, "peak_bos_norm_layer", "min_repr_entropy_layer")


def layer_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, text, layer) with the sink rate of that layer."""
    keys = ["model", "variant", "sample", "layer"]
    values = {name: (name, "first") for name in LAYER_VALUES if name in df.columns}
    out = df.groupby(keys).agg(sink_rate=("is_sink", "mean"), **values)
    return out.reset_index()


def per_layer(df: pd.DataFrame) -> pd.DataFrame:
    """Per layer: sink rate, BOS norm, BOS ratio and both representation entropies over texts."""
    return summarize(layer_rows(df), ["sink_rate", "bos_norm", "bos_ratio", "repr_entropy", "repr_entropy_norm"],
                     by=["layer"])


def spike_layers(df: pd.DataFrame, spike_ratio: float = analysis.SPIKE_THRESHOLD) -> pd.DataFrame:
    """Per text: the spike layer under each rule (``spike_layer_argmax``, ``spike_layer_first_above``
    with threshold ``spike_ratio``, ``spike_layer_jump``; nullable integers, ``<NA>`` = no spike, see
    :func:`drope_lens.measurement.analysis.spike_layer`), the peak BOS norm and its layer, the minimum
    repr_entropy and its layer."""
    layers = layer_rows(df)
    table = analysis.spike_table(layers, threshold=spike_ratio)
    rows = []
    for (model, variant, sample), frame in layers.groupby(["model", "variant", "sample"]):
        rows.append({"model": model, "variant": variant, "sample": sample,
                     "peak_bos_norm": float(frame["bos_norm"].max()),
                     "peak_bos_norm_layer": int(frame.loc[frame["bos_norm"].idxmax(), "layer"]),
                     "min_repr_entropy": float(frame["repr_entropy"].min()),
                     "min_repr_entropy_layer": int(frame.loc[frame["repr_entropy"].idxmin(), "layer"])})
    return table.merge(pd.DataFrame(rows), on=["model", "variant", "sample"])


def profile_spike_layers(df: pd.DataFrame, spike_ratio: float = analysis.SPIKE_THRESHOLD) -> pd.DataFrame:
    """Per model: the spike layer under each rule of the model's mean profile over texts (mean BOS
    ratio and norms per layer): how the ablation conditions choose their layer."""
    profile = layer_rows(df).groupby(["model", "variant", "layer"])[
        [c for c in ("bos_ratio", "bos_norm", "bos_norm_pre") if c in df.columns]].mean().reset_index()
    return analysis.spike_table(profile, keys=("model", "variant"), threshold=spike_ratio)


def overall(df: pd.DataFrame, spike_ratio: float = analysis.SPIKE_THRESHOLD) -> pd.DataFrame:
    """Per model: overall sink rate, peak BOS norm, min entropy (mean, std, 95% CI over texts).
    Layers are not averaged: see :func:`layer_table`."""
    per_text = layer_rows(df).groupby(["model", "variant", "sample"])["sink_rate"].mean().rename("sink_rate_overall")
    table = spike_layers(df, spike_ratio).merge(per_text.reset_index(), on=["model", "variant", "sample"])
    return summarize(table, ["sink_rate_overall", "peak_bos_norm", "min_repr_entropy"])


def layer_table(df: pd.DataFrame, spike_ratio: float = analysis.SPIKE_THRESHOLD) -> pd.DataFrame:
    """Per model and layer quantity (spike layer under each rule, peak-BOS-norm layer, min-entropy
    layer): mode and distribution over texts ("none": no spike), and for the spike rules the layer
    of the model's mean profile (``profile_layer``, as the ablations choose it)."""
    table = analysis.layer_summary(spike_layers(df, spike_ratio), LAYER_QUANTITIES)
    profile = profile_spike_layers(df, spike_ratio).melt(id_vars=["model", "variant"], var_name="quantity",
                                                          value_name="profile")
    table = table.merge(profile, on=["model", "variant", "quantity"], how="left")
    table["profile_layer"] = [analysis.layer_label(v) if q in SPIKE_COLUMNS else ""
                              for v, q in zip(table.pop("profile"), table["quantity"])]
    return table


def compare(df: pd.DataFrame, spike_ratio: float = analysis.SPIKE_THRESHOLD) -> pd.DataFrame:
    """RoPE vs DroPE: the :func:`overall` quantities side by side with CIs."""
    return compare_variants(overall(df, spike_ratio))


def compare_layers(df: pd.DataFrame, spike_ratio: float = analysis.SPIKE_THRESHOLD) -> pd.DataFrame:
    """RoPE vs DroPE: each layer quantity as ``mode (distribution over texts)``, and the
    mean-profile spike layers (``profile_rope``, ``profile_drope``)."""
    table = layer_table(df, spike_ratio)
    out = analysis.compare_layers(table)
    for variant in ("rope", "drope"):
        part = table[table["variant"] == variant].set_index("quantity")["profile_layer"]
        if len(part):
            out[f"profile_{variant}"] = [part.get(q, "") for q in out["quantity"]]
    return out


# ------------------------------------------------------------------------------------------
# Command line: ``drope-lens run sinks``.
# ------------------------------------------------------------------------------------------
from drope_lens.engine.options import sinks as add_cli_arguments  # noqa: E402  (options importable without torch)


def run_cli(ctx) -> int:
    from drope_lens.engine.runner import print_table

    from drope_lens.engine.measure import run_cli_measurement

    args = ctx.args
    config = SinksConfig(args.tau, args.spike_ratio, args.max_tokens, args.batch_size, args.bos)
    df = run_cli_measurement(ctx, EXPERIMENT, config, lambda model, texts, store: run(
        model, texts, tau=config.tau, spike_ratio=config.spike_ratio, max_tokens=config.max_tokens,
        batch_size=config.batch_size, bos=config.bos, store=store))
    layers = per_layer(df)
    print_table(f"Sink rate per layer (share of heads with sink score >= {config.tau}; mean, 95% CI over texts):",
                compare_variants(layers[layers["quantity"] == "sink_rate"], by=["layer"]))
    print_table("BOS ratio per layer (||resid_post[0]|| / mean ||resid_post[t>=1]||):",
                compare_variants(layers[layers["quantity"] == "bos_ratio"], by=["layer"]))
    print_table("Representation entropy per layer (repr_entropy: p = s^2/sum s^2, nats; repr_entropy_norm: "
                "p = s/sum s over ln(rank)):",
                compare_variants(layers[layers["quantity"].str.startswith("repr_entropy")], by=["layer"]))
    print_table("Overall (mean, 95% CI over texts):", compare(df, config.spike_ratio))
    print_table(f"Layers are categories: mode (distribution over texts; none = no spike) per rule: argmax = "
                f"layer of the largest BOS ratio (the study's), first_above = first layer with BOS ratio > "
                f"{config.spike_ratio:g}, jump = block that raises ||resid[0]|| most; profile = the rule on the "
                "mean profile over texts (what the ablations use):", compare_layers(df, config.spike_ratio))
    return 0
