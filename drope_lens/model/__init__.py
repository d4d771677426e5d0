"""Layer 1, the model: a checkpoint on disk -> a faithful ``HookedTransformer`` (RoPE or DroPE).

checkpoint (config parsing) · safetensors_stream (reading weights) · loading (``load_model``) ·
placement and ranks (which device holds which layer) · transformer (``DropeLensTransformer``) ·
attention / block / mlp / norm / linear / fused (its components and kernels) · hooks_state ·
convert (``to_drope``) · saving · registry and bundled (named pairs, the toy pair).

Imports nothing from the layers above (measurement, engine, experiments, outputs, cli).
"""
