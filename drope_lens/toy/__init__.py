"""The toy RoPE/DroPE pair: corpus generator, tokenizer, and the DroPE training recipe.

Work in progress (issue 4): ``drope-lens train-toy`` runs the recipe; the trained pair is not yet
bundled, and its quality has not been measured.
"""
