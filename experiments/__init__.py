"""drope_lens.experiments: one module per experiment of the study (see METHODS.md).

Each module has a config dataclass, ``run(model, ...) -> pandas.DataFrame`` (tidy rows, resumable
through a :class:`drope_lens.engine.results.RunStore`) and summaries that take that DataFrame:

- :mod:`.massive_values` — Exp 1, massive values in Q/K/V per layer;
- :mod:`.disruption` — Exp 2, zeroing massive Q/K dims vs random dims, perplexity;
- :mod:`.sinks` — Exp 4 (statistics), :mod:`.bos_write` — Exp 5 (statistics),
  :mod:`.attention_structure` — Exp 7, :mod:`.layer_balance` — Exp 8-9, all on :mod:`.engine`
  (one forward per batch shared by any of them, streamed attention statistics).
"""

#: ``drope-lens run <command>`` -> (module of this package, one-line help). Each module defines
#: ``add_cli_arguments(parser)`` and ``run_cli(ctx: drope_lens.engine.runner.RunContext) -> int``.
CLI_EXPERIMENTS: dict[str, tuple[str, str]] = {
    "massive-values": ("massive_values", "Exp 1: massive values in Q/K/V per layer"),
    "disruption": ("disruption", "Exp 2: zero massive Q/K dims, measure perplexity"),
    "knowledge": ("knowledge", "Exp 3: task accuracy (parametric vs contextual) under top-1 Q/K dim disruption"),
    "bos-ablation": ("bos_ablation", "Exp 4/5: BOS MLP / BOS V ablations, perplexity and task accuracy"),
    "layer1-ablation": ("layer1_ablation", "Exp 6: layer-1 MLP/attention ablations, perplexity and task accuracy"),
    "sinks": ("sinks", "Exp 4 (statistics): sink rates, BOS norm and ratio, spike layer, representation entropy"),
    "bos-write": ("bos_write", "Exp 5 (statistics): V norm at BOS, BOS attention mass, effective write"),
    "attention-structure": ("attention_structure", "Exp 7: per-head entropy, BOS/local attention, distance, classes"),
    "layer-balance": ("layer_balance", "Exp 8-9: attention vs MLP output norms per layer, Q/K norms"),
    "context-length": ("context_length", "Exp 10: passkey/RULER retrieval vs context length, errors, verification"),
}
