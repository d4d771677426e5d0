"""Exp 2 figure: perplexity with massive vs random Q/K dims zeroed."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .base import ResultsLike, _layout, _mean_ci, as_frame, color, label, require, variants


DISRUPTION_COLUMNS = ("model", "variant", "condition", "seed", "sample", "ppl", "nll")


def disruption(data: ResultsLike, n_bootstrap: int = 2000) -> go.Figure:
    """Exp 2: perplexity per condition (left) and % increase with bootstrap 95% CIs (right).

    Left: mean PPL over evaluation texts for baseline and massive-zeroed, and for each random
    seed (points) with the mean +- std over seeds (bar). Right: massive % increase and the M-R
    difference with percentile-bootstrap 95% CIs over texts (``disruption.statistics``).
    """
    from drope_lens.experiments.disruption import statistics, summary

    df = require(as_frame(data), DISRUPTION_COLUMNS, "disruption")
    table = summary(df).set_index("variant")
    ci = statistics(df, n_bootstrap=n_bootstrap).set_index("variant")
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4],
                        subplot_titles=["perplexity by condition", "perplexity increase over baseline"])
    for v in variants(df):
        s = table.loc[v]
        base_ci = _mean_ci(df[(df.variant == v) & (df.condition == "baseline")]["ppl"].to_numpy(), n_bootstrap)
        mass_ci = _mean_ci(df[(df.variant == v) & (df.condition == "massive")]["ppl"].to_numpy(), n_bootstrap)
        y = [s.baseline_ppl, s.massive_ppl, s.random_ppl]
        lo = [y[0] - base_ci[0], y[1] - mass_ci[0], s.random_ppl_std]
        hi = [base_ci[1] - y[0], mass_ci[1] - y[1], s.random_ppl_std]
        fig.add_trace(go.Bar(
            x=["baseline", "massive zeroed", "random zeroed"], y=y, name=label(v), legendgroup=v,
            marker_color=color(v), offsetgroup=v, error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo),
            customdata=[[base_ci[0], base_ci[1], "bootstrap 95% CI over texts"],
                        [mass_ci[0], mass_ci[1], "bootstrap 95% CI over texts"],
                        [s.random_ppl - s.random_ppl_std, s.random_ppl + s.random_ppl_std,
                         f"mean ± std over {int(s.n_seeds)} seeds"]],
            hovertemplate=(f"<b>{label(v)}</b><br>%{{x}}<br>perplexity %{{y:.6g}}<br>%{{customdata[2]}}: "
                           "%{customdata[0]:.6g} to %{customdata[1]:.6g}<extra></extra>"),
        ), row=1, col=1)
        seeds = df[(df.variant == v) & (df.condition == "random")].groupby("seed")["ppl"].mean()
        fig.add_trace(go.Scatter(
            x=["random zeroed"] * len(seeds), y=seeds.tolist(), mode="markers", name=f"{label(v)} random seeds",
            legendgroup=v, showlegend=False, marker=dict(color="white", line=dict(color=color(v), width=1.5), size=7),
            customdata=seeds.index.to_numpy(), offsetgroup=v,
            hovertemplate=f"<b>{label(v)}</b> random seed %{{customdata}}<br>perplexity %{{y:.6g}}<extra></extra>",
        ), row=1, col=1)
        c = ci.loc[v]
        fig.add_trace(go.Bar(
            x=["massive", "massive − random"], y=[s.massive_pct, s.m_minus_r], name=label(v), legendgroup=v,
            showlegend=False, marker_color=color(v),
            error_y=dict(type="data", symmetric=False, array=[c.massive_pct_ci_high - s.massive_pct,
                                                              c.m_minus_r_ci_high - s.m_minus_r],
                         arrayminus=[s.massive_pct - c.massive_pct_ci_low, s.m_minus_r - c.m_minus_r_ci_low]),
            customdata=[[c.massive_pct_ci_low, c.massive_pct_ci_high], [c.m_minus_r_ci_low, c.m_minus_r_ci_high]],
            hovertemplate=(f"<b>{label(v)}</b><br>%{{x}}: %{{y:.6g}}%<br>bootstrap 95% CI over texts "
                           "%{customdata[0]:.6g} to %{customdata[1]:.6g}%<extra></extra>"),
        ), row=1, col=2)
    fig.update_layout(barmode="group", scattermode="group")
    fig.update_yaxes(title_text="perplexity (exp of mean NLL, log scale)", type="log", row=1, col=1)
    fig.update_yaxes(title_text="increase over baseline (%)", row=1, col=2)
    fig.update_xaxes(title_text="condition (Q and K dims zeroed)", row=1, col=1)
    fig.update_xaxes(title_text="quantity", row=1, col=2)
    n_texts, n_seeds = int(table["n_texts"].max()), int(table["n_seeds"].max())
    fig.add_annotation(text=(f"Error bars. Left: baseline and massive zeroed: bootstrap 95% CI of the mean over {n_texts} "
                             f"evaluation texts;<br>random zeroed: ± std over {n_seeds} seeds (circles: each seed's mean). "
                             "Right: bootstrap 95% CI over texts."),
                       showarrow=False, xref="paper", yref="paper", x=0, y=-0.3, xanchor="left", yanchor="top",
                       align="left", font=dict(size=11))
    fig = _layout(fig, "Exp 2: zeroing massive Q/K dims vs as many random dims", height=480)
    fig.update_layout(margin=dict(b=150))
    return fig
