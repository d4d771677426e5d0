"""``save_model``: write a drope_lens model back as a Hugging Face-format checkpoint.

The inverse of :func:`drope_lens.load_model`: ``config.json`` (a DroPE model gets
``model_type: <family>_drope``, ``architectures: ["DroPE<Architecture>"]``, ``attention_type`` and
``softmax_scale`` as upstream writes them), ``model.safetensors`` with the family's tensor names
(Qwen2's q/k/v biases included), and the tokenizer. A saved RoPE model loads in its
``transformers`` class (``LlamaForCausalLM``, ``Qwen2ForCausalLM``, ``MistralForCausalLM``) unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors.torch import save_file

from .checkpoint import FAMILIES
from .loading import resolve_dtype, weight_targets
from .transformer import DropeLensTransformer


def checkpoint_config(model: DropeLensTransformer, dtype: torch.dtype) -> dict:
    spec = model.lens
    family = FAMILIES[spec.family]
    config = {
        "architectures": [family.architecture], "model_type": family.model_type,
        "hidden_size": spec.d_model, "intermediate_size": spec.d_mlp, "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.n_heads, "num_key_value_heads": spec.n_kv_heads, "head_dim": spec.d_head,
        "vocab_size": spec.d_vocab, "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": spec.eps, "rope_theta": spec.rope_theta, "hidden_act": "silu",
        "tie_word_embeddings": spec.tie_word_embeddings,
        "bos_token_id": spec.bos_token_id, "torch_dtype": str(dtype).replace("torch.", ""),
    }
    if spec.family == "llama":
        config.update(attention_bias=spec.qkv_bias, mlp_bias=False)
    config.update(dict(spec.extra_config))
    rope = {"rope_type": "default", "rope_theta": spec.rope_theta}
    if spec.rope_scaling is not None:
        rope = {**asdict(spec.rope_scaling), "rope_theta": spec.rope_theta}
        config["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}  # transformers < 5
    config["rope_parameters"] = rope  # transformers >= 5
    if spec.variant == "drope":
        config.update(model_type=family.drope_model_type, architectures=[family.drope_architecture],
                      attention_type=spec.attention_type)
        if spec.softmax_scale is not None:
            config["softmax_scale"] = spec.softmax_scale
    return config


def save_model(model: DropeLensTransformer, directory: Union[str, Path], *, dtype: Optional[Union[str, torch.dtype]] = None) -> Path:
    """Write ``model`` to ``directory`` (created) in Hugging Face format; ``dtype`` defaults to the model's."""
    if not isinstance(model, DropeLensTransformer):
        raise TypeError(f"save_model() needs a drope_lens model, got {type(model).__name__}.")
    if model.quantization is not None:
        raise ValueError(f"cannot save a {model.quantization}-quantised model; load it unquantised to save it.")
    targets = weight_targets(model.lens)
    saved = {f"{t.module}.{t.param}" for t in targets.values()}
    nonzero_biases = [name for name, param in model.named_parameters()
                      if name.rsplit(".", 1)[-1].lstrip("_").startswith("b_") and name not in saved
                      and bool(param.detach().any())]
    if nonzero_biases:
        raise ValueError(
            f"cannot save {len(nonzero_biases)} non-zero biases ({', '.join(nonzero_biases[:4])}"
            f"{', ...' if len(nonzero_biases) > 4 else ''}): a {model.lens.architecture} checkpoint has no such "
            "biases, so they would be lost. Keep TransformerLens's zero biases frozen "
            "(load_model(requires_grad=True) does)."
        )
    target_dtype = resolve_dtype(dtype) if dtype is not None else model.cfg.dtype
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, target in targets.items():
        param = model.get_submodule(target.module)._parameters[target.param]
        tensors[name] = target.unview(param.detach()).to("cpu", target_dtype).contiguous()
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(checkpoint_config(model, target_dtype), indent=2))
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(directory)
    return directory
