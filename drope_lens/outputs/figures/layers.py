"""Per-layer panels (mean +- std over texts per layer) and layers as categories (share of texts
per layer, never averaged), drawn by the figures of Exp 4 (sinks), 5 (BOS write), 7 and 8-9.
"""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ...measurement.analysis import layer_label, spike_table
from .base import _curve, _layout, _show_legend_once, color, label, mean_std_n, variants


def _per_sample_layer(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean over heads (if any) within each sample and layer, then mean/std/n over samples."""
    rows = df[df[column].notna()]
    per_sample = rows.groupby(["variant", "sample", "layer"])[column].mean().reset_index()
    return mean_std_n(per_sample, ["variant", "layer"], column)


def per_layer_panels(df: pd.DataFrame, panels: Sequence[tuple[str, str, str, bool]], title: str,
                     cols: int = 2, extra_titles: Sequence[str] = ()) -> go.Figure:
    """One panel per ``(column, quantity, unit, log_y)``: mean +- std over samples per layer
    (``extra_titles``: further, empty panels for the caller to fill)."""
    rows = math.ceil((len(panels) + len(extra_titles)) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[p[1] for p in panels] + list(extra_titles),
                        vertical_spacing=0.18)
    for i, (column, quantity, unit, log_y) in enumerate(panels):
        r, c = i // cols + 1, i % cols + 1
        for v in variants(df):
            _curve(fig, _per_sample_layer(df[df.variant == v], column), v, x="layer", quantity=quantity,
                   unit=unit, row=r, col=c)
        fig.update_xaxes(title_text="layer (index)", dtick=1, row=r, col=c)
        fig.update_yaxes(title_text=unit + (" (log scale)" if log_y else ""),
                         type="log" if log_y else None, row=r, col=c)
    _show_legend_once(fig)
    return _layout(fig, title, height=330 * rows + 90)


def _spike_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per text: the spike layer under each rule (:func:`drope_lens.measurement.analysis.spike_table`) from the
    per-layer BOS values the results hold (empty without ``bos_ratio``)."""
    if "bos_ratio" not in df.columns:
        return pd.DataFrame()
    columns = [c for c in ("bos_ratio", "bos_norm", "bos_norm_pre") if c in df.columns]
    layers = (df[df["bos_ratio"].notna()].groupby(["model", "variant", "sample", "layer"])[columns].first()
              .reset_index())
    return spike_table(layers)


def _layer_categories(fig: go.Figure, table: pd.DataFrame, columns: dict[str, str], *, row: int, col: int) -> None:
    """Bars of the share of texts (%) in each layer category ("L<i>" or "none") of each per-text
    layer column (a layer is a category: never averaged); one bar group per variant."""
    order: list[str] = []
    bars = {}
    for v in variants(table):
        part = table[table.variant == v]
        xs, ys, counts = [], [], []
        for column, name in columns.items():
            labels = [layer_label(x) for x in part[column]]
            for cat in sorted(set(labels), key=lambda k: (k == "none", int(k) if k != "none" else 0)):
                x = f"{name}: {'L' + cat if cat != 'none' else 'none'}"
                xs.append(x)
                ys.append(100 * labels.count(cat) / len(labels))
                counts.append([labels.count(cat), len(labels)])
                order.append(x)
        bars[v] = (xs, ys, counts)
    for v, (xs, ys, counts) in bars.items():
        fig.add_trace(go.Bar(
            x=xs, y=ys, name=label(v), legendgroup=v, showlegend=False, marker_color=color(v), customdata=counts,
            hovertemplate=(f"<b>{label(v)}</b><br>%{{x}}: %{{y:.1f}}% of texts "
                           "(%{customdata[0]} of %{customdata[1]})<extra></extra>"),
        ), row=row, col=col)
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=list(dict.fromkeys(order)),
                     title_text="quantity: layer (category)", row=row, col=col)
    fig.update_yaxes(title_text="% of texts", row=row, col=col)
    fig.update_layout(barmode="group")
