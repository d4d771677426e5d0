"""The bundled toy RoPE/DroPE pair (work in progress: the corpus generator exists, training and
bundling do not yet)."""
