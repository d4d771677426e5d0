"""The engine's generation and perplexity modes: tasks and texts under ablation conditions (Exp 3-6).

:func:`task_rows`: every (prompt, condition) pair scored by logits (one prefill) and by a greedy
continuation (the same forwards continued with the KV cache), conditions mixed in batches
(each row's condition acts on its rows only, see :func:`drope_lens.hooks.conditions.batched_conditions`).
:func:`perplexity_rows`: per evaluation text and condition, mean next-token NLL.
Both run their batches as planned batches of :func:`drope_lens.engine.sweep.run_sweep` (shared
among ranks, checkpointed, resumed), one store unit per call. Their statistics are in
:mod:`drope_lens.measurement.summaries`.
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from drope_lens.measurement.generation import greedy_generate, prompt_ids
from drope_lens.hooks.conditions import Condition, batched_conditions
from drope_lens.measurement.scoring import answer_token_ids, generation_score, logit_score
from drope_lens.measurement.tasks import TaskItem

from drope_lens.engine.results import RunStore
from drope_lens.measurement.tokens import BosPolicy, batches_by_length, model_name, model_variant, sequence_nll

from .sweep import HostCopy, Planned, run_sweep

TASK_COLUMNS = ("model", "variant", "task", "kind", "condition", "condition_layer", "spike_rule", "sample", "prompt",
                "label",
                "n_tokens", "correct_logit", "correct_generation", "correct", "unparseable", "answer",
                "answer_logit", "logit_margin", "generation")


def _condition_layer(condition: Condition) -> int:
    """The layer a condition acts on (-1: every layer or none in particular; never "no spike",
    which :func:`drope_lens.measurement.analysis.prepare_conditions` refuses)."""
    layer = condition.info.get("layer")
    return int(layer) if layer is not None else -1


def _spike_rule(condition: Condition) -> str:
    """The spike rule that chose the condition's layer ("" for conditions that need none)."""
    return str(condition.info.get("spike_rule") or "")


def task_rows(
    model,
    items: Sequence[TaskItem],
    conditions: Mapping[str, Condition],
    *,
    new_tokens: int = 20,
    batch_size: int = 16,
    bos: BosPolicy = "checkpoint",
    max_tokens: int = 2048,
    show_progress: bool = True,
    store: Optional[RunStore] = None,
    unit: str = "tasks",
) -> pd.DataFrame:
    """One row per (item, condition) with the columns :data:`TASK_COLUMNS`.

    The rows run in batches of ``batch_size`` (longest prompts first, as
    :func:`~drope_lens.measurement.generation.greedy_generate` batches them), each a planned batch
    of :func:`~drope_lens.engine.sweep.run_sweep` feeding the store unit ``unit``: shared among
    ranks under ``torchrun``, checkpointed in ``store`` as they finish (a rerun loads the finished
    unit, or runs only the batches not checkpointed yet).

    ``correct_logit``: the label's first answer token has the larger logit at the last prompt
    position (NaN for passkey); ``correct_generation``: the parsed greedy continuation of
    ``new_tokens`` tokens is right (unparseable answers count as wrong); ``correct``: the primary
    score (logit for two-choice tasks, generation for passkey); ``logit_margin``:
    logit(label) - logit(other answer).
    """
    if not items:
        raise ValueError("no task items.")
    names = list(conditions)
    ids = prompt_ids(model, [it.prompt for it in items], bos=bos)
    warn_without_bos(model, [f"{it.task}[{it.sample}]" for it in items], ids)
    for item, row in zip(items, ids):
        if len(row) > max_tokens:
            raise ValueError(f"prompt {item.task}[{item.sample}] has {len(row)} tokens, more than max_tokens={max_tokens}.")
    choice_sets = sorted({it.choices for it in items if it.choices is not None})
    choice_ids = {c: answer_token_ids(model.tokenizer, c) for c in choice_sets}
    score_ids = sorted({i for c in choice_ids.values() for i in c})
    column = {token: j for j, token in enumerate(score_ids)}
    rows = [(i, c) for i in range(len(items)) for c in range(len(names))]  # item-major: a prompt's conditions share a batch
    prompts = [ids[i] for i, _ in rows]

    def hooks_for(indices):
        groups = [[k for k, r in enumerate(indices) if rows[r][1] == c] for c in range(len(names))]
        used = [(conditions[names[c]].hooks, g) for c, g in enumerate(groups) if g and conditions[names[c]].hooks]
        return batched_conditions([h for h, _ in used], [g for _, g in used]) if used else []

    eos = getattr(model.tokenizer, "eos_token_id", None)
    order = sorted(range(len(prompts)), key=lambda r: (-len(prompts[r]), r))  # greedy_generate's batches
    chunks = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]

    def step(k: int, done: frozenset):
        chunk = chunks[k]  # one batch of greedy_generate, rows in the same order (it sorts them the same way)
        out = greedy_generate(model, [prompts[r] for r in chunk], new_tokens, batch_size=len(chunk),
                              batch_hooks=lambda local: hooks_for([chunk[j] for j in local]),
                              stop_token_ids=[eos] if eos is not None else None, score_ids=score_ids or None)
        frame = pd.DataFrame({"row": chunk, "tokens": out.tokens})
        if out.logits is not None:
            frame["scores"] = out.logits.tolist()
        yield lambda: frame

    def assemble(batch_frames: dict, todo) -> dict:
        tokens: dict[int, list[int]] = {}
        scores: dict[int, list[float]] = {}
        for k, frame in batch_frames.items():
            if frame["row"].tolist() != chunks[k]:
                raise RuntimeError(f"{unit}: checkpoint of batch {k} holds other rows than planned (was the run id "
                                   "reused with another configuration?); delete it to recompute that batch.")
            for j, r in enumerate(chunks[k]):
                tokens[r] = [int(t) for t in frame["tokens"].iloc[j]]
                if "scores" in frame:
                    scores[r] = [float(v) for v in frame["scores"].iloc[j]]
        return {unit: _task_frame(model, items, conditions, names, ids, rows, tokens, scores, choice_ids, column)}

    keys = [f"{unit}-batch-{k}-of-{len(chunks)}" for k in range(len(chunks))]
    parts = run_sweep([Planned((unit,), len(chunk) * (len(prompts[chunk[0]]) + new_tokens), keys[k])
                       for k, chunk in enumerate(chunks)], store, step, label=f"tasks {model_variant(model)}",
                      device=model.cfg.device, assemble=assemble, show_progress=show_progress)
    return parts[unit]


