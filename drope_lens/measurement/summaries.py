"""Statistics over experiment results: DataFrame in, DataFrame out.

Nothing here touches a model. Intervals are over the units the study samples (texts, prompts, trials),
never over repetitions:

- texts: :func:`bootstrap_ci`, :func:`summarize` (mean, std, bootstrap 95% CI over texts) and
  :func:`compare_variants` (RoPE vs DroPE side by side), for the measurements of Exp 4/5/7/8-9;
- prompts: :func:`accuracy_table`, :func:`degradation` (bootstrap CI, exact McNemar test),
  :func:`category_degradation` (Exp 3's parametric vs contextual headline);
- perplexity under conditions: :func:`perplexity_table` and the ablation tables
  :func:`perplexity_summary`, :func:`task_summary`, :func:`wide_table` (Exp 4-6);
  :func:`condition_layers` (what meta.json records of the conditions);
- Exp 2's conditions (baseline, massive, random over seeds): :func:`per_text_conditions`,
  :func:`increase_pct`, :func:`condition_tests` (paired tests, bootstrap CIs over texts);
- Exp 1's massive entries: :func:`dim_locations` (where they sit among the rotary frequencies);
- Exp 10's trials: :func:`trial_accuracy`, :func:`trial_error_shares`, :func:`trial_verification`
  (Wilson and normal 95% intervals over trials).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from drope_lens.measurement.passkey import CATEGORIES, mean_interval, wilson_interval


def bootstrap_ci(values: Sequence[float], *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (resampling texts); NaN for < 2 values."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def summarize(df: pd.DataFrame, values: Sequence[str], by: Sequence[str] = ()) -> pd.DataFrame:
    """Per ``model, variant`` (+ ``by``) and value: mean, std, 95% bootstrap CI and n over texts.

    Rows of one text within a group (e.g. the heads of a layer) are averaged first, so every text
    counts once.
    """
    keys = ["model", "variant", *by]
    per_text = df.groupby([*keys, "sample"])[list(values)].mean().reset_index()
    rows = []
    for group, frame in per_text.groupby(keys, sort=True):
        group = group if isinstance(group, tuple) else (group,)
        for value in values:
            column = frame[value].to_numpy(dtype=np.float64)
            low, high = bootstrap_ci(column)
            rows.append({**dict(zip(keys, group)), "quantity": value, "mean": float(np.nanmean(column)),
                         "std": float(np.nanstd(column, ddof=1)) if column.size > 1 else float("nan"),
                         "ci_low": low, "ci_high": high, "n_texts": int(np.isfinite(column).sum())})
    return pd.DataFrame(rows)


def compare_variants(summary: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """A :func:`summarize` table with RoPE and DroPE side by side: ``rope``/``drope`` as
    ``mean [ci_low, ci_high]`` strings plus ``mean_rope``, ``mean_drope`` and ``drope_minus_rope``."""
    keys = ["quantity", *by]
    frame = summary.copy()
    frame["cell"] = [f"{m:.4g} [{lo:.4g}, {hi:.4g}]" for m, lo, hi in zip(frame["mean"], frame["ci_low"], frame["ci_high"])]
    wide = frame.pivot_table(index=keys, columns="variant", values=["mean", "cell"], aggfunc="first")
    wide.columns = [f"{stat}_{variant}" for stat, variant in wide.columns]
    wide = wide.reset_index()
    out = wide[keys].copy()
    for variant in ("rope", "drope"):
        if f"cell_{variant}" in wide:
            out[variant] = wide[f"cell_{variant}"]
            out[f"mean_{variant}"] = wide[f"mean_{variant}"].astype(float)
    if {"mean_rope", "mean_drope"} <= set(out.columns):
        out["drope_minus_rope"] = out["mean_drope"] - out["mean_rope"]
    return out


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


def perplexity_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean PPL per model and condition, ratio to baseline with bootstrap CI and Wilcoxon p."""
    return perplexity_table(df[df.measure == "perplexity"])


