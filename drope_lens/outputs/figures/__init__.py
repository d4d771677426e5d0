"""plotly figures of saved experiment results, RoPE vs DroPE.

Every function takes the results of one experiment -- a run directory
(``results/<experiment>/<run-id>``), its DataFrame, or a list of either (e.g. one run per model)
-- and returns a :class:`plotly.graph_objects.Figure`. Figures read result files only: the values
they draw are the DataFrame's, averaged over samples for display (mean, std, a 95% interval,
always said in the hover text), never a metric re-measured on a model.

RoPE is always drawn in :data:`COLORS` ``["rope"]`` (blue) and DroPE in ``["drope"]``
(vermillion); both are from the Okabe-Ito colour-blind-safe palette. :func:`save` writes a
standalone HTML file (plotly.js inlined, works offline) and a PNG when ``kaleido`` is installed.

One module per experiment (``exp01_massive_values`` ... ``exp10_context_length``), on
:mod:`.base` (reading results, style, shared traces) and :mod:`.layers` (per-layer panels, layers
as categories); :mod:`.export` writes files. Everything is used from here, as before the split:
``from drope_lens import figures; figures.massive_counts(run_dir); figures.save(fig, "x.html")``.
"""

from .base import (
    COLORS,
    LABELS,
    LOCAL_TAU,
    OTHER_COLOR,
    SINK_TAU,
    ResultsError,
    ResultsLike,
    SchemaError,
    _accuracy_bars,
    _curve,
    _layout,
    _mean_ci,
    _show_legend_once,
    as_frame,
    color,
    label,
    mean_std_n,
    read_run,
    require,
    variants,
    wilson,
)
from .layers import _layer_categories, _per_sample_layer, _spike_table, per_layer_panels
from .exp01_massive_values import MASSIVE_COLUMNS, massive_counts, massive_dims
from .exp02_disruption import DISRUPTION_COLUMNS, disruption
from .exp03_knowledge import KNOWLEDGE_COLUMNS, knowledge
from .exp04_06_ablations import ABLATION_COLUMNS, ablation
from .exp04_sinks import SINKS_COLUMNS, sinks
from .exp05_bos_write import BOS_WRITE_ID_COLUMNS, bos_write
from .exp07_attention_structure import ATTENTION_COLUMNS, attention_structure, head_classes
from .exp08_09_layer_balance import BALANCE_COLUMNS, layer_balance
from .exp10_context_length import CONTEXT_COLUMNS, context_errors, context_length
from .export import save

__all__ = [
    "ABLATION_COLUMNS", "ATTENTION_COLUMNS", "BALANCE_COLUMNS", "BOS_WRITE_ID_COLUMNS", "COLORS", "CONTEXT_COLUMNS",
    "DISRUPTION_COLUMNS", "KNOWLEDGE_COLUMNS", "LABELS", "LOCAL_TAU", "MASSIVE_COLUMNS", "OTHER_COLOR", "SINKS_COLUMNS",
    "SINK_TAU", "ResultsError", "ResultsLike", "SchemaError", "ablation", "as_frame", "attention_structure", "bos_write",
    "color", "context_errors", "context_length", "disruption", "head_classes", "knowledge", "label", "layer_balance",
    "massive_counts", "massive_dims", "mean_std_n", "per_layer_panels", "read_run", "require", "save", "sinks",
    "variants", "wilson",
]