def _task_frame(model, items, conditions, names, ids, rows, tokens, scores, choice_ids, column) -> pd.DataFrame:
    """The rows of :func:`task_rows` from each row's generated tokens and prefill scores."""
    texts = ([model.tokenizer.decode(tokens[r], skip_special_tokens=True) for r in range(len(rows))]
             if model.tokenizer is not None else [""] * len(rows))
    logits = torch.tensor([scores[r] for r in range(len(rows))], dtype=torch.float32) if scores else None
    records = []
    for r, (i, c) in enumerate(rows):
        item, condition = items[i], conditions[names[c]]
        text = texts[r]
        gen = generation_score(text, item.label, item.choices)
        if item.choices is not None:
            lg = logit_score(logits[r, [column[t] for t in choice_ids[item.choices]]], item.choices, item.label)
            correct_logit, margin, answer_logit = float(lg.correct), lg.margin, lg.answer
        else:
            correct_logit, margin, answer_logit = math.nan, math.nan, ""
        records.append({
            "model": model_name(model), "variant": model_variant(model), "task": item.task, "kind": item.kind,
            "condition": names[c], "condition_layer": _condition_layer(condition),
            "spike_rule": _spike_rule(condition), "sample": item.sample,
            "prompt": item.prompt, "label": item.label, "n_tokens": len(ids[i]), "correct_logit": correct_logit,
            "correct_generation": float(gen.correct),
            "correct": correct_logit if item.choices is not None else float(gen.correct),
            "unparseable": bool(gen.unparseable), "answer": gen.answer, "answer_logit": answer_logit,
            "logit_margin": margin, "generation": text,
        })
    return pd.DataFrame.from_records(records, columns=list(TASK_COLUMNS))


