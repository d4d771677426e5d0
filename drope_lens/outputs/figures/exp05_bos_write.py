"""Exp 5 (statistics) figure: the BOS value write per layer, max-write and spike layers."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from ...measurement.analysis import SPIKE_RULES
from .base import ResultsLike, SchemaError, as_frame, require
from .layers import _layer_categories, _spike_table, per_layer_panels


BOS_WRITE_ID_COLUMNS = {"model", "variant", "sample", "layer", "head", "seed", "text", "n_tokens", "condition",
                        "ppl", "nll"}


def bos_write(data: ResultsLike) -> go.Figure:
    """Exp 5: every numeric per-layer (or per-head) quantity of the run, mean over heads, +- std over texts."""
    df = require(as_frame(data), ("model", "variant", "sample", "layer"), "bos_write")
    df = df[df["layer"].notna()]  # rows without a layer (e.g. ablation perplexities) are not per-layer
    numeric = [c for c in df.columns if c not in BOS_WRITE_ID_COLUMNS and pd.api.types.is_numeric_dtype(df[c])
               and df[c].notna().any()]
    if df.empty or not numeric:
        raise SchemaError(f"bos_write results have no per-layer numeric columns besides {sorted(BOS_WRITE_ID_COLUMNS)}.")
    panels = [(c, c.replace("_", " "), "value", False) for c in numeric]
    if "write" not in df.columns:
        return per_layer_panels(df, panels, "Exp 5: BOS value write per layer")
    layer_means = df.groupby(["model", "variant", "sample", "layer"])["write"].mean().reset_index()
    table = (layer_means.loc[layer_means.groupby(["model", "variant", "sample"])["write"].idxmax()]
             .rename(columns={"layer": "max_write_layer"})[["model", "variant", "sample", "max_write_layer"]])
    spikes = _spike_table(df)
    if len(spikes):
        table = table.merge(spikes, on=["model", "variant", "sample"])
    columns = {"max_write_layer": "max write", **{f"spike_layer_{r}": f"spike {r}" for r in SPIKE_RULES
                                                  if f"spike_layer_{r}" in table.columns}}
    fig = per_layer_panels(df, panels, "Exp 5: BOS value write per layer",
                           extra_titles=["max-write layer (and spike layer) over texts: a category, share of texts"])
    _layer_categories(fig, table, columns, row=len(panels) // 2 + 1, col=len(panels) % 2 + 1)
    return fig
