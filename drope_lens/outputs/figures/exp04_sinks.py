"""Exp 4 (statistics) figure: sink rate, BOS norm and ratio, representation entropy, spike layer."""

from __future__ import annotations

import plotly.graph_objects as go

from ...measurement.analysis import SPIKE_RULES
from .base import SINK_TAU, ResultsLike, as_frame, require
from .layers import _layer_categories, _spike_table, per_layer_panels


SINKS_COLUMNS = ("model", "variant", "sample", "layer", "bos_norm", "bos_ratio", "repr_entropy")


def sinks(data: ResultsLike, tau: float = SINK_TAU) -> go.Figure:
    """Exp 4: sink rate, BOS norm, BOS ratio and representation entropy per layer (mean +- std over texts).

    Sink rate = % of a layer's heads whose ``sink_score`` >= ``tau`` (per text, then averaged);
    drawn when the results hold per-head ``sink_score`` rows (``head`` column).
    """
    df = require(as_frame(data), SINKS_COLUMNS, "sinks").copy()
    panels = []
    if {"head", "sink_score"} <= set(df.columns):
        heads = df[df["sink_score"].notna()]
        rate = (heads.assign(sink=(heads["sink_score"] >= tau).astype(float) * 100)
                .groupby(["variant", "sample", "layer"])["sink"].mean().rename("sink_rate").reset_index())
        df = df.merge(rate, on=["variant", "sample", "layer"], how="left")
        panels.append(("sink_rate", f"sink heads (sink score ≥ {tau})", "% of heads", False))
    panels += [("bos_norm", "BOS residual norm ‖resid_post[0]‖", "L2 norm", True),
               ("bos_ratio", "BOS norm / mean norm of other positions", "ratio", True),
               ("repr_entropy", "representation entropy", "nats", False)]
    # per-layer quantities may sit on their own rows (NaN on per-head rows) or repeat on every
    # per-head row: _per_sample_layer averages the non-missing values of each (sample, layer)
    spikes = _spike_table(df)
    titles = ["spike layer over texts, per rule (a category: share of texts; none = no spike)"] if len(spikes) else []
    fig = per_layer_panels(df, panels, "Exp 4: attention sinks and the BOS token per layer", extra_titles=titles)
    if titles:
        cell = len(panels)
        _layer_categories(fig, spikes, {f"spike_layer_{r}": r for r in SPIKE_RULES}, row=cell // 2 + 1,
                          col=cell % 2 + 1)
    return fig