def warn_without_bos(model, names: Sequence[str], ids: Sequence[Sequence[int]]) -> None:
    """Warn (once per call) when position 0 of task prompts is not a special token: the tokenizer
    adds no BOS, so position-0 conditions (``bos_mlp``, ``bos_v_*``, ``l1_both_bos``) act on the
    first prompt token instead of a BOS."""
    tokenizer = getattr(model, "tokenizer", None)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    missing = [name for name, row in zip(names, ids) if row and row[0] not in special]
    if missing:
        warnings.warn(
            f"position 0 is not a special token for {len(missing)} task prompt(s) ({missing[0]!r}, ...): the "
            f"tokenizer of {model_name(model)} adds no BOS, so position-0 conditions (bos_mlp, bos_v_spike, "
            "bos_v_all, l1_both_bos) act on the first prompt token. Pass bos='always' (--bos always) to put "
            "the BOS token there.", UserWarning, stacklevel=3)


def perplexity_rows(
    model,
    tokens: Sequence[torch.Tensor],
    text_names: Sequence[str],
    conditions: Mapping[str, Condition],
    *,
    batch_size: int = 8,
    show_progress: bool = True,
    store: Optional[RunStore] = None,
    unit: str = "perplexity",
) -> pd.DataFrame:
    """One row per (text, condition): ``nll`` (mean next-token NLL, nats/token, first token not
    predicted), ``ppl`` = exp(nll), ``n_tokens``; conditions mixed in batches of equal length.

    Each batch is a planned batch of :func:`~drope_lens.engine.sweep.run_sweep` feeding the store
    unit ``unit``: shared among ranks under ``torchrun``, checkpointed in ``store`` as it finishes."""
    names = list(conditions)
    rows = [(s, c) for s in range(len(tokens)) for c in range(len(names))]
    batches = list(batches_by_length([tokens[s] for s, _ in rows], batch_size))

    def step(k: int, done: frozenset):
        local, batch = batches[k]
        members = [rows[r] for r in local]
        used = []
        for c, name in enumerate(names):
            group = [j for j, (_, cc) in enumerate(members) if cc == c]
            if group and conditions[name].hooks:
                used.append((conditions[name].hooks, group))
        hooks = batched_conditions([h for h, _ in used], [g for _, g in used]) if used else []
        with torch.inference_mode():
            model.position_offset = 0
            logits = model.run_with_hooks(batch.to(model.cfg.device), fwd_hooks=hooks)
            nll = HostCopy(sequence_nll(logits, batch))
            del logits
        yield lambda: pd.DataFrame({"row": list(local), "nll": nll.host().tolist()})

    def assemble(batch_frames: dict, todo) -> dict:
        results: dict[int, float] = {}
        for k, frame in batch_frames.items():
            if frame["row"].tolist() != list(batches[k][0]):
                raise RuntimeError(f"{unit}: checkpoint of batch {k} holds other rows than planned (was the run id "
                                   "reused with another configuration?); delete it to recompute that batch.")
            results.update(zip(batches[k][0], frame["nll"].tolist()))
        records = []
        for r, (s, c) in enumerate(rows):
            records.append({"model": model_name(model), "variant": model_variant(model), "condition": names[c],
                            "condition_layer": _condition_layer(conditions[names[c]]),
                            "spike_rule": _spike_rule(conditions[names[c]]), "sample": s,
                            "text": text_names[s], "n_tokens": int(len(tokens[s])), "nll": results[r],
                            "ppl": float(np.exp(results[r]))})
        return {unit: pd.DataFrame(records)}

    keys = [f"{unit}-batch-{k}-of-{len(batches)}" for k in range(len(batches))]
    parts = run_sweep([Planned((unit,), batch.numel(), keys[k]) for k, (_, batch) in enumerate(batches)], store, step,
                      label=f"perplexity {model_variant(model)}", device=model.cfg.device, assemble=assemble,
                      show_progress=show_progress)
    return parts[unit]


def reference_texts_for(model):
    """Texts the conditions are prepared on (spike layer, massive dims): the toy corpus's held-out
    texts for the bundled toy pair, the builtin texts otherwise."""
    from drope_lens.measurement.texts import builtin_texts, toy_texts

    return toy_texts() if model_name(model).startswith("bundled:toy/") else builtin_texts()


def condition_meta(prepared) -> dict:
    """What meta.json records about a model's conditions (layers used, the spike rule, ratios)."""
    return {"spike_layer": prepared.spike_layer, "spike_rule": prepared.spike_rule,
            "spike_threshold": prepared.spike_threshold, "spike_layers_by_rule": prepared.spike_layers,
            "bos_norm_ratios": prepared.bos_ratios, "bos_norms": prepared.bos_norms,
            "conditions": {name: c.info for name, c in prepared.conditions.items()}}
