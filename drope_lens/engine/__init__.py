"""Layer 3, the engine: the one execution path under every experiment (issue 21); runs an
experiment's units on one or many ranks and stores the rows.

sweep (``run_sweep``: plans batches over a run's units, shards them across ranks, runs them,
saves parts or batch checkpoints, gathers the rows, shows progress) and its modes: measure
(measurement forwards, Exp 4/5/7/8-9), perplexity (perplexity under conditions, Exp 2), tasks and
ablation (generation and perplexity under ablation conditions, Exp 3-6); Exp 10 runs its cells on
``run_sweep`` directly · results (``RunStore``: parts, fingerprints, resume) · distributed
(``torchrun`` sharding and collectives) · runner and options (what every ``drope-lens run``
command shares, its options importable without torch).

Imports only the layers below (model, measurement, hooks). Nothing is imported here: import the
module you need.
"""
