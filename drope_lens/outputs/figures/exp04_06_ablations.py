"""Ablation figure (Exp 4/5 BOS ablations, Exp 6 layer-1 ablations): perplexity per condition."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from .base import ResultsLike, _layout, _mean_ci, as_frame, color, label, require, variants


ABLATION_COLUMNS = ("model", "variant", "condition", "sample", "ppl")


def ablation(data: ResultsLike, title: str = "Ablation", experiment: str = "ablation",
             n_bootstrap: int = 2000) -> go.Figure:
    """Perplexity per condition (mean over texts, bootstrap 95% CI over texts), log scale.

    Takes any results with ``condition``, ``sample`` and ``ppl`` columns (BOS-MLP / BOS-V
    ablations, layer-1 ablation). The hover gives the ratio to the model's baseline.
    """
    df = require(as_frame(data), ABLATION_COLUMNS, experiment)
    df = df[df["ppl"].notna()]  # task-accuracy rows of the same run carry no perplexity
    conditions = list(dict.fromkeys(df["condition"]))
    fig = go.Figure()
    for v in variants(df):
        part = df[df.variant == v]
        means = part.groupby("condition")["ppl"].mean()
        base = means.get("baseline", np.nan)
        cis = [_mean_ci(part[part.condition == c]["ppl"].to_numpy(), n_bootstrap) for c in conditions]
        y = [means.get(c, np.nan) for c in conditions]
        fig.add_trace(go.Bar(
            x=conditions, y=y, name=label(v), marker_color=color(v),
            error_y=dict(type="data", symmetric=False, array=[h - m for (_, h), m in zip(cis, y)],
                         arrayminus=[m - lo for (lo, _), m in zip(cis, y)]),
            customdata=[[lo, hi, m / base if base == base else np.nan,
                         int((part.condition == c).sum())] for (lo, hi), m, c in zip(cis, y, conditions)],
            hovertemplate=(f"<b>{label(v)}</b><br>%{{x}}<br>perplexity %{{y:.6g}} (%{{customdata[2]:.4g}}x baseline)"
                           "<br>bootstrap 95% CI %{customdata[0]:.6g} to %{customdata[1]:.6g}"
                           "<br>n texts %{customdata[3]}<extra></extra>"),
        ))
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="perplexity (exp of mean NLL, log scale)", type="log")
    fig.update_xaxes(title_text="condition")
    return _layout(fig, f"{title}: perplexity by condition (bootstrap 95% CI over texts)")
