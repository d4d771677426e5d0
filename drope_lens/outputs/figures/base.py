"""What every figure shares: colours and labels, reading results (:func:`read_run`,
:func:`as_frame`, :func:`require` and their errors), the layout, and the traces several figures
draw (mean +- std curves, accuracy bars with Wilson intervals, bootstrap intervals of a mean).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import pandas as pd
import plotly.graph_objects as go


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


def _mean_ci(values: np.ndarray, n_bootstrap: int, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap 95% interval of the mean (texts resampled with replacement)."""
    values = np.asarray(values, float)
    if values.size < 2:
        return float(values.mean()), float(values.mean())
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (n_bootstrap, values.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)
