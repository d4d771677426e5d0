"""Layer 5, outputs: result files -> figures, the offline report, the reproduction table, views.

figures (one module per experiment) · report (one self-contained HTML file) · reproduction (the
study's numbers beside ours) · views (circuitsvis, offline) · static (SVG without a browser).

Reads result files (``data.parquet`` + ``meta.json``); may use the experiments' summary
functions, never runs a model.
"""
