"""drope_lens.experiments: one module per experiment of the study (see METHODS.md).

Each module has a config dataclass, ``run(model, ...) -> pandas.DataFrame`` (tidy rows, resumable
through a :class:`drope_lens.results.RunStore`) and summaries that take that DataFrame:

- :mod:`.massive_values` — Exp 1, massive values in Q/K/V per layer;
- :mod:`.disruption` — Exp 2, zeroing massive Q/K dims vs random dims, perplexity.
"""

#: ``drope-lens run <command>`` -> (module of this package, one-line help). Each module defines
#: ``add_cli_arguments(parser)`` and ``run_cli(ctx: drope_lens.runner.RunContext) -> int``.
CLI_EXPERIMENTS: dict[str, tuple[str, str]] = {
    "massive-values": ("massive_values", "Exp 1: massive values in Q/K/V per layer"),
    "disruption": ("disruption", "Exp 2: zero massive Q/K dims, measure perplexity"),
    "context-length": ("context_length", "Exp 10: passkey/RULER retrieval vs context length, errors, verification"),
}
