"""Tiny checkpoints of every supported model family, built with Hugging Face ``transformers``.

The independent reference of each is the ``transformers`` class itself (``LlamaForCausalLM`` with
``rope_type="llama3"``, ``Qwen2ForCausalLM``, ``MistralForCausalLM``), and for DroPE the way
upstream SakanaAI/DroPE builds its ``NoPE*``/``QKNormNoPE*`` attention from that class (see
:mod:`builders`): rotary angles zeroed (cos = 1, sin = 0), an ``nn.RMSNorm`` over the full q/k
projection applied after ``q_proj``/``k_proj`` (bias included, as upstream's forward does),
``softmax_scale`` written into ``scaling``, and both norms saved for every ``*_norm_nope`` type.
Config files are saved as upstream's factory names them: ``model_type`` ``<type>_drope``,
``architectures`` ``["DroPE<Architecture>"]``. No downloads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from builders import WORDS, save_tokenizer, upstream_drope

CLASSES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
}

#: Llama-3.1-style RoPE on a tiny scale: with head_dim 16 and theta 500k the wavelengths are
#: 6.3, 32, 167, ... positions, so an original context of 64 puts one pair in each of the three
#: llama3 bands (kept, interpolated, divided by factor).
LLAMA3_ROPE = {
    "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
    "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
}


@dataclass(frozen=True)
class Case:
    """One tiny checkpoint layout of a family."""

    name: str
    family: str
    config: dict = field(default_factory=dict)
    bos: bool = True  # the tokenizer prepends BOS (Qwen2's and SmolLM2's do not)

    def make_config(self, **overrides: Any):
        kwargs = dict(
            vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
        )
        kwargs.update(self.config)
        kwargs.update(overrides)
        return CLASSES[self.family][0](**kwargs)


CASES = {
    case.name: case
    for case in (
        Case("llama3-untied", "llama", {"rope_parameters": dict(LLAMA3_ROPE)}),
        Case("llama3-tied", "llama", {"rope_parameters": dict(LLAMA3_ROPE), "tie_word_embeddings": True}),
        Case("smollm2", "llama", {"tie_word_embeddings": True}, bos=False),
        Case("qwen2", "qwen2", {"tie_word_embeddings": True, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
                                "rms_norm_eps": 1e-6}, bos=False),
        # Qwen2 with use_sliding_window: layers >= max_window_layers (here layer 1) use the window
        Case("qwen2-sliding", "qwen2", {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 1},
             bos=False),
        Case("mistral", "mistral", {"sliding_window": None}),
        Case("mistral-sliding", "mistral", {"sliding_window": 5}),
    )
}


def save_tokenizer_without_bos(directory: Path) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over WORDS that, like Qwen2's, defines no BOS token at all."""
    vocab = {"<unk>": 0, "<|endoftext|>": 1, "</s>": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<unk>")
    fast.save_pretrained(directory)
    return fast


def family_reference(
    case: Case,
    *,
    attention_type: Optional[str] = None,
    softmax_scale: Optional[float] = None,
    seed: int = 0,
    init_std: float = 0.2,
    **config_overrides: Any,
) -> nn.Module:
    """The ``transformers`` model of ``case`` (RoPE), or upstream's DroPE construction of it."""
    torch.manual_seed(seed)
    config = case.make_config(**config_overrides)
    config._attn_implementation = "eager"
    model = CLASSES[case.family][1](config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.normal_(0.0, init_std)
    if attention_type is None:
        return model
    return upstream_drope(model, config, attention_type, softmax_scale)


def save_family_checkpoint(
    model: nn.Module,
    case: Case,
    directory: Path,
    *,
    attention_type: Optional[str] = None,
    softmax_scale: Optional[float] = None,
) -> Path:
    """Save ``model``; DroPE ones with the config upstream's factory writes."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    if case.bos:
        save_tokenizer(directory, prepend_bos=True)
    else:
        save_tokenizer_without_bos(directory)
    if attention_type is not None:
        config_path = directory / "config.json"
        config = json.loads(config_path.read_text())
        architecture = type(model).__name__
        config["model_type"] = f"{config['model_type']}_drope"
        config["architectures"] = [f"DroPE{architecture}"]
        config["attention_type"] = attention_type
        config["auto_map"] = {"AutoModelForCausalLM": f"drope.DroPE{architecture}"}
        if softmax_scale is not None:
            config["softmax_scale"] = softmax_scale
        config_path.write_text(json.dumps(config, indent=2))
    return directory


def edit_config(directory: Path, **changes: Any) -> None:
    """Rewrite ``config.json`` with ``changes`` (a value of ``...`` deletes the field)."""
    path = directory / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config, indent=2))
