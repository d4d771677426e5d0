"""drope_lens.experiments: one module per experiment of the study (see METHODS.md), nothing else.

Each module is only its experiment's definition: a config dataclass, ``run(model, ...) ->
pandas.DataFrame`` (its units, hooks and rows, run by the one engine, :mod:`drope_lens.engine`:
planned batches, shared among ``torchrun`` ranks, resumable through a
:class:`drope_lens.engine.results.RunStore`), summaries that take that DataFrame, and ``run_cli``. No
experiment imports another; what several need is in :mod:`drope_lens.measurement.analysis`,
:mod:`drope_lens.measurement.tokens` and :mod:`drope_lens.measurement.summaries`; their command-line options are in
:mod:`drope_lens.engine.options` (imported without torch, so that ``drope-lens --help`` is fast).

- :mod:`.massive_values` (Exp 1), :mod:`.disruption` (Exp 2), :mod:`.knowledge` (Exp 3),
  :mod:`.bos_ablation` (Exp 4/5 ablations), :mod:`.layer1_ablation` (Exp 6), :mod:`.sinks`
  (Exp 4 statistics), :mod:`.bos_write` (Exp 5 statistics), :mod:`.attention_structure` (Exp 7),
  :mod:`.layer_balance` (Exp 8-9), :mod:`.context_length` (Exp 10).
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
