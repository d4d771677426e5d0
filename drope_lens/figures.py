"""plotly figures of saved experiment results, RoPE vs DroPE.

Every function takes the results of one experiment -- a run directory
(``results/<experiment>/<run-id>``), its DataFrame, or a list of either (e.g. one run per model)
-- and returns a :class:`plotly.graph_objects.Figure`. Figures read result files only: the values
they draw are the DataFrame's, averaged over samples for display (mean, std, a 95% interval,
always said in the hover text), never a metric re-measured on a model.

RoPE is always drawn in :data:`COLORS` ``["rope"]`` (blue) and DroPE in ``["drope"]``
(vermillion); both are from the Okabe-Ito colour-blind-safe palette. :func:`save` writes a
standalone HTML file (plotly.js inlined, works offline) and a PNG when ``kaleido`` is installed.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .analysis import SPIKE_RULES, layer_label, spike_table

COLORS = {"rope": "#0072B2", "drope": "#D55E00"}
LABELS = {"rope": "RoPE", "drope": "DroPE"}
OTHER_COLOR = "#777777"
#: Sink threshold tau of METHODS.md (Exp 4 and 7): a head is a sink head if its BOS attention >= 0.3.
SINK_TAU = 0.3
LOCAL_TAU = 0.3

ResultsLike = Union[str, Path, pd.DataFrame, Sequence[Union[str, Path, pd.DataFrame]]]


class ResultsError(ValueError):
    """A results path or DataFrame cannot be read as the experiment's results."""


class SchemaError(ResultsError):
    """Results lack columns the figures need (written by another version of drope_lens?)."""


# ------------------------------------------------------------------------------------------
# Reading results
# ------------------------------------------------------------------------------------------
def read_run(directory: Union[str, Path]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``(data, meta)`` of a finished run directory; :class:`ResultsError` naming what is missing."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ResultsError(f"{directory}: no such run directory.")
    data, meta = directory / "data.parquet", directory / "meta.json"
    if not data.is_file() or not meta.is_file():
        what = "an unfinished run (parts/ but no data.parquet)" if (directory / "parts").is_dir() else "not a run"
        raise ResultsError(f"{directory}: {what}; a finished run holds data.parquet and meta.json "
                           "(written by `drope-lens run <experiment>`).")
    try:
        meta_dict = json.loads(meta.read_text())
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{meta}: not valid JSON ({exc}).") from None
    return pd.read_parquet(data), meta_dict


def as_frame(data: ResultsLike) -> pd.DataFrame:
    """One DataFrame from a run directory, a DataFrame, or a list of them (concatenated)."""
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, (str, Path)):
        return read_run(data)[0]
    frames = [as_frame(item) for item in data]
    if not frames:
        raise ResultsError("no results given (an empty list).")
    return pd.concat(frames, ignore_index=True)


