"""Exp 3 figure: task accuracy per condition, logit and generation scoring."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .base import ResultsLike, _accuracy_bars, _layout, _show_legend_once, as_frame, label, require, variants


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
