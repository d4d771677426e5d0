"""The DroPE recipe on a small Llama: pretrain with RoPE, drop rotary with ``to_drope``, recalibrate.

Everything runs through drope_lens's own model (a HookedTransformer loaded with
``requires_grad=True``); checkpoints are written with :func:`drope_lens.save_model`, the DroPE one
with ``model_type: llama_drope`` and ``attention_type: nope``. bf16 autocast on CUDA, float32 on
CPU. This is part 1 of issue 4: the bundled pair itself has not been trained yet.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..convert import to_drope
from ..loading import load_model
from ..saving import save_model
from .corpus import CorpusConfig, build_corpus
from .tokenizer import train_tokenizer


@dataclass(frozen=True)
class ToyModelConfig:
    n_layers: int = 4
    d_model: int = 256
    n_heads: int = 8
    n_kv_heads: int = 8
    d_mlp: int = 704
    context: int = 256
    rope_theta: float = 10_000.0
    vocab_size: int = 4096


@dataclass(frozen=True)
class TrainConfig:
    pretrain_steps: int = 3000
    recalibrate_fraction: float = 0.15  # recalibration tokens as a share of pretraining tokens
    batch_size: int = 64
    lr: float = 2e-3
    recalibrate_lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.1
    seed: int = 0
    device: str = "cuda" if torch.cuda.is_available() else "cpu"

    def __post_init__(self) -> None:
        if self.pretrain_steps < 1 or self.batch_size < 1:
            raise ValueError("pretrain_steps and batch_size must be at least 1.")
        if not 0 < self.recalibrate_fraction <= 1:
            raise ValueError(f"recalibrate_fraction={self.recalibrate_fraction}: must be in (0, 1].")

    @property
    def recalibrate_steps(self) -> int:
        return max(1, round(self.pretrain_steps * self.recalibrate_fraction))


def pack(tokenizer, texts: Sequence[str], context: int) -> torch.Tensor:
    """Documents encoded with BOS, each followed by EOS, concatenated and cut into ``[n, context]`` rows."""
    ids: list[int] = []
    for encoded in tokenizer(list(texts), add_special_tokens=True)["input_ids"]:
        ids.extend(encoded)
        ids.append(tokenizer.eos_token_id)
    n = len(ids) // context
    if n == 0:
        raise ValueError(f"{len(ids)} tokens are fewer than one context of {context}.")
    return torch.tensor(ids[: n * context], dtype=torch.long).view(n, context)


def next_token_loss(model, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats), computed in float32."""
    logits = model(batch)
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), batch[:, 1:].flatten())


def train(
    model,
    data: torch.Tensor,
    steps: int,
    *,
    batch_size: int,
    lr: float,
    warmup: int,
    weight_decay: float,
    seed: int,
    desc: str = "train",
) -> list[float]:
    """AdamW with linear warmup and cosine decay over ``steps`` batches drawn from ``data``.

    Returns the loss of every step. Batches are sampled with a seeded generator.
    """
    device = next(model.parameters()).device
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; load it with requires_grad=True.")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(seed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    losses = []
    for step in tqdm(range(steps), desc=desc, leave=False):
        rows = torch.randint(0, data.shape[0], (batch_size,), generator=generator)
        batch = data[rows].to(device)
        with autocast:
            loss = next_token_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


@torch.inference_mode()
def evaluate_loss(model, data: torch.Tensor, batch_size: int = 32) -> float:
    """Mean next-token loss over all rows of ``data`` (nats/token)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, data.shape[0], batch_size):
        batch = data[start : start + batch_size].to(device)
        total += float(next_token_loss(model, batch)) * batch.shape[0]
        count += batch.shape[0]
    return total / count


def init_checkpoint(directory: Path, model_config: ToyModelConfig, tokenizer, seed: int) -> Path:
    """A randomly initialised Llama (transformers' init) with the project tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=model_config.d_model, intermediate_size=model_config.d_mlp,
        num_hidden_layers=model_config.n_layers, num_attention_heads=model_config.n_heads,
        num_key_value_heads=model_config.n_kv_heads, max_position_embeddings=model_config.context,
        rope_theta=model_config.rope_theta, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@dataclass
class ToyRun:
    """What ``train_toy_pair`` produced: checkpoint paths, losses and token counts."""

    rope: Path
    drope: Path
    report: dict = field(default_factory=dict)


def train_toy_pair(out: Path, corpus_config: CorpusConfig = CorpusConfig(), model_config: ToyModelConfig = ToyModelConfig(),
                   train_config: TrainConfig = TrainConfig()) -> ToyRun:
    """Corpus -> tokenizer -> RoPE pretraining -> ``to_drope`` -> recalibration -> two checkpoints.

    Writes ``out/rope``, ``out/drope`` (Hugging Face format) and ``out/training.json`` (configs,
    token counts, loss curves, held-out losses, wall times).
    """
    out = Path(out)
    started = time.perf_counter()
    train_docs, heldout_docs = build_corpus(corpus_config)
    tokenizer = train_tokenizer((d.text for d in train_docs), out / "tokenizer", model_config.vocab_size)
    data = pack(tokenizer, [d.text for d in train_docs], model_config.context)
    heldout = pack(tokenizer, [d.text for d in heldout_docs], model_config.context)
    init_checkpoint(out / "init", model_config, tokenizer, train_config.seed)
    rope = load_model(out / "init", device=train_config.device, requires_grad=True)
    kwargs = dict(batch_size=train_config.batch_size, weight_decay=train_config.weight_decay,
                  warmup=train_config.warmup, seed=train_config.seed)
    t0 = time.perf_counter()
    pretrain_losses = train(rope, data, train_config.pretrain_steps, lr=train_config.lr, desc="pretrain (RoPE)", **kwargs)
    pretrain_seconds = time.perf_counter() - t0
    rope_heldout = evaluate_loss(rope, heldout)
    save_model(rope, out / "rope")

    drope = to_drope(rope)
    drope.requires_grad_(True)
    heldout_after_drop = evaluate_loss(drope, heldout)
    t0 = time.perf_counter()
    recal_losses = train(drope, data, train_config.recalibrate_steps, lr=train_config.recalibrate_lr,
                         desc="recalibrate (DroPE)", **{**kwargs, "seed": train_config.seed + 1})
    recal_seconds = time.perf_counter() - t0
    drope_heldout = evaluate_loss(drope, heldout)
    save_model(drope, out / "drope")
    tokens_per_step = train_config.batch_size * model_config.context
    report = {
        "corpus": asdict(corpus_config), "model": asdict(model_config), "training": asdict(train_config),
        "train_tokens_available": int(data.numel()), "heldout_tokens": int(heldout.numel()),
        "pretrain_tokens": train_config.pretrain_steps * tokens_per_step,
        "recalibrate_tokens": train_config.recalibrate_steps * tokens_per_step,
        "pretrain_seconds": pretrain_seconds, "recalibrate_seconds": recal_seconds,
        "total_seconds": time.perf_counter() - started,
        "heldout_loss": {"rope": rope_heldout, "drope_before_recalibration": heldout_after_drop, "drope": drope_heldout},
        "pretrain_losses": pretrain_losses, "recalibrate_losses": recal_losses,
    }
    (out / "training.json").write_text(json.dumps(report, indent=2))
    return ToyRun(out / "rope", out / "drope", report)
