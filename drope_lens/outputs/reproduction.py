"""The reproduction table: each headline number of the study next to ours.

The study's numbers live in ``drope_lens/data/study_numbers.json`` (one entry per experiment,
key and variant, with its source: a METHODS.md section or a file of the study's results, and a
note where METHODS.md says the original was flawed). The sources ship with the package, in
``drope_lens/data/study/`` (copies of METHODS.md and of the cited result files, an extract of the
one large file; ``PROVENANCE.json`` there gives each original's name, size and SHA-256), so every
source the table cites can be opened. Nothing here types a number in: ours come from a result
DataFrame through the experiment's ``headline`` function below, which returns rows
``(key, variant, value)`` in the same units as the study's entry.

The study measured ``meta-llama/Llama-2-7b-hf`` and ``SakanaAI/Llama-2-7b-hf-DroPE``. For runs of
other models (the toy pair, SmolLM, ...) the table shows both columns, says "different model",
and gives no ratio: a ratio of a toy model's count to Llama-2's means nothing.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import pandas as pd

from ..measurement.analysis import DEFAULT_SPIKE_RULE, spike_layer
from ..measurement.study import (  # noqa: F401  (the table's inputs, re-exported)
    SCHEMA,
    STUDY_FOLDER,
    STUDY_NUMBERS,
    provenance,
    shipped_source,
    source_text,
    study_models,
    study_numbers,
)
from .figures import SINK_TAU, LOCAL_TAU

DIFFERENT_MODEL = "different model"


# ------------------------------------------------------------------------------------------
# Our headline numbers, per experiment: DataFrame in, rows (key, variant, value) out
# ------------------------------------------------------------------------------------------
def _rows(values: dict[tuple[str, str], float]) -> pd.DataFrame:
    return pd.DataFrame([{"key": k, "variant": v, "value": float(x)} for (k, v), x in values.items()],
                        columns=["key", "variant", "value"])


def headline_massive_values(df: pd.DataFrame) -> pd.DataFrame:
    from drope_lens.experiments.massive_values import per_layer, totals

    out = {}
    for row in totals(df).itertuples():
        out[(f"total_{row.tensor}", row.variant)] = row.mean
    for row in per_layer(df).itertuples():
        if row.layer == 1 and row.tensor == "q":
            out[("layer1_q", row.variant)] = row.mean
    return _rows(out)


def headline_disruption(df: pd.DataFrame) -> pd.DataFrame:
    from drope_lens.experiments.disruption import reliance_ratio, summary

    table = summary(df)
    out = {}
    for row in table.itertuples():
        for key in ("baseline_ppl", "massive_ppl", "random_ppl", "massive_pct"):
            out[(key, row.variant)] = getattr(row, key)
    if {"rope", "drope"} <= set(table.variant):
        out[("reliance_ratio", "pair")] = reliance_ratio(table)
    return _rows(out)


#: Our Exp 3 condition names -> the study's: its disruption replaced each head's top-1 Q and K dim
#: by its mean over positions (drope_lens.hooks.conditions calls that ``topk_mean_q_k``).
STUDY_CONDITIONS = {"topk_mean_q_k": "disrupted"}
#: Task names are the study's as they are: its IMDB row is filled only by task ``imdb`` (real IMDB);
#: the package's own written ``reviews`` (not IMDB) keep their name, so the IMDB row reads
#: "not measured" unless IMDB was run.


def headline_knowledge(df: pd.DataFrame) -> pd.DataFrame:
    """Generation-scored accuracy (%) per task and condition (the study's scoring), keyed
    ``<task>_<condition>`` (the study's name for the disruption); two (task, condition) pairs
    never share a key."""
    scored = df[df["correct_generation"].notna()].assign(correct_generation=lambda d: d["correct_generation"].astype(float))
    g = scored.groupby(["variant", "task", "condition"])["correct_generation"].mean() * 100
    out: dict[tuple[str, str], float] = {}
    source: dict[tuple[str, str], tuple[str, str]] = {}
    for (variant, task, condition), v in g.items():
        key = (f"{task}_{STUDY_CONDITIONS.get(condition, condition)}", variant)
        if key in out:
            raise ValueError(f"knowledge headline key {key[0]!r} ({variant}) comes from both task/condition "
                             f"{source[key]} and {(task, condition)}; each must have its own key.")
        out[key], source[key] = v, (task, condition)
    return _rows(out)


def headline_ablation(df: pd.DataFrame) -> pd.DataFrame:
    """Mean perplexity per condition (``ppl_<condition>``) and its ratio to baseline (``<condition>_ppl_ratio``)."""
    df = df[df["ppl"].notna()]
    means = df.groupby(["variant", "condition"])["ppl"].mean()
    out = {}
    for (variant, condition), v in means.items():
        out[(f"ppl_{condition}", variant)] = v
        base = means.get((variant, "baseline"))
        if base is not None and condition != "baseline":
            out[(f"{condition}_ppl_ratio", variant)] = v / base
    return _rows(out)


def headline_sinks(df: pd.DataFrame, tau: float = SINK_TAU) -> pd.DataFrame:
    out = {}
    if {"head", "sink_score"} <= set(df.columns):
        heads = df[df["sink_score"].notna()]
        for variant, part in heads.groupby("variant"):
            out[("sink_rate", variant)] = 100 * (part["sink_score"] >= tau).mean()
            for layer in (0, 1):
                rows = part[part.layer == layer]
                if len(rows):
                    out[(f"sink_rate_L{layer}", variant)] = 100 * (rows["sink_score"] >= tau).mean()
    layers = df[df["bos_norm"].notna()].groupby(["variant", "layer"])[["bos_norm", "bos_ratio", "repr_entropy"]].mean()
    for variant, part in layers.groupby(level="variant"):
        part = part.droplevel("variant")
        # the study's rule (argmax of the BOS ratio) on the mean profile over texts: a layer of the
        # profile, never a mean of per-text layers; no spike -> NaN ("not measured")
        spike = spike_layer(part.sort_index()["bos_ratio"].to_numpy(), DEFAULT_SPIKE_RULE)
        out[("spike_layer", variant)] = spike if spike is not None else np.nan
        out[("peak_bos_norm", variant)] = part["bos_norm"].max()
        out[("min_entropy", variant)] = part["repr_entropy"].min()
    return _rows(out)


def headline_bos_write(df: pd.DataFrame) -> pd.DataFrame:
    """Means over layers and heads of the columns the study reported, where the results hold them."""
    out = {}
    for variant, part in df.groupby("variant"):
        for key, column, scale in (("v_norm_bos", "v_norm_bos", 1), ("bos_mass", "bos_mass", 100), ("write", "write", 1)):
            if column in part.columns:
                out[(key, variant)] = scale * part[column].mean()
        if "write" in part.columns:
            out[("max_write_layer", variant)] = part.groupby("layer")["write"].mean().idxmax()
    return _rows(out)


def headline_attention_structure(df: pd.DataFrame) -> pd.DataFrame:
    out = {}
    for variant, part in df.groupby("variant"):
        sink = part["sink_score"] >= SINK_TAU
        out[("sink_heads", variant)] = 100 * sink.mean()
        out[("local_heads", variant)] = 100 * ((~sink) & (part["local_mass"] >= LOCAL_TAU)).mean()
        if (part.layer == 1).any():
            out[("layer1_bos_attention", variant)] = 100 * part[part.layer == 1]["sink_score"].mean()
    return _rows(out)


def headline_layer_balance(df: pd.DataFrame) -> pd.DataFrame:
    out = {}
    means = df.groupby(["variant", "layer"])[["attn_fraction", "q_norm", "k_norm"]].mean()
    for (variant, layer), row in means.iterrows():
        if layer in (0, 1):
            out[(f"attn_fraction_L{layer}", variant)] = 100 * row["attn_fraction"]
        if layer == 1:
            out[("q_norm_L1", variant)] = row["q_norm"]
            out[("k_norm_L1", variant)] = row["k_norm"]
    return _rows(out)


def headline_context_length(df: pd.DataFrame) -> pd.DataFrame:
    """Passkey accuracy (%) per length, over depths, one format at a time: ``accuracy_<length>``
    is the simple passkey format (the study's passkey prompt, as in Exp 3), ``<format>_accuracy_<length>``
    any other (e.g. ``ruler_accuracy_512``). Formats are never averaged together: a format skipped at
    some length (RULER's template is longer than 128 tokens) would make the mean jump there."""
    g = df.groupby(["variant", "format", "length"])["correct"].mean() * 100
    return _rows({(f"accuracy_{int(length)}" if fmt == "simple" else f"{fmt}_accuracy_{int(length)}", variant): v
                  for (variant, fmt, length), v in g.items()})


HEADLINES: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {
    "massive_values": headline_massive_values,
    "disruption": headline_disruption,
    "knowledge": headline_knowledge,
    "bos_ablation": headline_ablation,
    "layer1_ablation": headline_ablation,
    "sinks": headline_sinks,
    "bos_write": headline_bos_write,
    "attention_structure": headline_attention_structure,
    "layer_balance": headline_layer_balance,
    "context_length": headline_context_length,
}


def same_models(sources: Optional[Sequence[str]]) -> Optional[bool]:
    """Whether runs of ``sources`` measured the study's models (None: not known)."""
    if not sources:
        return None
    study = set(study_models().values())
    return all(str(s).rstrip("/") in study for s in sources)


def reproduction_table(ours: dict[str, pd.DataFrame], study: Optional[pd.DataFrame] = None,
                       models: Optional[dict[str, Sequence[str]]] = None) -> pd.DataFrame:
    """Every study number with ours (NaN where not measured), the ratio ours/study, source and flaw note.

    ``ours``: experiment name -> that experiment's headline rows (key, variant, value).
    ``models``: experiment name -> the model sources its run measured. Where those are not the
    study's models, ``ratio`` is NaN and ``models`` says "different model" (both values stay).
    """
    study = study_numbers() if study is None else study
    models = models or {}
    rows = []
    for entry in study.itertuples():
        mine = ours.get(entry.experiment)
        value = np.nan
        if mine is not None and len(mine):
            hit = mine[(mine.key == entry.key) & (mine.variant == entry.variant)]
            if len(hit):
                value = float(hit["value"].iloc[0])
        status = ("measured" if value == value else
                  "not run" if mine is None else "not measured")
        same = same_models(models.get(entry.experiment))
        comparable = same is not False
        ratio = value / entry.value if value == value and entry.value and comparable else np.nan
        rows.append({"experiment": entry.experiment, "quantity": entry.description, "key": entry.key,
                     "variant": entry.variant, "unit": entry.unit, "study": entry.value, "ours": value,
                     "ratio": ratio, "models": ("" if mine is None else DIFFERENT_MODEL if same is False
                                                else "the study's" if same else "not recorded"),
                     "status": status, "source": entry.source_text,
                     "flaw": entry.flaw if isinstance(entry.flaw, str) else ""})
    return pd.DataFrame(rows)
