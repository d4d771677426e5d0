"""Exp 10 figures: passkey accuracy vs context length, and answer categories."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .base import ResultsLike, _layout, _show_legend_once, as_frame, color, label, require, variants, wilson


CONTEXT_COLUMNS = ("model", "variant", "length", "format", "trial", "category", "correct")


def context_length(data: ResultsLike) -> go.Figure:
    """Exp 10: passkey accuracy vs context length (Wilson 95% CI over trials); one line style per format."""
    df = require(as_frame(data), CONTEXT_COLUMNS, "context_length")
    fig = go.Figure()
    dashes = ["solid", "dash", "dot", "dashdot"]
    for i, fmt in enumerate(dict.fromkeys(df["format"])):
        for v in variants(df):
            g = (df[(df.variant == v) & (df.format == fmt)].groupby("length")["correct"]
                 .agg(["sum", "count"]).reset_index())
            k, n = g["sum"].to_numpy(float), g["count"].to_numpy(float)
            low, high = wilson(k, n)
            acc = 100 * k / n
            fig.add_trace(go.Scatter(
                x=g["length"].tolist(), y=acc.tolist(), mode="lines+markers", name=f"{label(v)} ({fmt})",
                line=dict(color=color(v), dash=dashes[i % len(dashes)]), marker=dict(color=color(v)),
                error_y=dict(type="data", symmetric=False, array=(100 * high - acc).tolist(),
                             arrayminus=(acc - 100 * low).tolist(), thickness=1),
                customdata=np.stack([k, n, 100 * low, 100 * high], axis=1),
                hovertemplate=(f"<b>{label(v)}</b> {fmt}<br>context %{{x}} tokens<br>accuracy %{{y:.2f}}% "
                               "(%{customdata[0]:.0f}/%{customdata[1]:.0f})<br>Wilson 95% CI "
                               "%{customdata[2]:.1f}-%{customdata[3]:.1f}%<extra></extra>"),
            ))
    lengths = sorted(int(x) for x in df["length"].unique())
    # ticks at the lengths that were run (plotly's own log ticks would read "2 3 4 ... 1000 2")
    fig.update_xaxes(title_text="context length (tokens, log scale)", type="log", tickmode="array",
                     tickvals=lengths, ticktext=[f"{x:,}" for x in lengths])
    fig.update_yaxes(title_text="passkey accuracy (% of trials)", range=[-3, 105])
    return _layout(fig, "Exp 10: passkey accuracy vs context length")


def context_errors(data: ResultsLike) -> go.Figure:
    """Exp 10: answer categories (exact, near-miss, ...) per length, % of trials, one bar group per model.

    Every category that occurs has its legend entry (on the first panel where it occurs) and keeps
    one colour in both panels; categories are stacked in :data:`drope_lens.measurement.passkey.CATEGORIES` order."""
    from drope_lens.measurement.passkey import CATEGORIES

    df = require(as_frame(data), CONTEXT_COLUMNS, "context_length")
    counts = df.groupby(["variant", "length", "category"]).size().rename("n").reset_index()
    counts["percent"] = 100 * counts["n"] / counts.groupby(["variant", "length"])["n"].transform("sum")
    present = set(counts["category"])
    categories = [c for c in CATEGORIES if c in present] + sorted(present - set(CATEGORIES))
    lengths = [str(x) for x in sorted(int(x) for x in df["length"].unique())]
    fig = make_subplots(rows=1, cols=len(variants(df)), subplot_titles=[label(v) for v in variants(df)],
                        shared_yaxes=True)
    palette = ["#009E73", "#F0E442", "#CC79A7", "#56B4E9", "#E69F00", "#000000", "#999999"]
    for c, v in enumerate(variants(df), 1):
        for i, cat in enumerate(categories):
            part = counts[(counts.variant == v) & (counts.category == cat)]
            if part.empty:  # an empty trace would take the category's legend entry and show nothing
                continue
            fig.add_trace(go.Bar(
                x=part["length"].astype(str).tolist(), y=part["percent"].tolist(), name=str(cat), legendgroup=str(cat),
                marker_color=palette[i % len(palette)], customdata=part["n"].to_numpy(),
                hovertemplate=(f"<b>{label(v)}</b> %{{x}} tokens<br>{cat}: %{{y:.2f}}% "
                               "(%{customdata} trials)<extra></extra>"),
            ), row=1, col=c)
        fig.update_xaxes(title_text="context length (tokens)", type="category", categoryorder="array",
                         categoryarray=lengths, row=1, col=c)
    fig.update_yaxes(title_text="answers (% of trials)", row=1, col=1)
    fig.update_layout(barmode="stack")
    _show_legend_once(fig)
    return _layout(fig, "Exp 10: answer categories by context length")
