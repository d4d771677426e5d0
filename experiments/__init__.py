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
    "knowledge": ("knowledge", "Exp 3: task accuracy (parametric vs contextual) under top-1 Q/K dim disruption"),
    "bos-ablation": ("bos_ablation", "Exp 4/5: BOS MLP / BOS V ablations, perplexity and task accuracy"),
    "layer1-ablation": ("layer1_ablation", "Exp 6: layer-1 MLP/attention ablations, perplexity and task accuracy"),
}
