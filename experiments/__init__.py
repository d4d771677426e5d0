"""drope_lens.experiments: one module per experiment of the study (see METHODS.md).

Each module has a config dataclass, ``run(model, ...) -> pandas.DataFrame`` (tidy rows, resumable
through a :class:`drope_lens.results.RunStore`) and summaries that take that DataFrame:

- :mod:`.massive_values` — Exp 1, massive values in Q/K/V per layer;
- :mod:`.disruption` — Exp 2, zeroing massive Q/K dims vs random dims, perplexity.
"""
