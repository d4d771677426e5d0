"""The DroPE recipe on a small Llama: pretrain with RoPE, drop rotary with ``to_drope``, recalibrate.

Everything runs through drope_lens's own model (a HookedTransformer loaded with
``requires_grad=True``); checkpoints are written with :func:`drope_lens.save_model`, the DroPE one
with ``model_type: llama_drope`` and ``attention_type: nope``. bf16 autocast on CUDA, float32 on
CPU; checkpoints saved in ``TrainConfig.save_dtype`` (float16: the bundled pair).
"""

from __future__ import annotations

import json
import logging
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

log = logging.getLogger(__name__)


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
    pretrain_steps: int = 6000
    recalibrate_fraction: float = 0.2  # recalibration steps as a share of pretraining steps (DroPE: 10-20%)
    batch_size: int = 128
    lr: float = 2e-3
    recalibrate_lr: float = 3e-3
    warmup: int = 200
    weight_decay: float = 0.1
    seed: int = 0
    tokenizer_documents: int = 100_000  # the tokenizer is trained on the first documents only
    save_dtype: str = "float16"
    device: str = "cuda" if torch.cuda.is_available() else "cpu"

    def __post_init__(self) -> None:
        if self.pretrain_steps < 1 or self.batch_size < 1:
            raise ValueError("pretrain_steps and batch_size must be at least 1.")
        if not 0 < self.recalibrate_fraction <= 1:
            raise ValueError(f"recalibrate_fraction={self.recalibrate_fraction}: must be in (0, 1].")

    @property
    def recalibrate_steps(self) -> int:
        return max(1, round(self.pretrain_steps * self.recalibrate_fraction))


PAD = -1  # marks padding in packed rows: replaced by EOS as input, ignored as a target


