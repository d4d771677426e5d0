"""``save_model``: write a drope_lens model back as a Hugging Face-format checkpoint.

The inverse of :func:`drope_lens.load_model`: ``config.json`` (a DroPE model gets
``model_type: llama_drope``, ``architectures: ["DroPELlamaForCausalLM"]``, ``attention_type`` and
``softmax_scale`` as upstream writes them), ``model.safetensors`` with the Llama tensor names, and
the tokenizer. A saved RoPE model loads in ``transformers.LlamaForCausalLM`` unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors.torch import save_file

from .loading import resolve_dtype, weight_targets
from .model import DropeLensTransformer


def checkpoint_config(model: DropeLensTransformer, dtype: torch.dtype) -> dict:
    spec = model.lens
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": spec.d_model, "intermediate_size": spec.d_mlp, "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.n_heads, "num_key_value_heads": spec.n_kv_heads, "head_dim": spec.d_head,
        "vocab_size": spec.d_vocab, "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": spec.eps, "rope_theta": spec.rope_theta, "hidden_act": "silu",
        "tie_word_embeddings": spec.tie_word_embeddings, "attention_bias": False, "mlp_bias": False,
        "bos_token_id": spec.bos_token_id, "torch_dtype": str(dtype).replace("torch.", ""),
    }
    if spec.variant == "drope":
        config.update(model_type="llama_drope", architectures=["DroPELlamaForCausalLM"],
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
    nonzero_biases = [name for name, param in model.named_parameters()
                      if name.rsplit(".", 1)[-1].lstrip("_").startswith("b_") and bool(param.detach().any())]
    if nonzero_biases:
        raise ValueError(
            f"cannot save {len(nonzero_biases)} non-zero biases ({', '.join(nonzero_biases[:4])}"
            f"{', ...' if len(nonzero_biases) > 4 else ''}): a Llama checkpoint has no biases, so they would be "
            "lost. Keep TransformerLens's zero biases frozen (load_model(requires_grad=True) does)."
        )
    target_dtype = resolve_dtype(dtype) if dtype is not None else model.cfg.dtype
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, target in weight_targets(model.lens).items():
        param = model.get_submodule(target.module)._parameters[target.param]
        tensors[name] = target.unview(param.detach()).to("cpu", target_dtype).contiguous()
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(checkpoint_config(model, target_dtype), indent=2))
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(directory)
    return directory
