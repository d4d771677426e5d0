"""Tiny checkpoints built with Hugging Face ``transformers`` for the tests (no downloads).

``reference_model`` builds the independent reference: HF ``LlamaForCausalLM`` for RoPE, and for
DroPE the way upstream SakanaAI/DroPE builds it: the rotary cos/sin replaced by ones/zeros
(``inv_freq`` zeroed, so every angle is 0), an ``nn.RMSNorm`` over the full ``n_heads*d_head``
query/key projection (modules named ``self_attn.q_norm``/``k_norm`` as upstream saves them), and
``softmax_scale`` written into each attention's ``scaling``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# Where load_model puts models in the tests (conftest.py makes it load_model's default):
# DROPE_LENS_TEST_DEVICE=cuda runs the suite with models on the GPU; references stay on the CPU.
TEST_DEVICE = os.environ.get("DROPE_LENS_TEST_DEVICE", "cpu")

WORDS = (
    "the city of paris is in france rome italy berlin germany secret passkey remember this "
    "number what grass green sky blue sun yellow answer yes no question a an and to of in is "
    "was movie review positive negative 0 1 2 3 4 5 6 7 8 9 . , ? : !"
).split()


def save_tokenizer(directory: Path, *, prepend_bos: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over WORDS with <unk>=0, <s>=1, </s>=2 (and BOS prepended if asked)."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if prepend_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(directory)
    return fast


def tiny_config(**overrides) -> LlamaConfig:
    kwargs = dict(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


class _ApplyNorm:
    """Forward hook on q_proj/k_proj that applies the attention's q_norm/k_norm to the output.

    A callable object (not a closure) so that ``copy.deepcopy`` of the model re-points it at the
    copied norm module.
    """

    def __init__(self, attention: nn.Module, norm_name: str):
        self.attention = attention
        self.norm_name = norm_name

    def __call__(self, module, inputs, output):
        return getattr(self.attention, self.norm_name)(output)


def upstream_drope(model, config, attention_type: str, softmax_scale: Optional[float]):
    """Upstream DroPE's construction of an HF model, in place: rotary off (cos = 1, sin = 0), the
    full-width q/k RMSNorms of the ``*_norm_nope`` types, and ``softmax_scale`` as the q.k multiplier."""
    model.model.rotary_emb.inv_freq.zero_()
    model.model.rotary_emb.original_inv_freq.zero_()
    for layer in model.model.layers:
        attn = layer.self_attn
        n_q = config.num_attention_heads * attn.head_dim
        n_k = config.num_key_value_heads * attn.head_dim
        if attention_type != "nope":
            attn.q_norm = nn.RMSNorm(n_q, eps=config.rms_norm_eps)
            attn.k_norm = nn.RMSNorm(n_k, eps=config.rms_norm_eps)
            with torch.no_grad():
                attn.q_norm.weight.copy_(1.0 + 0.2 * torch.randn(n_q))
                attn.k_norm.weight.copy_(1.0 + 0.2 * torch.randn(n_k))
            if attention_type in ("qk_norm_nope", "q_norm_nope"):
                attn.q_proj.register_forward_hook(_ApplyNorm(attn, "q_norm"))
            if attention_type in ("qk_norm_nope", "k_norm_nope"):
                attn.k_proj.register_forward_hook(_ApplyNorm(attn, "k_norm"))
        if softmax_scale is not None:
            attn.scaling = softmax_scale
    return model


def reference_model(
    config: LlamaConfig,
    *,
    attention_type: Optional[str] = None,
    softmax_scale: Optional[float] = None,
    seed: int = 0,
    attn_implementation: str = "eager",
    init_std: float = 0.2,
) -> LlamaForCausalLM:
    """HF Llama (RoPE) or the upstream-style DroPE construction of it (``attention_type`` set)."""
    torch.manual_seed(seed)
    config._attn_implementation = attn_implementation
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.normal_(0.0, init_std)
    if attention_type is None:
        return model
    return upstream_drope(model, config, attention_type, softmax_scale)


def save_checkpoint(
    model: LlamaForCausalLM,
    directory: Path,
    *,
    attention_type: Optional[str] = None,
    softmax_scale: Optional[float] = None,
    dtype: torch.dtype = torch.float32,
    prepend_bos: bool = True,
    max_shard_size: Optional[str] = None,
) -> Path:
    """Save ``model`` as a checkpoint directory; DroPE ones the way upstream saves them."""
    directory.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.to(dtype).save_pretrained(directory, **kwargs)
    model.to(torch.float32)
    save_tokenizer(directory, prepend_bos=prepend_bos)
    if attention_type is not None:
        config_path = directory / "config.json"
        config = json.loads(config_path.read_text())
        config["model_type"] = "llama_drope"
        config["architectures"] = ["DroPELlamaForCausalLM"]
        config["attention_type"] = attention_type
        config["auto_map"] = {
            "AutoConfig": "drope.DroPELlamaConfig",
            "AutoModelForCausalLM": "drope.DroPELlamaForCausalLM",
        }
        if softmax_scale is not None:
            config["softmax_scale"] = softmax_scale
        config_path.write_text(json.dumps(config, indent=2))
    return directory


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| / max |reference|, computed in float64 on the CPU (so a model's output
    on a GPU compares with a reference computed on the CPU)."""
    ours, reference = ours.detach().cpu().double(), reference.detach().cpu().double()
    return float((ours - reference).abs().max() / reference.abs().max())


def tensors_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``torch.equal`` on the CPU: same shape and bit-identical values, whichever device each is on."""
    return torch.equal(a.detach().cpu(), b.detach().cpu())


def plant_massive_qk(model: LlamaForCausalLM, *, layer: int = 1, strength: float = 60.0) -> None:
    """Give ``layer`` DroPE-like massive q/k values that make BOS an attention sink.

    Every token embedding gets +3 in hidden dim 1 and BOS gets 20 in hidden dim 0; in ``layer``
    the first dim of every head reads q from hidden dim 1 and k from hidden dim 0, scaled by
    ``strength``. Query norms reach ~1,000 and q.k ~10^5, past float16's 65,504, with the BOS key
    ahead of every other by a wide margin (no near-ties, so precision differences show up as
    precision, not as flipped argmaxes).
    """
    bos = model.config.bos_token_id
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[:, 1] += 3.0
        emb[bos, 0] = 20.0
        attn = model.model.layers[layer].self_attn
        for head in range(model.config.num_attention_heads):
            row = head * attn.head_dim
            attn.q_proj.weight[row].zero_()
            attn.q_proj.weight[row, 1] = strength
        for head in range(model.config.num_key_value_heads):
            row = head * attn.head_dim
            attn.k_proj.weight[row].zero_()
            attn.k_proj.weight[row, 0] = strength


def plant_massive_dims(model: LlamaForCausalLM, planted: dict[tuple[int, str], list[tuple[int, int]]], factor: float = 25.0) -> None:
    """Scale the projection rows of chosen (head, dim) entries so their sequence norm stands out.

    ``planted[(layer, "q"|"k"|"v")] = [(head, dim), ...]``.
    """
    with torch.no_grad():
        for (layer, tensor), entries in planted.items():
            attn = model.model.layers[layer].self_attn
            weight = getattr(attn, f"{tensor}_proj").weight
            for head, dim in entries:
                weight[head * attn.head_dim + dim] *= factor