def pack(tokenizer, texts: Sequence[str], context: int, open_rows: int = 64) -> torch.Tensor:
    """Documents (BOS + text + EOS) packed whole into ``[n, context]`` rows, first fit.

    Each document goes into the first of up to ``open_rows`` partly filled rows with room for it,
    so every row starts with a document's BOS and no document that fits a context is cut in two;
    the few longer ones are split. Unused slots hold ``PAD`` (-1). Deterministic given ``texts``.
    """
    eos = tokenizer.eos_token_id
    rows: list[list[int]] = []
    pool: list[list[int]] = []
    for encoded in tokenizer(list(texts), add_special_tokens=True)["input_ids"]:
        doc = list(encoded) + [eos]
        while len(doc) > context:
            rows.append(doc[:context])
            doc = doc[context:]
        for row in pool:
            if len(row) + len(doc) <= context:
                row.extend(doc)
                break
        else:
            pool.append(doc)
            if len(pool) > open_rows:
                fullest = max(range(len(pool)), key=lambda i: len(pool[i]))
                rows.append(pool.pop(fullest))
    rows.extend(pool)
    if not rows:
        raise ValueError("no documents to pack.")
    data = torch.full((len(rows), context), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        data[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return data


def next_token_loss(model, batch: torch.Tensor, eos_token_id: int, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy (nats per target token, float32), padding excluded.

    ``reduction="sum"`` returns the summed loss, for token-weighted averages across batches.
    """
    logits = model(torch.where(batch == PAD, eos_token_id, batch))
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), batch[:, 1:].flatten(), ignore_index=PAD,
                           reduction=reduction)


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
    eos_token_id: int,
    desc: str = "train",
) -> "TrainLog":
    """AdamW with linear warmup and cosine decay over ``steps`` batches drawn from ``data``.

    Returns the loss of every step and the count of non-padding tokens trained on. Batches are
    sampled with a seeded generator.
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
    losses, tokens = [], 0
    bar = tqdm(range(steps), desc=desc, leave=False)
    for step in bar:
        rows = torch.randint(0, data.shape[0], (batch_size,), generator=generator)
        batch = data[rows]
        tokens += int((batch != PAD).sum())
        batch = batch.to(device, non_blocking=True)
        with autocast:
            loss = next_token_loss(model, batch, eos_token_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.detach())
        if (step + 1) % 100 == 0 or step + 1 == steps:  # one host sync per 100 steps
            recent = float(torch.stack(losses[-100:]).mean())
            bar.set_postfix(loss=f"{recent:.3f}")
            log.info("%s step %d/%d: mean loss of the last %d steps %.4f", desc, step + 1, steps,
                     min(100, len(losses)), recent)
    model.eval()
    return TrainLog([float(x) for x in torch.stack(losses).cpu()] if losses else [], tokens)


@dataclass
class TrainLog:
    """Per-step losses (nats/token) and the non-padding tokens trained on."""

    losses: list[float]
    tokens: int


@torch.inference_mode()
def evaluate_loss(model, data: torch.Tensor, eos_token_id: int, batch_size: int = 32) -> float:
    """Mean next-token loss over every non-padding target token of ``data`` (nats/token)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, data.shape[0], batch_size):
        batch = data[start : start + batch_size].to(device)
        total += float(next_token_loss(model, batch, eos_token_id, reduction="sum"))
        count += int((batch[:, 1:] != PAD).sum())
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


def _write_toy_meta(directory: Path, stage: str, corpus_config, model_config, train_config, tokens: dict) -> None:
    meta = {"stage": stage, "corpus": asdict(corpus_config), "model": asdict(model_config),
            "training": asdict(train_config), "tokens": tokens}
    (directory / "toy.json").write_text(json.dumps(meta, indent=2))


def train_toy_pair(out: Path, corpus_config: CorpusConfig = CorpusConfig(), model_config: ToyModelConfig = ToyModelConfig(),
                   train_config: TrainConfig = TrainConfig()) -> ToyRun:
    """Corpus -> tokenizer -> RoPE pretraining -> ``to_drope`` -> recalibration -> two checkpoints.

    Writes ``out/rope`` and ``out/drope`` (Hugging Face format, ``train_config.save_dtype``, each
    with a ``toy.json`` recording the configs and token counts) and ``out/training.json`` (configs,
    token counts, loss curves, held-out losses in nats/token, wall times in seconds).
    """
    out = Path(out)
    started = time.perf_counter()
    train_docs, heldout_docs = build_corpus(corpus_config)
    tokenizer_docs = train_docs[: train_config.tokenizer_documents]
    tokenizer = train_tokenizer((d.text for d in tokenizer_docs), out / "tokenizer", model_config.vocab_size)
    data = pack(tokenizer, [d.text for d in train_docs], model_config.context)
    heldout = pack(tokenizer, [d.text for d in heldout_docs], model_config.context)
    corpus_seconds = time.perf_counter() - started
    init_checkpoint(out / "init", model_config, tokenizer, train_config.seed)
    rope = load_model(out / "init", device=train_config.device, requires_grad=True)
    eos = tokenizer.eos_token_id
    kwargs = dict(batch_size=train_config.batch_size, weight_decay=train_config.weight_decay,
                  warmup=train_config.warmup, eos_token_id=eos)
    t0 = time.perf_counter()
    pretrain = train(rope, data, train_config.pretrain_steps, lr=train_config.lr, seed=train_config.seed,
                     desc="pretrain (RoPE)", **kwargs)
    pretrain_seconds = time.perf_counter() - t0
    rope_heldout = evaluate_loss(rope, heldout, eos)

    drope = to_drope(rope)  # a deep copy: keeps which parameters train (the zero biases do not)
    heldout_after_drop = evaluate_loss(drope, heldout, eos)
    t0 = time.perf_counter()
    recal = train(drope, data, train_config.recalibrate_steps, lr=train_config.recalibrate_lr,
                  seed=train_config.seed + 1, desc="recalibrate (DroPE)", **kwargs)
    recal_seconds = time.perf_counter() - t0
    drope_heldout = evaluate_loss(drope, heldout, eos)
    tokens = {
        "corpus_documents": len(train_docs), "corpus_tokens": int((data != PAD).sum()),
        "heldout_tokens": int((heldout != PAD).sum()),
        "pretrain_tokens": pretrain.tokens, "recalibrate_tokens": recal.tokens,
        "recalibrate_share": recal.tokens / pretrain.tokens,
        "pretrain_epochs": pretrain.tokens / max(1, int((data != PAD).sum())),
    }
    save_model(rope, out / "rope", dtype=train_config.save_dtype)
    save_model(drope, out / "drope", dtype=train_config.save_dtype)
    _write_toy_meta(out / "rope", "pretrained with RoPE", corpus_config, model_config, train_config, tokens)
    _write_toy_meta(out / "drope", "rotary dropped (to_drope), recalibrated", corpus_config, model_config,
                    train_config, tokens)
    report = {
        "corpus": asdict(corpus_config), "model": asdict(model_config), "training": asdict(train_config),
        **tokens,
        "corpus_seconds": corpus_seconds, "pretrain_seconds": pretrain_seconds, "recalibrate_seconds": recal_seconds,
        "total_seconds": time.perf_counter() - started,
        "heldout_loss": {"rope": rope_heldout, "drope_before_recalibration": heldout_after_drop, "drope": drope_heldout},
        "pretrain_losses": pretrain.losses, "recalibrate_losses": recal.losses,
    }
    (out / "training.json").write_text(json.dumps(report, indent=2))
    return ToyRun(out / "rope", out / "drope", report)
