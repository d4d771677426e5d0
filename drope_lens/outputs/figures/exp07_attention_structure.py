"""Exp 7 figure: attention pattern structure per layer, and head classes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .base import LOCAL_TAU, SINK_TAU, ResultsLike, as_frame, color, label, require, variants
from .layers import per_layer_panels


ATTENTION_COLUMNS = ("model", "variant", "sample", "layer", "head", "sink_score", "entropy", "local_mass")


def attention_structure(data: ResultsLike) -> go.Figure:
    """Exp 7: BOS attention, row entropy and local mass per layer (mean over heads, +- std over texts),
    and the share of sink / local / mixed heads per model."""
    df = require(as_frame(data), ATTENTION_COLUMNS, "attention_structure")
    panels = [("sink_score", "BOS attention (sink score)", "fraction of row mass", False),
              ("entropy", "attention row entropy", "nats", False),
              ("local_mass", "local attention (previous keys)", "fraction of row mass", False)]
    fig = per_layer_panels(df, panels, "Exp 7: attention pattern structure per layer", cols=2,
                           extra_titles=["head classes (sink: BOS ≥ 0.3, else local ≥ 0.3, else mixed)"])
    classes = head_classes(df)
    for v in variants(df):
        part = classes[classes.variant == v]
        fig.add_trace(go.Bar(
            x=part["head_class"].tolist(), y=part["percent"].tolist(), name=label(v), legendgroup=v,
            showlegend=False, marker_color=color(v), customdata=part[["heads", "total"]].to_numpy(),
            hovertemplate=(f"<b>{label(v)}</b><br>%{{x}} heads: %{{y:.2f}}% "
                           "(%{customdata[0]} of %{customdata[1]} head x text)<extra></extra>"),
        ), row=2, col=2)
    fig.update_yaxes(title_text="% of heads (over texts)", row=2, col=2)
    fig.update_xaxes(title_text="head class", row=2, col=2)
    fig.update_layout(barmode="group")
    return fig


def head_classes(df: pd.DataFrame, sink_tau: float = SINK_TAU, local_tau: float = LOCAL_TAU) -> pd.DataFrame:
    """Share of (head, text) rows per class: sink (sink_score >= tau), local (local_mass >= tau), mixed."""
    cls = np.where(df["sink_score"] >= sink_tau, "sink", np.where(df["local_mass"] >= local_tau, "local", "mixed"))
    counts = df.assign(head_class=cls).groupby(["variant", "head_class"]).size().rename("heads").reset_index()
    totals = counts.groupby("variant")["heads"].transform("sum")
    counts["total"] = totals
    counts["percent"] = 100 * counts["heads"] / totals
    order = {"sink": 0, "local": 1, "mixed": 2}
    return counts.sort_values(["variant", "head_class"], key=lambda s: s.map(order) if s.name == "head_class" else s)
