"""The one execution path under every experiment (issue 21).

:mod:`.sweep` plans batches over a run's units, shards them across ranks, runs them, saves parts
through a :class:`~drope_lens.results.RunStore` and gathers the rows; its modes are the
measurement forwards (:mod:`.measure`), perplexity and generation under ablation conditions
(:mod:`.tasks`, :mod:`.ablation`), and any grid of cells (Exp 10 runs its cells on it).
Nothing is imported here: import the module you need.
"""
