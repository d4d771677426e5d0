"""Tasks and perplexity under ablation conditions: the engine of Exp 3-6, plus their statistics.

:func:`task_rows`: every (prompt, condition) pair scored by logits (one prefill) and by a greedy
continuation (the same forwards continued with the KV cache), conditions mixed in batches
(each row's condition acts on its rows only, see :func:`drope_lens.hooks.conditions.batched_conditions`).
:func:`perplexity_rows`: per evaluation text and condition, mean next-token NLL.
Statistics are over prompts / texts (bootstrap CIs, paired tests), never over repetitions.
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats

from drope_lens.measurement.generation import greedy_generate, prompt_ids
from drope_lens.hooks.conditions import Condition, batched_conditions
from drope_lens.measurement.scoring import answer_token_ids, generation_score, logit_score
from drope_lens.measurement.tasks import TaskItem

from .common import BosPolicy, HostCopy, batches_by_length, model_name, model_variant, progress, sequence_nll

TASK_COLUMNS = ("model", "variant", "task", "kind", "condition", "condition_layer", "spike_rule", "sample", "prompt",
                "label",
                "n_tokens", "correct_logit", "correct_generation", "correct", "unparseable", "answer",
                "answer_logit", "logit_margin", "generation")


def _condition_layer(condition: Condition) -> int:
    """The layer a condition acts on (-1: every layer or none in particular; never "no spike",
    which :func:`~.ablation_setup.prepare_conditions` refuses)."""
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
) -> pd.DataFrame:
    """One row per (item, condition) with the columns :data:`TASK_COLUMNS`.

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
    out = greedy_generate(model, prompts, new_tokens, batch_size=batch_size, batch_hooks=hooks_for,
                          stop_token_ids=[eos] if eos is not None else None,
                          score_ids=score_ids or None,
                          progress=f"tasks {model_variant(model)}" if show_progress else None)
    records = []
    for r, (i, c) in enumerate(rows):
        item, condition = items[i], conditions[names[c]]
        text = out.texts[r]
        gen = generation_score(text, item.label, item.choices)
        if item.choices is not None:
            logits = out.logits[r, [column[t] for t in choice_ids[item.choices]]]
            lg = logit_score(logits, item.choices, item.label)
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


@torch.inference_mode()
def perplexity_rows(
    model,
    tokens: Sequence[torch.Tensor],
    text_names: Sequence[str],
    conditions: Mapping[str, Condition],
    *,
    batch_size: int = 8,
    show_progress: bool = True,
) -> pd.DataFrame:
    """One row per (text, condition): ``nll`` (mean next-token NLL, nats/token, first token not
    predicted), ``ppl`` = exp(nll), ``n_tokens``; conditions mixed in batches of equal length."""
    names = list(conditions)
    rows = [(s, c) for s in range(len(tokens)) for c in range(len(names))]
    batches = list(batches_by_length([tokens[s] for s, _ in rows], batch_size))
    results: dict[int, float] = {}
    pending = None
    for local, batch in progress(batches, len(batches), f"perplexity {model_variant(model)}", show_progress):
        members = [rows[k] for k in local]
        used = []
        for c, name in enumerate(names):
            group = [j for j, (_, cc) in enumerate(members) if cc == c]
            if group and conditions[name].hooks:
                used.append((conditions[name].hooks, group))
        hooks = batched_conditions([h for h, _ in used], [g for _, g in used]) if used else []
        model.position_offset = 0
        logits = model.run_with_hooks(batch.to(model.cfg.device), fwd_hooks=hooks)
        current = (local, HostCopy(sequence_nll(logits, batch)))
        del logits
        if pending is not None:
            results.update(zip(pending[0], pending[1].host().tolist()))
        pending = current
    if pending is not None:
        results.update(zip(pending[0], pending[1].host().tolist()))
    records = []
    for k, (s, c) in enumerate(rows):
        records.append({"model": model_name(model), "variant": model_variant(model), "condition": names[c],
                        "condition_layer": _condition_layer(conditions[names[c]]),
                        "spike_rule": _spike_rule(conditions[names[c]]), "sample": s,
                        "text": text_names[s], "n_tokens": int(len(tokens[s])), "nll": results[k],
                        "ppl": float(np.exp(results[k]))})
    return pd.DataFrame(records)


