"""Small synthetic result frames in the documented column contracts of every experiment.

Used by the figure and report tests for experiments whose modules are built on other branches
(their columns are the contract in the views brief); values are random but seeded, so a test can
compare a figure's trace with the frame it was drawn from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from drope_lens.engine.results import RunStore

MODELS = {"rope": "synthetic/rope", "drope": "synthetic/drope"}


def _ids(variant: str) -> dict:
    return {"model": MODELS[variant], "variant": variant}


def knowledge(seed: int = 0, n: int = 10) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for variant in ("rope", "drope"):
        for task in ("cities", "sports", "reviews", "passkey"):
            for condition in ("baseline", "topk_mean_q_k"):
                for sample in range(n):
                    correct = bool(rng.random() < (0.9 if condition == "baseline" else 0.5))
                    rows.append({**_ids(variant), "task": task, "condition": condition, "sample": sample,
                                 "prompt": f"prompt {sample}", "label": "Yes",
                                 "correct_logit": np.nan if task == "passkey" else correct,  # no logit scoring
                                 "correct_generation": correct and bool(rng.random() < 0.9),
                                 "unparseable": bool(rng.random() < 0.1), "answer": "Yes",
                                 "logit_margin": float(rng.normal())})
    return pd.DataFrame(rows)


def ablation(seed: int = 0, conditions=("baseline", "l1_mlp", "l1_attn", "l1_both", "l1_both_bos"), n: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for variant in ("rope", "drope"):
        for i, condition in enumerate(conditions):
            for sample in range(n):
                nll = float(1.0 + i + rng.random())
                rows.append({**_ids(variant), "condition": condition, "sample": sample, "nll": nll,
                             "ppl": float(np.exp(nll))})
    return pd.DataFrame(rows)


def sinks(seed: int = 0, n_layers: int = 4, n_heads: int = 4, n: int = 3) -> pd.DataFrame:
    """Per-layer rows (head NaN) and per-head sink_score rows in one frame."""
    rng = np.random.default_rng(seed)
    rows = []
    for variant in ("rope", "drope"):
        for sample in range(n):
            for layer in range(n_layers):
                rows.append({**_ids(variant), "sample": sample, "layer": layer, "head": np.nan, "sink_score": np.nan,
                             "bos_norm": float(rng.uniform(1, 100)), "bos_ratio": float(rng.uniform(0.5, 10)),
                             "repr_entropy": float(rng.uniform(0, 3))})
                for head in range(n_heads):
                    rows.append({**_ids(variant), "sample": sample, "layer": layer, "head": float(head),
                                 "sink_score": float(rng.random()), "bos_norm": np.nan, "bos_ratio": np.nan,
                                 "repr_entropy": np.nan})
    return pd.DataFrame(rows)


def attention_structure(seed: int = 0, n_layers: int = 4, n_heads: int = 4, n: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [{**_ids(v), "sample": s, "layer": layer, "head": h, "sink_score": float(rng.random()),
             "entropy": float(rng.uniform(0, 4)), "local_mass": float(rng.random())}
            for v in ("rope", "drope") for s in range(n) for layer in range(n_layers) for h in range(n_heads)]
    return pd.DataFrame(rows)


def layer_balance(seed: int = 0, n_layers: int = 4, n: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for v in ("rope", "drope"):
        for s in range(n):
            for layer in range(n_layers):
                a, m = float(rng.uniform(1, 10)), float(rng.uniform(1, 10))
                rows.append({**_ids(v), "sample": s, "layer": layer, "attn_norm": a, "mlp_norm": m,
                             "attn_fraction": a / (a + m), "q_norm": float(rng.uniform(1, 1e3)),
                             "k_norm": float(rng.uniform(1, 1e3))})
    return pd.DataFrame(rows)


def bos_write(seed: int = 0, n_layers: int = 4, n_heads: int = 4, n: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for v in ("rope", "drope"):
        for s in range(n):
            for layer in range(n_layers):
                for h in range(n_heads):
                    norm, mass = float(rng.uniform(0, 1)), float(rng.uniform(0, 1))
                    rows.append({**_ids(v), "sample": s, "layer": layer, "head": h, "v_norm_bos": norm,
                                 "bos_mass": mass, "write": norm * mass})
    return pd.DataFrame(rows)


def context_length(seed: int = 0, lengths=(128, 256, 512), n: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    categories = ["exact", "near_miss", "wrong_digits", "no_number"]
    rows = []
    for v in ("rope", "drope"):
        for fmt in ("simple", "ruler"):
            for length in lengths:
                for trial in range(n):
                    cat = categories[int(rng.integers(0, len(categories)))]
                    rows.append({**_ids(v), "length": length, "format": fmt, "depth": float(rng.random()),
                                 "trial": trial, "prompt_tokens": length - 3, "key": "12345",
                                 "generated": "12345", "answer": "12345", "category": cat, "correct": cat == "exact"})
    return pd.DataFrame(rows)


def write_run(root: Path, experiment: str, frame: pd.DataFrame, run_id: str | None = None) -> Path:
    """A finished run directory as RunStore writes it."""
    store = RunStore(root, experiment, run_id or f"{experiment}-synthetic")
    models = [{"source": MODELS[v], "variant": v, "dtype": "float32", "quantization": None, "revision": None,
               "fingerprint": None} for v in ("rope", "drope")]
    return store.finalize(frame, {"config": {"synthetic": True}, "models": models})


BUILDERS = {
    "knowledge": knowledge,
    "bos_ablation": lambda: ablation(conditions=("baseline", "bos_mlp", "bos_v_spike", "bos_v_all")),
    "layer1_ablation": ablation,
    "sinks": sinks,
    "bos_write": bos_write,
    "attention_structure": attention_structure,
    "layer_balance": layer_balance,
    "context_length": context_length,
}
