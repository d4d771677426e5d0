"""The toy RoPE/DroPE pair: corpus generator (``corpus``), tokenizer (``tokenizer``), the DroPE
training recipe (``train``, ``drope-lens train-toy``) and its quality evaluation (``evaluate``).

The pair trained with these modules ships in the package: ``drope_lens.load_pair("toy")``; see
``docs/toy_pair.md``.
"""
