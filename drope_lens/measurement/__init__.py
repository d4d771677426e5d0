"""Layer 2, measurement: what one forward or generation of a model measures, and its inputs.

texts and tasks (inputs, with content hashes) · passkey (prompts and answer categories) ·
generation (batched greedy decoding and scoring under hooks) · scoring (perplexity) ·
attention_stats (+ its Triton kernel: streaming per-head statistics) · analysis (what several
experiments derive from measurements: massive dimensions, BOS-norm ratios, spike layers).

Imports only :mod:`drope_lens.model` and :mod:`drope_lens.hooks`.
"""