# ------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------
def accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per model, task and condition: n, accuracy (primary), logit and generation accuracy,
    unparseable count (all over every prompt: unparseable answers are in the denominator)."""
    grouped = df.groupby(["variant", "task", "condition"], sort=False)
    out = grouped.agg(n=("sample", "size"), accuracy=("correct", "mean"), logit_accuracy=("correct_logit", "mean"),
                      generation_accuracy=("correct_generation", "mean"), unparseable=("unparseable", "sum"))
    return out.reset_index()


def _mcnemar_p(base: np.ndarray, other: np.ndarray) -> float:
    """Exact two-sided McNemar test on paired 0/1 outcomes (binomial test on the discordant pairs)."""
    b = int(((base == 1) & (other == 0)).sum())
    c = int(((base == 0) & (other == 1)).sum())
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(b, b + c, 0.5).pvalue)


def degradation(df: pd.DataFrame, baseline: str = "baseline", n_bootstrap: int = 5000, seed: int = 0) -> pd.DataFrame:
    """Per model, task and non-baseline condition: degradation = (baseline - condition) / baseline
    of the primary accuracy (a fraction; NaN when the baseline accuracy is 0), with a 95%
    percentile-bootstrap CI over prompts (resampled jointly, paired) and an exact McNemar p-value."""
    rng = np.random.default_rng(seed)
    rows = []
    for (variant, task), group in df.groupby(["variant", "task"], sort=False):
        base = group[group.condition == baseline].sort_values("sample")
        if base.empty:
            continue
        b = base["correct"].to_numpy(dtype=float)
        for condition in [c for c in group.condition.unique() if c != baseline]:
            other = group[group.condition == condition].sort_values("sample")
            o = other["correct"].to_numpy(dtype=float)
            if len(o) != len(b) or not np.array_equal(other["sample"].to_numpy(), base["sample"].to_numpy()):
                raise ValueError(f"{variant}/{task}/{condition}: prompts differ from the baseline's; cannot pair them.")
            n = len(b)
            idx = rng.integers(0, n, size=(n_bootstrap, n))
            bb, oo = b[idx].mean(axis=1), o[idx].mean(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                boot = np.where(bb > 0, (bb - oo) / bb, np.nan)
            boot = boot[~np.isnan(boot)]
            point = (b.mean() - o.mean()) / b.mean() if b.mean() > 0 else math.nan
            low, high = (np.percentile(boot, [2.5, 97.5]).tolist() if boot.size else (math.nan, math.nan))
            rows.append({"variant": variant, "task": task, "kind": group["kind"].iloc[0], "condition": condition,
                         "n": n, "baseline_accuracy": b.mean(), "condition_accuracy": o.mean(),
                         "degradation": point, "ci_low": low, "ci_high": high, "mcnemar_p": _mcnemar_p(b, o)})
    return pd.DataFrame(rows)


def category_degradation(df: pd.DataFrame, baseline: str = "baseline", column: str = "correct",
                         n_bootstrap: int = 5000, seed: int = 0) -> pd.DataFrame:
    """Exp 3's headline, per model and non-baseline condition: the degradation of each knowledge
    category (``parametric``, ``contextual``) = the mean over the category's tasks of
    (baseline - condition) / baseline accuracy (fractions; the study's definition: its RoPE
    contextual 94.3% = mean of IMDB 88.6% and passkey 100%), and ``ratio`` = contextual /
    parametric (the study's 3.8x; NaN when the parametric degradation is 0).

    95% percentile-bootstrap CIs over items: each replicate resamples every task's prompts (paired
    across conditions) independently. ``column``: ``correct`` (primary scoring) or
    ``correct_generation`` (the study's generation scoring). ``*_tasks`` name the tasks used;
    tasks with a zero baseline accuracy are left out (their degradation is undefined) and named in
    ``excluded``.
    """
    if "kind" not in df.columns:  # results written before the column existed
        from drope_lens.measurement.tasks import KIND

        df = df.assign(kind=df["task"].map(lambda t: KIND.get(t, "unknown")))
    df = df.assign(**{column: df[column].astype(float)})
    rng = np.random.default_rng(seed)
    rows = []
    for (variant, condition), _ in df[df.condition != baseline].groupby(["variant", "condition"], sort=False):
        per_kind: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {"parametric": [], "contextual": []}
        excluded = []
        part = df[df.variant == variant]
        for task, group in part.groupby("task", sort=True):
            base = group[group.condition == baseline].sort_values("sample")
            other = group[group.condition == condition].sort_values("sample")
            if base.empty or other.empty:
                continue
            if not np.array_equal(base["sample"].to_numpy(), other["sample"].to_numpy()):
                raise ValueError(f"{variant}/{task}/{condition}: prompts differ from the baseline's; cannot pair them.")
            b, o = base[column].to_numpy(dtype=float), other[column].to_numpy(dtype=float)
            if b.mean() <= 0:
                excluded.append(task)
                continue
            per_kind.setdefault(str(group["kind"].iloc[0]), []).append((task, b, o))
        row = {"variant": variant, "condition": condition, "scoring": column}
        boots = {}
        for kind in ("parametric", "contextual"):
            entries = per_kind.get(kind, [])
            row[f"{kind}_tasks"] = ",".join(t for t, _, _ in entries)
            if not entries:
                row[kind], boots[kind] = math.nan, np.full(n_bootstrap, np.nan)
                continue
            row[kind] = float(np.mean([(b.mean() - o.mean()) / b.mean() for _, b, o in entries]))
            reps = []
            for _, b, o in entries:
                idx = rng.integers(0, len(b), size=(n_bootstrap, len(b)))
                bb, oo = b[idx].mean(axis=1), o[idx].mean(axis=1)
                with np.errstate(divide="ignore", invalid="ignore"):
                    reps.append(np.where(bb > 0, (bb - oo) / bb, np.nan))
            boots[kind] = np.mean(reps, axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            row["ratio"] = row["contextual"] / row["parametric"] if row["parametric"] else math.nan
            boot_ratio = boots["contextual"] / boots["parametric"]
        for name, values in (("parametric", boots["parametric"]), ("contextual", boots["contextual"]),
                             ("ratio", boot_ratio)):
            values = values[np.isfinite(values)]
            row[f"{name}_low"], row[f"{name}_high"] = (np.percentile(values, [2.5, 97.5]).tolist() if values.size
                                                       else (math.nan, math.nan))
        row["excluded"] = ",".join(excluded)
        rows.append(row)
    columns = ["variant", "condition", "scoring", "parametric_tasks", "parametric", "parametric_low", "parametric_high",
               "contextual_tasks", "contextual", "contextual_low", "contextual_high", "ratio", "ratio_low",
               "ratio_high", "excluded"]
    return pd.DataFrame(rows, columns=columns)


def perplexity_table(df: pd.DataFrame, baseline: str = "baseline", n_bootstrap: int = 5000, seed: int = 0) -> pd.DataFrame:
    """Per model and condition: mean PPL over texts, ratio to the baseline's mean PPL with a 95%
    bootstrap CI over texts, and a paired Wilcoxon test on per-text NLL vs the baseline."""
    rng = np.random.default_rng(seed)
    rows = []
    for variant, group in df.groupby("variant", sort=False):
        base = group[group.condition == baseline].sort_values("sample")
        for condition in group.condition.unique():
            cur = group[group.condition == condition].sort_values("sample")
            row = {"variant": variant, "condition": condition, "layer": int(cur["condition_layer"].iloc[0]),
                   "spike_rule": str(cur["spike_rule"].iloc[0]) if "spike_rule" in cur.columns else "",
                   "n_texts": len(cur), "ppl": cur["ppl"].mean()}
            if not base.empty and condition != baseline:
                b, c = base["ppl"].to_numpy(), cur["ppl"].to_numpy()
                idx = rng.integers(0, len(b), size=(n_bootstrap, len(b)))
                row["ppl_ratio"] = c.mean() / b.mean()
                row["ci_low"], row["ci_high"] = np.percentile(c[idx].mean(1) / b[idx].mean(1), [2.5, 97.5]).tolist()
                diff = cur["nll"].to_numpy() - base["nll"].to_numpy()
                row["wilcoxon_p"] = float(stats.wilcoxon(diff).pvalue) if len(b) > 1 and np.any(diff != 0) else math.nan
            elif condition == baseline:
                row["ppl_ratio"] = 1.0
            rows.append(row)
    return pd.DataFrame(rows)


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


def condition_layers(df: pd.DataFrame) -> dict:
    """What meta.json records of the conditions: per model and condition, the layer it acted on
    (-1: none in particular) and the spike rule that chose it."""
    out: dict = {}
    for (variant, condition), part in df.groupby(["variant", "condition"], sort=False):
        out.setdefault(variant, {})[condition] = {"layer": int(part["condition_layer"].iloc[0]),
                                                  "spike_rule": str(part["spike_rule"].iloc[0])}
    return out