def task_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per model, task and condition (empty when no task ran)."""
    tasks = df[df.measure == "task"]
    return accuracy_table(tasks) if len(tasks) and "task" in tasks.columns else pd.DataFrame()


def wide_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per model and condition: PPL, PPL ratio and each task's primary accuracy."""
    ppl = perplexity_summary(df)[["variant", "condition", "layer", "spike_rule", "ppl", "ppl_ratio"]]
    tasks = task_summary(df)
    if tasks.empty:
        return ppl
    acc = tasks.pivot_table(index=["variant", "condition"], columns="task", values="accuracy").reset_index()
    return ppl.merge(acc, on=["variant", "condition"], how="left")


def condition_layers(df: pd.DataFrame) -> dict:
    """What meta.json records of the conditions: per model and condition, the layer it acted on
    (-1: none in particular) and the spike rule that chose it."""
    out: dict = {}
    for (variant, condition), part in df.groupby(["variant", "condition"], sort=False):
        out.setdefault(variant, {})[condition] = {"layer": int(part["condition_layer"].iloc[0]),
                                                  "spike_rule": str(part["spike_rule"].iloc[0])}
    return out


def per_text_conditions(df: pd.DataFrame) -> pd.DataFrame:
    """Exp 2: one row per (model, text): baseline, massive and mean-over-seeds random PPL."""
    base = df[df.condition == "baseline"].set_index(["model", "variant", "sample"])["ppl"].rename("baseline")
    mass = df[df.condition == "massive"].set_index(["model", "variant", "sample"])["ppl"].rename("massive")
    rand = (df[df.condition == "random"].groupby(["model", "variant", "sample"])["ppl"].mean().rename("random"))
    return pd.concat([base, mass, rand], axis=1).reset_index()


def increase_pct(numerator: np.ndarray, denominator: np.ndarray) -> float:
    """% increase of the mean of ``numerator`` over the mean of ``denominator``."""
    return 100.0 * (numerator.mean() / denominator.mean() - 1.0)


