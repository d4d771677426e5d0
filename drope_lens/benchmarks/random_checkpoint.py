"""Write a Llama-shaped checkpoint with random weights (the stand-in for timing and memory).

Speed and memory do not depend on weight values, so a Llama-2-7B-shaped checkpoint of random
bf16 weights measures what the real one would. The layout is Hugging Face's: ``config.json``,
``model-0000k-of-0000n.safetensors`` shards with ``model.safetensors.index.json``. A DroPE twin
(``model_type`` ``llama_drope``) can point at the same shards through symlinks.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file


@dataclass(frozen=True)
class LlamaShape:
    """Llama dimensions; the default is Llama-2-7B."""

    n_layers: int = 32
    d_model: int = 4096
    n_heads: int = 32
    n_kv_heads: int = 32
    d_mlp: int = 11008
    vocab: int = 32000
    max_position_embeddings: int = 4096

    def tensors(self) -> dict[str, tuple[int, ...]]:
        d_head = self.d_model // self.n_heads
        shapes = {"model.embed_tokens.weight": (self.vocab, self.d_model)}
        for i in range(self.n_layers):
            p = f"model.layers.{i}"
            shapes.update({
                f"{p}.input_layernorm.weight": (self.d_model,),
                f"{p}.self_attn.q_proj.weight": (self.n_heads * d_head, self.d_model),
                f"{p}.self_attn.k_proj.weight": (self.n_kv_heads * d_head, self.d_model),
                f"{p}.self_attn.v_proj.weight": (self.n_kv_heads * d_head, self.d_model),
                f"{p}.self_attn.o_proj.weight": (self.d_model, self.n_heads * d_head),
                f"{p}.post_attention_layernorm.weight": (self.d_model,),
                f"{p}.mlp.gate_proj.weight": (self.d_mlp, self.d_model),
                f"{p}.mlp.up_proj.weight": (self.d_mlp, self.d_model),
                f"{p}.mlp.down_proj.weight": (self.d_model, self.d_mlp),
            })
        shapes["model.norm.weight"] = (self.d_model,)
        shapes["lm_head.weight"] = (self.vocab, self.d_model)
        return shapes

    def config(self) -> dict:
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": self.d_model, "intermediate_size": self.d_mlp,
            "num_hidden_layers": self.n_layers, "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads, "vocab_size": self.vocab,
            "max_position_embeddings": self.max_position_embeddings, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
            "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
        }


SHAPES = {
    "tiny": LlamaShape(n_layers=2, d_model=128, n_heads=4, n_kv_heads=2, d_mlp=256, vocab=512,
                       max_position_embeddings=512),
    "llama2-7b": LlamaShape(),
}


def write_random_checkpoint(
    directory: Path,
    shape: LlamaShape = LlamaShape(),
    *,
    seed: int = 0,
    shard_bytes: int = 5 * 2**30,
    device: Optional[str] = None,
    massive_dims_per_head: int = 0,
) -> int:
    """Write random bf16 weights (std 0.02, norms 1) to ``directory``; returns the weight bytes.

    ``massive_dims_per_head`` > 0 scales that many q_proj and k_proj rows per head (the last dims
    of the head, i.e. low-frequency rotary dims) by 20, so that Exp 1/2 find massive values as
    they do in trained Llamas; random weights alone have none.
    """
    directory.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator(device=device).manual_seed(seed)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = total = 0
    for name, dims in shape.tensors().items():
        if name.endswith("norm.weight"):
            tensor = torch.ones(dims, dtype=torch.bfloat16)
        else:
            tensor = torch.randn(dims, generator=generator, device=device) * 0.02
            if massive_dims_per_head and name.endswith(("q_proj.weight", "k_proj.weight")):
                d_head = shape.d_model // shape.n_heads
                rows = tensor.view(-1, d_head, tensor.shape[-1])
                rows[:, d_head - massive_dims_per_head :] *= 20.0
            tensor = tensor.to(torch.bfloat16).cpu()
        nbytes = tensor.numel() * 2
        if size and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
        total += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, directory / file, metadata={"format": "pt"})
        weight_map.update({name: file for name in shard})
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    (directory / "config.json").write_text(json.dumps(shape.config(), indent=2))
    return total


def massive_checkpoint(workdir: Path) -> Path:
    """The Llama-2-7B-shaped random checkpoint with 2 massive q/k dims per head that the experiment
    benchmarks share, written under ``workdir`` once and reused."""
    directory = workdir / "rope_massive"
    if not (directory / "config.json").exists():
        write_random_checkpoint(directory, LlamaShape(), massive_dims_per_head=2)
    return directory


def bench_pair(workdir: Path) -> tuple[Path, Path]:
    """The Llama-2-7B-shaped random pair every GPU benchmark shares (13.5 GB, written once under
    ``workdir``): :func:`massive_checkpoint` with a tokenizer trained on the built-in texts and the
    passkey fillers and templates, and its DroPE twin (symlinked weights, ``attention_type`` nope)."""
    from drope_lens.measurement import passkey
    from drope_lens.measurement.texts import builtin_texts

    rope_dir, drope_dir = massive_checkpoint(workdir), workdir / "drope_massive"
    if not (rope_dir / "tokenizer.json").exists():
        texts = [t.text for t in builtin_texts()] + [passkey.SIMPLE_FILLER * 20, passkey.RULER_FILLER * 20,
                                                    passkey.RULER_TEMPLATE, passkey.VERIFY_TEMPLATE]
        write_tokenizer(rope_dir, texts)
    if not (drope_dir / "config.json").exists():
        write_drope_twin(rope_dir, drope_dir)
    return rope_dir, drope_dir


def write_drope_twin(rope_dir: Path, drope_dir: Path, attention_type: str = "nope") -> None:
    """A DroPE checkpoint sharing ``rope_dir``'s weights (symlinks), config as upstream saves it."""
    drope_dir.mkdir(parents=True, exist_ok=True)
    for file in rope_dir.iterdir():
        if file.name != "config.json" and not (drope_dir / file.name).exists():
            os.symlink(file.resolve(), drope_dir / file.name)
    config = json.loads((rope_dir / "config.json").read_text())
    config.update(model_type="llama_drope", architectures=["DroPELlamaForCausalLM"], attention_type=attention_type)
    (drope_dir / "config.json").write_text(json.dumps(config, indent=2))


def write_tokenizer(directory: Path, texts: list[str], vocab_size: int = 8000) -> None:
    """A byte-level BPE trained on ``texts`` (see :func:`drope_lens.toy.tokenizer.train_tokenizer`),
    so text experiments run on a random-weight checkpoint; ids stay below ``vocab_size``."""
    from ..toy.tokenizer import train_tokenizer

    train_tokenizer(texts, directory, vocab_size=vocab_size)
