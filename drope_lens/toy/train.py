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
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from tqdm.auto import tqdm

from ..model.convert import to_drope
from ..model.loading import load_model
from ..model.saving import save_model
from .corpus import DEFAULT_WEIGHTS, WEIGHTS_V2, CorpusConfig, heldout_documents, training_documents
from .recipes import ATTENTION_TYPES, RECIPES, Recipe, add_arguments  # noqa: F401 (re-exported)
from .tokenizer import train_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToyModelConfig:
    n_layers: int = 6
    d_model: int = 256
    n_heads: int = 8
    n_kv_heads: int = 8
    d_mlp: int = 704
    context: int = 256
    rope_theta: float = 10_000.0
    vocab_size: int = 4096


@dataclass(frozen=True)
class TrainConfig:
    pretrain_steps: int = 2500
    recalibrate_fraction: float = 0.4  # kept for the record; each recipe carries its own fraction
    batch_size: int = 128
    lr: float = 2e-3
    recalibrate_lr: float = 3e-3
    warmup: int = 200
    weight_decay: float = 0.1
    seed: int = 0
    tokenizer_documents: int = 100_000  # the tokenizer is trained on the first documents only
    save_dtype: str = "float16"
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    workers: int = 1  # processes for corpus generation and packing

    def __post_init__(self) -> None:
        if self.pretrain_steps < 1 or self.batch_size < 1:
            raise ValueError("pretrain_steps and batch_size must be at least 1.")
        if not 0 < self.recalibrate_fraction <= 2:
            raise ValueError(f"recalibrate_fraction={self.recalibrate_fraction}: must be in (0, 2].")

    @property
    def recalibrate_steps(self) -> int:
        return max(1, round(self.pretrain_steps * self.recalibrate_fraction))

    def steps_of(self, recipe: Recipe) -> int:
        return max(1, round(self.pretrain_steps * recipe.fraction))


PAD = -1  # marks padding in packed rows: replaced by EOS as input, ignored as a target