def require(df: pd.DataFrame, columns: Iterable[str], experiment: str) -> pd.DataFrame:
    """``df`` if it has ``columns`` and rows, else a named :class:`SchemaError` / :class:`ResultsError`."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SchemaError(f"{experiment} results lack columns {missing} (they have {list(df.columns)}); "
                          "they were written by an older or different drope_lens: rerun the experiment.")
    if df.empty:
        raise ResultsError(f"{experiment} results have no rows.")
    return df


# ------------------------------------------------------------------------------------------
# Style and shared traces
# ------------------------------------------------------------------------------------------
def color(variant: str) -> str:
    return COLORS.get(variant, OTHER_COLOR)


def label(variant: str) -> str:
    return LABELS.get(variant, str(variant))


def variants(df: pd.DataFrame) -> list[str]:
    """Variants in display order: RoPE, DroPE, then any other."""
    present = list(dict.fromkeys(df["variant"]))
    return [v for v in ("rope", "drope") if v in present] + [v for v in present if v not in ("rope", "drope")]


def _layout(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    fig.update_layout(title=title, template="plotly_white", height=height, hovermode="closest",
                      legend=dict(orientation="h", yanchor="bottom", y=1.06, xanchor="right", x=1),
                      margin=dict(t=90, l=70, r=30, b=60))
    return fig


def _show_legend_once(fig: go.Figure) -> None:
    seen = set()
    for trace in fig.data:
        trace.showlegend = trace.name not in seen
        seen.add(trace.name)


def mean_std_n(df: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Mean, sample std (ddof 1; 0 for one sample) and count of ``value`` per group."""
    out = df.groupby(by, sort=True)[value].agg(["mean", "std", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def _curve(fig: go.Figure, stats: pd.DataFrame, variant: str, *, x: str, quantity: str, unit: str,
           row: int = 1, col: int = 1, over: str = "samples", dash: Optional[str] = None,
           name: Optional[str] = None) -> None:
    """A mean +- std line of one variant; hover gives the exact mean, std and n."""
    fig.add_trace(go.Scatter(
        x=stats[x].tolist(), y=stats["mean"].tolist(), mode="lines+markers", name=name or label(variant),
        legendgroup=name or variant, line=dict(color=color(variant), dash=dash), marker=dict(color=color(variant)),
        error_y=dict(type="data", array=stats["std"].tolist(), visible=True, thickness=1),
        customdata=np.stack([stats["std"].to_numpy(float), stats["count"].to_numpy(float)], axis=1),
        hovertemplate=(f"<b>{name or label(variant)}</b><br>{x} %{{x}}<br>{quantity}: %{{y:.6g}} {unit}"
                       f"<br>std over {over}: %{{customdata[0]:.4g}}<br>n {over}: %{{customdata[1]:.0f}}<extra></extra>"),
    ), row=row, col=col)


def wilson(k: np.ndarray, n: np.ndarray, z: float = 1.959964) -> tuple[np.ndarray, np.ndarray]:
    """Wilson 95% interval of a proportion k/n (fractions)."""
    k, n = np.asarray(k, float), np.asarray(n, float)
    p = np.where(n > 0, k / np.maximum(n, 1), np.nan)
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    # exactly 0 at k = 0 and 1 at k = n (the formula leaves rounding residue such as 5.55e-17)
    low = np.where(k == 0, 0.0, np.clip(centre - half, 0.0, 1.0))
    high = np.where(k == n, 1.0, np.clip(centre + half, 0.0, 1.0))
    return low, high


def _accuracy_bars(fig: go.Figure, df: pd.DataFrame, variant: str, *, x: str, correct: str, row: int = 1,
                   col: int = 1, name: Optional[str] = None, pattern: str = "") -> None:
    """Bars of % correct per ``x`` with Wilson 95% intervals; hover gives k/n exactly."""
    rows = df[(df.variant == variant) & df[correct].notna()]  # e.g. no logit scoring for passkey prompts
    g = rows.assign(**{correct: rows[correct].astype(float)}).groupby(x, sort=False)[correct].agg(["sum", "count"]).reset_index()
    k, n = g["sum"].to_numpy(float), g["count"].to_numpy(float)
    low, high = wilson(k, n)
    acc = 100 * k / n
    fig.add_trace(go.Bar(
        x=g[x].astype(str).tolist(), y=acc.tolist(), name=name or label(variant), legendgroup=name or variant,
        marker=dict(color=color(variant), pattern_shape=pattern),
        error_y=dict(type="data", symmetric=False, array=(100 * high - acc).tolist(),
                     arrayminus=(acc - 100 * low).tolist()),
        customdata=np.stack([k, n, 100 * low, 100 * high], axis=1),
        hovertemplate=(f"<b>{name or label(variant)}</b><br>%{{x}}<br>accuracy %{{y:.2f}}% "
                       "(%{customdata[0]:.0f}/%{customdata[1]:.0f})<br>Wilson 95% CI "
                       "%{customdata[2]:.1f}-%{customdata[3]:.1f}%<extra></extra>"),
    ), row=row, col=col)


# ------------------------------------------------------------------------------------------
# Exp 1: massive values
# ------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------
# Exp 2: disruption
# ------------------------------------------------------------------------------------------
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


def _mean_ci(values: np.ndarray, n_bootstrap: int, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap 95% interval of the mean (texts resampled with replacement)."""
    values = np.asarray(values, float)
    if values.size < 2:
        return float(values.mean()), float(values.mean())
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (n_bootstrap, values.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


# ------------------------------------------------------------------------------------------
# Exp 3: knowledge under disruption
# ------------------------------------------------------------------------------------------
KNOWLEDGE_COLUMNS = ("model", "variant", "task", "condition", "sample", "correct_logit", "correct_generation",
                     "unparseable")


def knowledge(data: ResultsLike) -> go.Figure:
    """Exp 3: accuracy (%) per task and condition, logit scoring (top) and generation scoring (bottom).

    Hatched bars are the disrupted condition(s); Wilson 95% intervals over prompts. Generation
    scoring counts unparseable answers as wrong (their count is in the summary table).
    """
    df = require(as_frame(data), KNOWLEDGE_COLUMNS, "knowledge")
    conditions = list(dict.fromkeys(df["condition"]))
    fig = make_subplots(rows=2, cols=1, vertical_spacing=0.16,
                        subplot_titles=["logit comparison of the answer tokens", "greedy generation (study's scoring)"])
    for r, column in enumerate(("correct_logit", "correct_generation"), 1):
        for v in variants(df):
            for i, condition in enumerate(conditions):
                part = df[(df.condition == condition)].copy()
                part["task"] = part["task"].astype(str)
                _accuracy_bars(fig, part, v, x="task", correct=column, row=r, col=1,
                               name=f"{label(v)} {condition}", pattern="" if i == 0 else "/")
        fig.update_yaxes(title_text="accuracy (% of prompts)", range=[0, 105], row=r, col=1)
        fig.update_xaxes(title_text="task", row=r, col=1)
    fig.update_layout(barmode="group")
    _show_legend_once(fig)
    return _layout(fig, "Exp 3: task accuracy by condition (Wilson 95% CI)", height=700)


# ------------------------------------------------------------------------------------------
# Ablations (Exp 4 BOS ablations, Exp 5 BOS-V, Exp 6 layer 1): perplexity per condition
# ------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------
# Per-layer statistics: sinks (Exp 4), BOS write (Exp 5), attention structure (Exp 7), balance (Exp 8-9)
# ------------------------------------------------------------------------------------------
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


def _spike_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per text: the spike layer under each rule (:func:`drope_lens.analysis.spike_table`) from the
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


BALANCE_COLUMNS = ("model", "variant", "sample", "layer", "attn_norm", "mlp_norm", "attn_fraction", "q_norm", "k_norm")


def layer_balance(data: ResultsLike) -> go.Figure:
    """Exp 8-9: attention fraction attn/(attn+mlp), the two write norms, and Q/K norms per layer."""
    df = require(as_frame(data), BALANCE_COLUMNS, "layer_balance").copy()
    df["attn_fraction_pct"] = 100 * df["attn_fraction"]
    panels = [("attn_fraction_pct", "attention share of the block's writes", "% attn/(attn+mlp)", False),
              ("attn_norm", "‖hook_attn_out‖ token mean", "L2 norm", True),
              ("mlp_norm", "‖hook_mlp_out‖ token mean", "L2 norm", True),
              ("q_norm", "‖Q‖ token mean (all heads)", "L2 norm", True),
              ("k_norm", "‖K‖ token mean (all heads)", "L2 norm", True)]
    return per_layer_panels(df, panels, "Exp 8-9: what attention and MLP write, per layer")


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


# ------------------------------------------------------------------------------------------
# Exp 10: context length
# ------------------------------------------------------------------------------------------
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
    one colour in both panels; categories are stacked in :data:`drope_lens.passkey.CATEGORIES` order."""
    from drope_lens.passkey import CATEGORIES

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


# ------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------
def save(fig: go.Figure, path: Union[str, Path], png: Optional[bool] = None) -> list[Path]:
    """Write ``path`` as standalone HTML (plotly.js inlined: opens offline) and ``path`` with
    ``.png`` when kaleido is installed (``png=True`` makes a missing kaleido an error).

    Returns the paths written.
    """
    target = Path(path)
    html = target if target.suffix == ".html" else target.with_suffix(".html")
    html.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(html, include_plotlyjs=True, full_html=True)
    written = [html]
    if png is False:
        return written
    try:
        import kaleido  # noqa: F401
    except ImportError:
        if png:
            raise ImportError("PNG export needs kaleido: pip install 'drope_lens[png]' (or pip install kaleido).")
        return written
    try:
        fig.write_image(html.with_suffix(".png"), scale=2)
        written.append(html.with_suffix(".png"))
    except Exception as exc:  # kaleido present but cannot start (e.g. no Chrome for kaleido >= 1)
        if png:
            raise
        warnings.warn(f"PNG export skipped: kaleido failed ({exc}).", stacklevel=2)
    return written
