"""Exp 1 figures: massive-value counts per layer, and where the massive entries sit."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .base import ResultsLike, _layout, _mean_ci, _show_legend_once, as_frame, color, label, require, variants


MASSIVE_COLUMNS = ("model", "variant", "sample", "layer", "tensor", "count", "heads", "dims")


def massive_counts(data: ResultsLike, n_bootstrap: int = 2000) -> go.Figure:
    """Exp 1: massive-value count per layer, one panel per tensor: the mean over texts with its
    percentile-bootstrap 95% interval over texts (texts resampled; it stays within the observed
    counts, so never below 0, unlike mean +- std on counts)."""
    df = require(as_frame(data), MASSIVE_COLUMNS, "massive_values")
    tensors = [t for t in ("q", "k", "v") if t in set(df.tensor)]
    fig = make_subplots(rows=1, cols=len(tensors), subplot_titles=[f"{t.upper()} (hook_{t})" for t in tensors],
                        shared_yaxes=False)
    for c, tensor in enumerate(tensors, 1):
        for variant in variants(df):
            part = df[(df.tensor == tensor) & (df.variant == variant)]
            layers, means, lows, highs, ns = [], [], [], [], []
            for layer, group in part.groupby("layer", sort=True):
                counts = group.groupby("sample")["count"].sum().to_numpy(float)  # one value per text
                low, high = _mean_ci(counts, n_bootstrap)
                layers.append(int(layer)), means.append(counts.mean()), lows.append(low), highs.append(high)
                ns.append(len(counts))
            mean, low, high = np.array(means), np.array(lows), np.array(highs)
            fig.add_trace(go.Scatter(
                x=layers, y=mean.tolist(), mode="lines+markers", name=label(variant), legendgroup=variant,
                line=dict(color=color(variant)), marker=dict(color=color(variant)),
                error_y=dict(type="data", symmetric=False, array=(high - mean).tolist(),
                             arrayminus=(mean - low).tolist(), visible=True, thickness=1),
                customdata=np.stack([low, high, np.array(ns, float)], axis=1),
                hovertemplate=(f"<b>{label(variant)}</b><br>layer %{{x}}<br>massive entries: %{{y:.6g}} "
                               "(mean over texts)<br>bootstrap 95% CI over texts: %{customdata[0]:.4g} to "
                               "%{customdata[1]:.4g}<br>n texts: %{customdata[2]:.0f}<extra></extra>"),
            ), row=1, col=c)
        fig.update_xaxes(title_text="layer (index)", dtick=1, row=1, col=c)
        fig.update_yaxes(title_text="massive entries per layer (count)", rangemode="tozero", row=1, col=c)
    _show_legend_once(fig)
    return _layout(fig, "Exp 1: massive values per layer (mean over texts, bootstrap 95% CI over texts)")


def massive_dims(data: ResultsLike, d_head: Optional[int] = None, n_heads: Optional[int] = None,
                 rope_theta: Optional[float] = 10_000.0) -> go.Figure:
    """Exp 1: where massive entries sit within the head (head x dim index), Q and K, per model.

    Colour = massive (layer, text) occurrences of entry (head, dim) divided by the number of texts
    (so: in how many layers it is massive, on average per text). With ``d_head`` the x axis spans
    the head and the rotary frequency is marked: Llama pairs dims i and i + d/2 at frequency index
    ``f = i mod d/2`` (f = 0 fastest, f = d/2 - 1 slowest; wavelength ``2 pi theta^(2f/d)`` tokens).
    """
    df = require(as_frame(data), MASSIVE_COLUMNS, "massive_values")
    df = df[df.tensor.isin(["q", "k"])]
    tensors = [t for t in ("q", "k") if t in set(df.tensor)]
    vs = variants(df)
    all_dims = [d for ds in df["dims"] for d in ds]
    all_heads = [h for hs in df["heads"] for h in hs]
    width = d_head or (max(all_dims) + 1 if all_dims else 1)
    height = n_heads or (max(all_heads) + 1 if all_heads else 1)
    fig = make_subplots(rows=len(vs), cols=len(tensors), horizontal_spacing=0.08, vertical_spacing=0.22,
                        subplot_titles=[f"{label(v)}: {t.upper()}" for v in vs for t in tensors])
    zmax = 0.0
    grids = {}
    for v in vs:
        for t in tensors:
            part = df[(df.variant == v) & (df.tensor == t)]
            grid = np.zeros((height, width))
            for hs, ds in zip(part["heads"], part["dims"]):
                for h, d in zip(hs, ds):
                    grid[int(h), int(d)] += 1
            grid /= max(part["sample"].nunique(), 1)
            grids[(v, t)] = grid
            zmax = max(zmax, grid.max())
    dims = np.arange(width)
    half = width // 2
    freq = dims % half if d_head else np.full(width, -1)
    wavelength = (2 * math.pi * rope_theta ** (2 * freq / width)) if (d_head and rope_theta) else np.full(width, np.nan)
    custom = np.broadcast_to(np.stack([freq, wavelength], axis=-1), (height, width, 2))
    for r, v in enumerate(vs, 1):
        for c, t in enumerate(tensors, 1):
            fig.add_trace(go.Heatmap(
                z=grids[(v, t)], x=dims, y=np.arange(height), zmin=0, zmax=max(zmax, 1e-9), coloraxis="coloraxis",
                customdata=custom, name=label(v),
                hovertemplate=(f"<b>{label(v)} {t.upper()}</b><br>head %{{y}}, dim %{{x}}<br>"
                               "massive in %{z:.3g} layers per text"
                               + ("<br>rotary frequency index f=%{customdata[0]:.0f}, wavelength "
                                  "%{customdata[1]:.4g} tokens" if d_head else "") + "<extra></extra>"),
            ), row=r, col=c)
            if d_head:
                fig.add_vline(x=half - 0.5, line=dict(color="black", dash="dot", width=1), row=r, col=c)
            fig.update_xaxes(title_text="dim index within head" + (f" (rotary pair i, i+{half}: f = i mod {half})"
                                                                 if d_head else ""), row=r, col=c)
            fig.update_yaxes(title_text="head (index)", row=r, col=c)
    note = (f"dotted line: d/2 = {half}; within each half f runs from fast (left) to slow (right) rotary frequencies"
            if d_head else "head size unknown: x axis spans the dims observed; frequency not marked")
    fig.update_layout(coloraxis=dict(colorscale="Viridis", colorbar=dict(title="layers / text")))
    fig.add_annotation(text=note, showarrow=False, xref="paper", yref="paper", x=0, y=-0.16, xanchor="left",
                       font=dict(size=11))
    return _layout(fig, "Exp 1: where the massive entries sit (head × dim index)", height=260 * len(vs) + 120)
