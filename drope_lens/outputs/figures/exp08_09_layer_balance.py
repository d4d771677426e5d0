"""Exp 8-9 figure: what attention and MLP write per layer, and Q/K norms."""

from __future__ import annotations

import plotly.graph_objects as go

from .base import ResultsLike, as_frame, require
from .layers import per_layer_panels


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