def pack_ids(documents: Sequence[Sequence[int]], context: int, eos: int, open_rows: int = 64,
             masks: Optional[Sequence[Sequence[bool]]] = None):
    """Token-id documents (BOS included; EOS appended here) packed whole into ``[n, context]`` rows,
    first fit (see :func:`pack`). With ``masks`` (one flag per token of each document), also returns
    the flags packed the same way (``[n, context]`` bool, False for EOS and padding)."""
    rows: list[list[int]] = []
    pool: list[list[int]] = []
    flag_rows: list[list[bool]] = []
    flag_pool: list[list[bool]] = []
    for index, encoded in enumerate(documents):
        doc = list(encoded) + [eos]
        flags = (list(masks[index]) if masks is not None else [False] * len(encoded)) + [False]
        while len(doc) > context:
            rows.append(doc[:context])
            flag_rows.append(flags[:context])
            doc, flags = doc[context:], flags[context:]
        for row, flag_row in zip(pool, flag_pool):
            if len(row) + len(doc) <= context:
                row.extend(doc)
                flag_row.extend(flags)
                break
        else:
            pool.append(doc)
            flag_pool.append(flags)
            if len(pool) > open_rows:
                fullest = max(range(len(pool)), key=lambda i: len(pool[i]))
                rows.append(pool.pop(fullest))
                flag_rows.append(flag_pool.pop(fullest))
    rows.extend(pool)
    flag_rows.extend(flag_pool)
    if not rows:
        raise ValueError("no documents to pack.")
    data = torch.full((len(rows), context), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        data[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    if masks is None:
        return data
    mask = torch.zeros((len(rows), context), dtype=torch.bool)
    for i, flag_row in enumerate(flag_rows):
        mask[i, : len(flag_row)] = torch.tensor(flag_row, dtype=torch.bool)
    return data, mask


def pack(tokenizer, texts: Sequence[str], context: int, open_rows: int = 64) -> torch.Tensor:
    """Documents (BOS + text + EOS) packed whole into ``[n, context]`` rows, first fit.

    Each document goes into the first of up to ``open_rows`` partly filled rows with room for it,
    so every row starts with a document's BOS and no document that fits a context is cut in two;
    the few longer ones are split. Unused slots hold ``PAD`` (-1). Deterministic given ``texts``.
    """
    return pack_ids(tokenizer(list(texts), add_special_tokens=True)["input_ids"], context, tokenizer.eos_token_id,
                    open_rows)


def pack_masked(tokenizer, texts: Sequence[str], context: int, open_rows: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pack`, plus a ``[n, context]`` bool mask of haystack tokens: tokens lying wholly inside a
    :func:`~drope_lens.toy.corpus.haystack_spans` span of their document (filler or prose around
    the needles of a retrieval document; never BOS, EOS, needles, template or question)."""
    from .corpus import haystack_spans

    encoded = tokenizer(list(texts), add_special_tokens=True, return_offsets_mapping=True)
    masks = []
    for text, offsets in zip(texts, encoded["offset_mapping"]):
        spans = haystack_spans(text)
        masks.append([b > a and any(s <= a and b <= e for s, e in spans) for a, b in offsets] if spans
                     else [False] * len(offsets))
    return pack_ids(encoded["input_ids"], context, tokenizer.eos_token_id, open_rows, masks)


PACK_CHUNK = 50_000  # documents per packing job (rows never mix chunks)


def _pack_chunk(args):
    tokenizer, texts, context, masked = args
    return pack_masked(tokenizer, texts, context) if masked else pack(tokenizer, texts, context)


def pack_parallel(tokenizer, texts: Sequence[str], context: int, workers: int = 1, masked: bool = False):
    """:func:`pack` (``masked``: :func:`pack_masked`, returning ``(data, mask)``) of chunks of
    :data:`PACK_CHUNK` documents, concatenated; ``workers`` processes (the result does not depend
    on ``workers``)."""
    jobs = [(tokenizer, list(texts[i : i + PACK_CHUNK]), context, masked) for i in range(0, len(texts), PACK_CHUNK)]
    # processes are spawned, not forked: a fork after torch or tokenizers started their thread pools
    # can hang (it did on the GPU machine, issue 20's first run)
    if workers <= 1 or len(jobs) == 1:
        parts = [_pack_chunk(job) for job in jobs]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = list(pool.map(_pack_chunk, jobs))
    if masked:
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return torch.cat(parts)


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
    haystack: Optional[torch.Tensor] = None,
    dilution: float = 0.0,
) -> "TrainLog":
    """AdamW with linear warmup and cosine decay over ``steps`` batches drawn from ``data``.

    Returns the loss of every step and the count of non-padding tokens trained on. Batches are
    sampled with a seeded generator.

    Dilution augmentation (``dilution > 0``, ``haystack``: the bool mask of :func:`pack_masked`):
    in every layer, the attention scores of each row's haystack keys get ``+ ln m`` (the row's
    ``ln m`` drawn uniformly from ``[0, dilution]``, and 0 for a quarter of the rows). Without
    positional encodings that is exactly what a haystack with every token repeated ``m`` times
    would do to attention: a model trained so sees the dilution of a longer haystack within its
    trained context.
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
    if dilution > 0 and (haystack is None or haystack.shape != data.shape):
        raise ValueError(f"dilution={dilution} needs a haystack mask of the data's shape {tuple(data.shape)}.")
    bias: list[torch.Tensor] = []
    hooks = dilution_hooks(bias) if dilution > 0 else []
    losses, tokens = [], 0
    bar = tqdm(range(steps), desc=desc, leave=False)
    for step in bar:
        rows = torch.randint(0, data.shape[0], (batch_size,), generator=generator)
        batch = data[rows]
        tokens += int((batch != PAD).sum())
        batch = batch.to(device, non_blocking=True)
        if hooks:
            log_m = torch.rand(batch_size, generator=generator) * dilution
            log_m = torch.where(torch.rand(batch_size, generator=generator) < 0.25, 0.0, log_m)
            bias[:] = [dilution_bias(log_m, haystack[rows]).to(device)]
        with autocast, model.hooks(fwd_hooks=hooks):
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


def dilution_bias(log_m: Float[torch.Tensor, "batch"], haystack: Bool[torch.Tensor, "batch pos"]
                  ) -> Float[torch.Tensor, "batch 1 1 pos"]:
    """The additive attention-score bias of the dilution augmentation: ``ln m`` of each row on its
    haystack keys, 0 elsewhere (broadcast over heads and queries)."""
    return (log_m[:, None] * haystack.float())[:, None, None, :]


def dilution_hooks(bias: list) -> list:
    """Forward hooks adding ``bias[0]`` (see :func:`dilution_bias`; a list so that each step can
    replace it) to the attention scores of every layer. The bias goes to each layer's scores'
    device (a no-op when it is there already), so one built on the CPU serves a model on a GPU,
    or split over several."""
    return [(lambda name: name.endswith("attn.hook_attn_scores"),
             lambda scores, hook: scores + bias[0].to(scores.device))]


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


def _write_toy_meta(directory: Path, stage: str, corpus_config, model_config, train_config, tokens: dict,
                    recipe: Optional[Recipe] = None) -> None:
    meta = {"stage": stage, "corpus": asdict(corpus_config), "model": asdict(model_config),
            "training": asdict(train_config), "tokens": tokens}
    if recipe is not None:
        meta["recipe"] = asdict(recipe)
    (directory / "toy.json").write_text(json.dumps(meta, indent=2))


def to_drope_recipe(rope, recipe: Recipe):
    """``to_drope(rope)``, then for ``qk_norm_nope`` full-width q/k RMSNorms (unit weights, trained)."""
    from dataclasses import replace

    from ..model.attention import FullWidthRMSNorm
    from ..model.transformer import attention_settings

    drope = to_drope(rope)
    if recipe.attention_type == "nope":
        return drope
    spec = replace(drope.lens, attention_type=recipe.attention_type)
    drope.lens = spec
    device = next(drope.parameters()).device
    for index, block in enumerate(drope.blocks):
        attn = block.attn
        attn.settings = attention_settings(spec, index)
        n_kv = attn.cfg.n_key_value_heads or attn.cfg.n_heads
        attn.q_norm = FullWidthRMSNorm(attn.cfg.n_heads * attn.cfg.d_head, attn.cfg.eps, attn.cfg.dtype).to(device)
        attn.k_norm = FullWidthRMSNorm(n_kv * attn.cfg.d_head, attn.cfg.eps, attn.cfg.dtype).to(device)
    return drope


def _json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


def _stage_corpus(out: Path, corpus_config: CorpusConfig, model_config: ToyModelConfig, train_config: TrainConfig,
                  say: Callable[[str], None]):
    """Stage 1: documents, tokenizer, packed rows (``out/corpus``); loaded if already there."""
    from transformers import AutoTokenizer

    directory = out / "corpus"
    done = _json(directory / "corpus.json")
    if done is not None:
        say(f"corpus: loaded from {directory}")
        return AutoTokenizer.from_pretrained(out / "tokenizer"), torch.load(directory / "data.pt"), \
            torch.load(directory / "heldout.pt"), done
    started = time.perf_counter()
    train_docs = training_documents(corpus_config, workers=train_config.workers)
    heldout_docs = heldout_documents(corpus_config)
    say(f"corpus: {len(train_docs):,} documents in {time.perf_counter() - started:.1f} s")
    tokenizer = train_tokenizer((d.text for d in train_docs[: train_config.tokenizer_documents]), out / "tokenizer",
                                model_config.vocab_size)
    texts = [d.text for d in train_docs]
    data = pack_parallel(tokenizer, texts, model_config.context, train_config.workers)
    heldout = pack(tokenizer, [d.text for d in heldout_docs], model_config.context)
    kinds: dict[str, int] = {}
    for d in train_docs:
        kinds[d.kind] = kinds.get(d.kind, 0) + 1
    sample = tokenizer([d.text for d in train_docs[:20_000]], add_special_tokens=True)["input_ids"]
    longest: dict[str, int] = {}
    for d, ids in zip(train_docs, sample):
        longest[d.kind] = max(longest.get(d.kind, 0), len(ids) + 1)
    info = {"corpus_documents": len(train_docs), "corpus_tokens": int((data != PAD).sum()),
            "heldout_tokens": int((heldout != PAD).sum()), "rows": int(data.shape[0]), "tokenizer_size": len(tokenizer),
            "documents_per_kind": kinds, "longest_document_tokens_first_20000": longest,
            "corpus_seconds": time.perf_counter() - started}
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(data, directory / "data.pt")
    torch.save(heldout, directory / "heldout.pt")
    (directory / "corpus.json").write_text(json.dumps(info, indent=2))
    say(f"corpus: {info['corpus_tokens']:,} tokens in {info['rows']:,} rows, tokenizer {len(tokenizer)} tokens, "
        f"longest documents {longest}; {info['corpus_seconds']:.1f} s")
    return tokenizer, data, heldout, info


def recalibration_rows(out: Path, tokenizer, recipe: Recipe, corpus_config: CorpusConfig, model_config: ToyModelConfig,
                       train_config: TrainConfig, data: torch.Tensor, say: Callable[[str], None]):
    """The rows a recipe recalibrates on: the pretraining rows, or the same documents repacked
    into longer rows, or (``documents`` above the trained context) a fresh corpus of longer documents
    (seed stream ``recal-<documents>``); cached under ``out/corpus``. A dilution recipe gets
    ``(rows, haystack mask)`` of a fresh corpus of the trained context (seed stream ``recal``)."""
    rows = recipe.rows or model_config.context
    documents = recipe.documents or model_config.context
    if recipe.dilution:
        path = out / "corpus" / "recal-masked.pt"
        if path.is_file():
            return torch.load(path)
        started = time.perf_counter()
        n = max(1, corpus_config.n_train // 2)
        texts = [d.text for d in training_documents(corpus_config, "recal", n, workers=train_config.workers)]
        packed = pack_parallel(tokenizer, texts, rows, train_config.workers, masked=True)
        torch.save(packed, path)
        say(f"recalibration rows with haystack masks: {int((packed[0] != PAD).sum()):,} tokens, "
            f"{int(packed[1].sum()):,} of them haystack; {time.perf_counter() - started:.1f} s")
        return packed
    if rows == model_config.context and documents == model_config.context:
        return data
    path = out / "corpus" / f"rows{rows}-docs{documents}.pt"
    if path.is_file():
        return torch.load(path)
    started = time.perf_counter()
    if documents == model_config.context:
        texts = [d.text for d in training_documents(corpus_config, workers=train_config.workers)]
    else:
        from dataclasses import replace

        longer = replace(corpus_config, context=documents)
        n = max(1, corpus_config.n_train // 2)
        texts = [d.text for d in training_documents(longer, f"recal-{documents}", n, workers=train_config.workers)]
    packed = pack_parallel(tokenizer, texts, rows, train_config.workers)
    torch.save(packed, path)
    say(f"recalibration rows {rows} (documents up to {documents} tokens): {int((packed != PAD).sum()):,} tokens, "
        f"{time.perf_counter() - started:.1f} s")
    return packed


def train_toy_pair(out: Path, corpus_config: CorpusConfig = CorpusConfig(), model_config: ToyModelConfig = ToyModelConfig(),
                   train_config: TrainConfig = TrainConfig(), recipes: Sequence[Recipe] = (RECIPES["base"],),
                   say: Callable[[str], None] = log.info) -> ToyRun:
    """Corpus -> tokenizer -> RoPE pretraining -> ``to_drope`` -> recalibration (one DroPE model per
    recipe) -> checkpoints, in stages that each checkpoint their result and are skipped when
    ``out`` already holds it (rerun the same command to resume after an interruption).

    Writes ``out/rope`` and ``out/drope-<recipe>`` (Hugging Face format, ``train_config.save_dtype``,
    each with a ``toy.json`` recording the configs, token counts and recipe), ``out/drope`` (the
    first recipe's, unless :func:`select` later replaces it) and ``out/training.json`` (configs,
    token counts, loss curves, held-out losses in nats/token, wall times in seconds).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not recipes:
        raise ValueError("recipes: need at least one recalibration recipe.")
    started = time.perf_counter()
    tokenizer, data, heldout, corpus_info = _stage_corpus(out, corpus_config, model_config, train_config, say)
    eos = tokenizer.eos_token_id
    kwargs = dict(batch_size=train_config.batch_size, weight_decay=train_config.weight_decay,
                  warmup=train_config.warmup, eos_token_id=eos)
    report = _json(out / "training.json") or {}
    report.update({"corpus": asdict(corpus_config), "model": asdict(model_config), "training": asdict(train_config),
                   **corpus_info})
    report.setdefault("recipes", {})
    # Every recipe's rows are made now, before any CUDA or torch thread pool exists in this process.
    recipe_rows = {r.name: recalibration_rows(out, tokenizer, r, corpus_config, model_config, train_config, data, say)
                   for r in recipes if not (out / f"drope-{r.name}" / "toy.json").is_file()}

    if (out / "rope" / "toy.json").is_file():
        say("pretraining: loaded the RoPE checkpoint from an earlier stage")
        rope = load_model(out / "rope", device=train_config.device, requires_grad=True, dtype="float32")
    else:
        init_checkpoint(out / "init", model_config, tokenizer, train_config.seed)
        rope = load_model(out / "init", device=train_config.device, requires_grad=True)
        t0 = time.perf_counter()
        pretrain = train(rope, data, train_config.pretrain_steps, lr=train_config.lr, seed=train_config.seed,
                         desc="pretrain (RoPE)", **kwargs)
        report["pretrain_seconds"] = time.perf_counter() - t0
        report["pretrain_tokens"] = pretrain.tokens
        report["pretrain_epochs"] = pretrain.tokens / max(1, corpus_info["corpus_tokens"])
        report["pretrain_losses"] = pretrain.losses
        report["heldout_loss"] = {"rope": evaluate_loss(rope, heldout, eos)}
        tokens = {k: report[k] for k in ("corpus_documents", "corpus_tokens", "heldout_tokens", "pretrain_tokens")}
        save_model(rope, out / "rope", dtype=train_config.save_dtype)
        _write_toy_meta(out / "rope", "pretrained with RoPE", corpus_config, model_config, train_config, tokens)
        (out / "training.json").write_text(json.dumps(report, indent=2))
        say(f"pretraining: {pretrain.tokens:,} tokens in {report['pretrain_seconds']:.1f} s, "
            f"held-out loss {report['heldout_loss']['rope']:.4f}")
    for recipe in recipes:
        directory = out / f"drope-{recipe.name}"
        if (directory / "toy.json").is_file():
            say(f"recalibration {recipe.name}: done in an earlier stage")
            continue
        rows, haystack = recipe_rows[recipe.name], None
        if isinstance(rows, tuple):
            rows, haystack = rows
        batch = max(1, train_config.batch_size * model_config.context // rows.shape[1])
        drope = to_drope_recipe(rope, recipe)
        before = evaluate_loss(drope, heldout, eos)
        t0 = time.perf_counter()
        steps = train_config.steps_of(recipe)
        recal = train(drope, rows, steps, lr=recipe.lr, seed=train_config.seed + 1, desc=f"recalibrate {recipe.name}",
                      haystack=haystack, dilution=recipe.dilution, **{**kwargs, "batch_size": batch})
        seconds = time.perf_counter() - t0
        after = evaluate_loss(drope, heldout, eos)
        entry = {"recipe": asdict(recipe), "steps": steps, "batch_size": batch, "row_tokens": int(rows.shape[1]),
                 "seconds": seconds, "tokens": recal.tokens, "share_of_pretraining": recal.tokens / report["pretrain_tokens"],
                 "heldout_loss_before": before, "heldout_loss": after, "losses": recal.losses}
        report["recipes"][recipe.name] = entry
        tokens = {k: report[k] for k in ("corpus_documents", "corpus_tokens", "heldout_tokens", "pretrain_tokens")}
        tokens["recalibrate_tokens"] = recal.tokens
        save_model(drope, directory, dtype=train_config.save_dtype)
        _write_toy_meta(directory, f"rotary dropped ({recipe.attention_type}), recalibrated: recipe {recipe.name}",
                        corpus_config, model_config, train_config, tokens, recipe)
        (out / "training.json").write_text(json.dumps(report, indent=2))
        say(f"recalibration {recipe.name}: {steps} steps x {batch} rows of {rows.shape[1]}, {recal.tokens:,} tokens "
            f"in {seconds:.1f} s; held-out loss {before:.4f} -> {after:.4f}")
        del drope
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    first = out / f"drope-{recipes[0].name}"
    if not (out / "drope").exists():
        import shutil

        shutil.copytree(first, out / "drope")
        summarize(report, recipes[0].name)
    report["total_seconds"] = report.get("total_seconds", 0.0) + time.perf_counter() - started
    (out / "training.json").write_text(json.dumps(report, indent=2))
    return ToyRun(out / "rope", out / "drope", report)


def summarize(report: dict, recipe: str) -> dict:
    """Record ``recipe`` as the pair's DroPE model in a training report: ``drope_recipe``,
    ``recalibrate_tokens``, ``recalibrate_share`` and the DroPE held-out losses (nats/token)."""
    entry = report["recipes"][recipe]
    report["drope_recipe"] = recipe
    report["recalibrate_tokens"] = entry["tokens"]
    report["recalibrate_share"] = entry["share_of_pretraining"]
    report["heldout_loss"].update(drope_before_recalibration=entry["heldout_loss_before"], drope=entry["heldout_loss"])
    return report


def _fair(recipe: dict, context: int) -> bool:
    """Whether a recipe trained DroPE on no longer documents than RoPE (same trained length)."""
    return (recipe.get("documents") or context) <= context


def evaluate_and_select(out: Path, recipes: Sequence[Recipe], bars_config=None, device: Optional[str] = None,
                        say: Callable[[str], None] = log.info) -> dict:
    """Stage 4: issue 20's bars for every recalibrated DroPE model and for RoPE, then the choice.

    Selection (never on the reported keys): Exp 10 seed 1 (:class:`~drope_lens.toy.bars.BarsConfig`
    ``n`` keys per cell, simple and RULER, 2x and 4x, every scaling ``c`` including 0) decides which
    recipe and which ``c``: most of the two simple-format DroPE bars met (2x >= 60%, 4x >= 30%),
    then recipes whose documents were no longer than RoPE's, then the mean accuracy of those cells.
    Among recipes that meet the seed-0 1x, perplexity and cities bars when any does. Reported: seed 0
    (``measured``). ``out/drope`` becomes the chosen recipe's checkpoint; ``out/evaluation.json``
    holds everything.
    """
    import shutil

    from ..model.loading import load_model
    from . import bars
    from .evaluate import toy_metadata

    out = Path(out)
    config = bars_config or bars.BarsConfig()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    result = _json(out / "evaluation.json") or {}
    result.update({"bars_config": asdict(config), "selection_seed": 1, "report_seed": config.seed})
    corpus, context = toy_metadata(out / "rope")
    n_ctx = 4 * context + 64
    measured = result.setdefault("measured", {})
    selection = result.setdefault("selection", {})

    def save() -> None:
        (out / "evaluation.json").write_text(json.dumps(result, indent=2))

    if "rope" not in measured:
        say("evaluating rope")
        model = load_model(out / "rope", device=device, n_ctx=n_ctx)
        measured["rope"] = bars.measure_model(model, corpus, context, config, say)
        del model
        save()
    for recipe in recipes:
        name = f"drope-{recipe.name}"
        if name in measured or not (out / name / "toy.json").is_file():
            continue
        say(f"evaluating {name}")
        model = load_model(out / name, device=device, n_ctx=n_ctx)
        from dataclasses import replace

        pick = replace(config, seed=1, multiples=tuple(m for m in config.multiples if m > 1), verify=False, quality=False)
        selection[name] = bars.measure_model(model, corpus, context, pick, say)
        measured[name] = bars.measure_model(model, corpus, context, config, say)
        del model
        save()

    candidates = []
    for recipe in recipes:
        name = f"drope-{recipe.name}"
        if name not in measured:
            continue
        for scaling in (0.0, *config.scalings):
            picked = selection[name]
            accs = {(f, m): (bars.cell(picked, f, m, scaling) or {"accuracy": 0.0})["accuracy"]
                    for f in config.formats for m in (2, 4)}
            met = int(accs.get(("simple", 2), 0) >= 0.6) + int(accs.get(("simple", 4), 0) >= 0.3)
            report_bars = bars.check(measured["rope"], measured[name], scaling)
            base_ok = all(v["met"] for k, v in report_bars.items() if " 2x" not in k and " 4x" not in k)
            candidates.append({"recipe": recipe.name, "scaling": scaling, "selection_bars_met": met,
                               "fair": _fair(asdict(recipe), context), "selection_mean": sum(accs.values()) / len(accs),
                               "other_bars_met": base_ok})
    if not candidates:
        raise ValueError(f"{out}: no recalibrated DroPE checkpoint to evaluate.")
    pool = [c for c in candidates if c["other_bars_met"]] or candidates
    best = max(pool, key=lambda c: (c["selection_bars_met"], c["fair"], c["selection_mean"], -c["scaling"]))
    result["candidates"] = candidates
    result["chosen"] = best
    chosen = measured[f"drope-{best['recipe']}"]
    result["bars"] = {"scaling 0": bars.check(measured["rope"], chosen, 0.0, ("simple", "ruler"))}
    if best["scaling"]:
        result["bars"][f"scaling {best['scaling']}"] = bars.check(measured["rope"], chosen, best["scaling"],
                                                                   ("simple", "ruler"))
    result["table"] = bars.table(measured["rope"], chosen, config.scalings)
    if (out / "drope").exists():
        shutil.rmtree(out / "drope")
    shutil.copytree(out / f"drope-{best['recipe']}", out / "drope")
    save()
    training = _json(out / "training.json")
    if training is not None and best["recipe"] in training.get("recipes", {}):
        (out / "training.json").write_text(json.dumps(summarize(training, best["recipe"]), indent=2))
    say(f"chosen: recipe {best['recipe']}, scaling c={best['scaling']}\n{result['table']}")
    for label, checks in result["bars"].items():
        for key, value in checks.items():
            say(f"  bar [{label}] {key}: {value['value']:.3f} ({value['bar']}) {'MET' if value['met'] else 'NOT MET'}")
    return result


TINY = dict(
    corpus=CorpusConfig(n_train=3000, n_heldout=40, context=128),
    model=ToyModelConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_mlp=128, context=128, vocab_size=600),
)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m drope_lens.toy.train OUT [--recipe NAME ...] [--evaluate] [--tiny]`` (see ``drope-lens train-toy``)."""
    import argparse

    parser = argparse.ArgumentParser(description="train the toy RoPE/DroPE pair (issue 20's recipe), in resumable stages")
    add_arguments(parser, device=False)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", required=True)
    return run_from_args(parser.parse_args(argv))


def run_from_args(args) -> int:
    import os
    from dataclasses import replace

    from . import bars

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    workers = args.workers or os.cpu_count() or 1
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    recipes = [RECIPES[name] for name in (args.recipe or ["dilute"])]
    overrides = {k: v for k, v in (("fraction", args.recalibrate_fraction), ("lr", args.recalibrate_lr)) if v is not None}
    if args.tiny:
        corpus, model = TINY["corpus"], TINY["model"]
        if getattr(args, "mix", "v2") == "v2":
            corpus = replace(corpus, weights=dict(WEIGHTS_V2))
        training = TrainConfig(pretrain_steps=args.steps or 30, batch_size=4, lr=5e-3, warmup=5, device=args.device,
                               workers=workers, tokenizer_documents=2000)
        recipes = [replace(r, rows=r.rows and r.rows // 2, documents=r.documents and r.documents // 2) for r in recipes]
        bars_config = bars.BarsConfig(n=2, scalings=tuple(args.scalings[:1]), n_sentiment=4)
    else:
        corpus = CorpusConfig(n_train=args.documents, weights=dict(WEIGHTS_V2 if args.mix == "v2" else DEFAULT_WEIGHTS))
        model = ToyModelConfig(n_layers=args.layers or ToyModelConfig.n_layers)
        training = TrainConfig(pretrain_steps=args.steps or TrainConfig.pretrain_steps, device=args.device, workers=workers)
        bars_config = bars.BarsConfig(n=args.trials, scalings=tuple(args.scalings))
    recipes = [replace(r, **overrides) for r in recipes]
    run = train_toy_pair(Path(args.out), corpus, model, training, recipes)
    r = run.report
    print(f"RoPE checkpoint:  {run.rope}\nDroPE checkpoints: {[str(Path(args.out) / ('drope-' + x.name)) for x in recipes]}")
    print(f"pretraining: {r['pretrain_tokens']:,} tokens in {r.get('pretrain_seconds', 0):.1f} s")
    if args.evaluate:
        evaluate_and_select(Path(args.out), recipes, bars_config, args.device, say=print)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