def condition_tests(df: pd.DataFrame, n_bootstrap: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """Exp 2: paired tests and bootstrap CIs over evaluation texts, per model (``disruption.statistics``).

    Paired t-test and Wilcoxon signed-rank on log PPL: massive vs baseline and massive vs random
    (random = per-text mean over seeds). 95% percentile-bootstrap CIs (texts resampled with
    replacement) for massive_pct and m_minus_r.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for (model, variant), group in per_text_conditions(df).groupby(["model", "variant"]):
        b, m, r = (np.log(group[c].to_numpy()) for c in ("baseline", "massive", "random"))
        raw = {c: group[c].to_numpy() for c in ("baseline", "massive", "random")}
        n = len(b)
        boot_massive, boot_mr = [], []
        for _ in range(n_bootstrap):
            idx = rng.integers(0, n, n)
            mp = increase_pct(raw["massive"][idx], raw["baseline"][idx])
            rp = increase_pct(raw["random"][idx], raw["baseline"][idx])
            boot_massive.append(mp)
            boot_mr.append(mp - rp)
        row = {"model": model, "variant": variant, "n_texts": n}
        for label, other in (("vs_baseline", b), ("vs_random", r)):
            diff = m - other
            row[f"massive_{label}_mean_log_ratio"] = float(diff.mean())
            row[f"massive_{label}_t_p"] = float(stats.ttest_rel(m, other).pvalue) if n > 1 else np.nan
            row[f"massive_{label}_wilcoxon_p"] = (float(stats.wilcoxon(m, other).pvalue)
                                                  if n > 1 and np.any(diff != 0) else np.nan)
        row["massive_pct_ci_low"], row["massive_pct_ci_high"] = np.percentile(boot_massive, [2.5, 97.5]).tolist()
        row["m_minus_r_ci_low"], row["m_minus_r_ci_high"] = np.percentile(boot_mr, [2.5, 97.5]).tolist()
        rows.append(row)
    return pd.DataFrame(rows)


def dim_locations(df: pd.DataFrame, d_head: Optional[int] = None) -> pd.DataFrame:
    """Where massive entries sit within the head, per model and tensor.

    Llama pairs rotary dims i and i + d/2 at frequency index ``f = i mod d/2``; the angle of pair
    f turns as ``theta^(-2f/d)`` per token, so small f is high-frequency and large f is
    low-frequency. Reports the share of massive entries in the low-frequency half (f >= d/4),
    the mean f / (d/2), and the most common dims.

    The head width d comes from the results (their ``d_head`` column, per model). ``d_head`` is
    needed only for results written before that column existed; given with results that have
    it, it must agree (a wrong d silently moves every dim to another frequency).
    """
    rows = []
    for (model, variant, tensor), group in df.groupby(["model", "variant", "tensor"]):
        group_d_head = _d_head_of(group, model, d_head)
        half = group_d_head // 2
        dims = np.array([d for ds in group["dims"] for d in ds], dtype=int)
        if dims.size and dims.max() >= group_d_head:
            raise ValueError(f"{model}: massive dim {dims.max()} is outside d_head={group_d_head}; "
                             "these results come from a wider head.")
        if dims.size == 0:
            rows.append({"model": model, "variant": variant, "tensor": tensor, "n_massive": 0,
                         "low_freq_share": np.nan, "mean_freq_position": np.nan, "top_dims": []})
            continue
        freq = dims % half
        values, counts = np.unique(dims, return_counts=True)
        top = values[np.argsort(-counts)][:5].tolist()
        rows.append({"model": model, "variant": variant, "tensor": tensor, "n_massive": int(dims.size),
                     "low_freq_share": float((freq >= half // 2).mean()),
                     "mean_freq_position": float((freq / half).mean()), "top_dims": top})
    return pd.DataFrame(rows)


def _d_head_of(group: pd.DataFrame, model: str, d_head: Optional[int]) -> int:
    if "d_head" in group.columns:
        widths = sorted(set(int(w) for w in group["d_head"]))
        if len(widths) != 1:
            raise ValueError(f"{model}: rows with several d_head values {widths}; one model has one head width.")
        if d_head is not None and d_head != widths[0]:
            raise ValueError(f"d_head={d_head} given, but {model} has d_head={widths[0]} (from its results); "
                             "leave d_head out: it is read from the results.")
        return widths[0]
    if d_head is None:
        raise ValueError("these results have no d_head column (written by an older drope_lens): "
                         "pass the models' d_head (drope-lens info prints it).")
    return d_head


def trial_accuracy(df: pd.DataFrame, by: Sequence[str] = ("variant", "format", "length")) -> pd.DataFrame:
    """Exp 10: exact-match accuracy per group with its Wilson 95% interval (``low``, ``high``) and ``n``."""
    rows = []
    for keys, group in df.groupby(list(by), sort=True):
        k, total = int(group["correct"].sum()), len(group)
        low, high = wilson_interval(k, total)
        rows.append({**dict(zip(by, keys if isinstance(keys, tuple) else (keys,))), "accuracy": k / total,
                     "low": low, "high": high, "n": total})
    return pd.DataFrame(rows)


def trial_error_shares(df: pd.DataFrame, by: Sequence[str] = ("variant", "format", "length")) -> pd.DataFrame:
    """Exp 10: share of each answer category per group (columns in
    :data:`~drope_lens.measurement.passkey.CATEGORIES` order; rows sum to 1)."""
    table = pd.crosstab([df[c] for c in by], df["category"], normalize="index")
    return table.reindex(columns=list(CATEGORIES), fill_value=0.0).reset_index()


def trial_verification(df: pd.DataFrame, by: Sequence[str] = ("variant", "format", "length")) -> pd.DataFrame:
    """Exp 10, per group: mean P(Yes | key) and P(Yes | near-miss), discrimination = their difference with a
    normal 95% interval over trials, and ranking accuracy with its Wilson interval."""
    if "p_yes_key" not in df:
        raise ValueError("no verification columns: run with verify=True.")
    rows = []
    for keys, group in df.groupby(list(by), sort=True):
        diff, low, high = mean_interval((group["p_yes_key"] - group["p_yes_near"]).tolist())
        k, total = int(group["rank_correct"].sum()), len(group)
        r_low, r_high = wilson_interval(k, total)
        rows.append({**dict(zip(by, keys if isinstance(keys, tuple) else (keys,))),
                     "p_yes_key": group["p_yes_key"].mean(), "p_yes_near": group["p_yes_near"].mean(),
                     "discrimination": diff, "disc_low": low, "disc_high": high,
                     "ranking": k / total, "rank_low": r_low, "rank_high": r_high, "n": total})
    return pd.DataFrame(rows)
