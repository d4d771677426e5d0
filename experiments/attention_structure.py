"""Experiment 7: attention pattern structure per head, and head classes.

Per text, layer and head, from the model's real attention (streamed, see
:mod:`drope_lens.measurement.attention_stats`), averaged over query positions t >= 1:

* ``sink_score``: attention on position 0 (BOS);
* ``entropy``: row entropy in nats;
* ``local_mass``: attention on the ``window`` (5) most recent keys, the query's own key included
  (distances 0..window-1), BOS counted when it is among them; ``local_mass_no_bos``: BOS not counted;
* ``distance``: list of ``max_distance`` (50) numbers, the attention at distance d = 0..D-1 (0 where
  t - d < 0);
* ``head_class``: the rule in :data:`CLASS_RULE` (sink, else local, else distributed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
import torch

from drope_lens.engine.results import RunStore
from drope_lens.measurement.texts import TextsLike

from drope_lens.measurement.tokens import BosPolicy, check_bos
from drope_lens.engine.measure import Batch, Measurement, measure, per_head_columns
from drope_lens.measurement.summaries import compare_variants, summarize

EXPERIMENT = "attention_structure"
CLASSES = ("sink", "local", "distributed")


@dataclass(frozen=True)
class AttentionStructureConfig:
    window: int = 5
    max_distance: int = 50
    sink_tau: float = 0.3
    local_tau: float = 0.3
    local_counts_bos: bool = False
    max_tokens: int = 512
    batch_size: int = 10
    bos: BosPolicy = "checkpoint"

    def __post_init__(self) -> None:
        check_bos(self.bos)
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window={self.window!r}: the local window must be an integer >= 1.")
        if isinstance(self.max_distance, bool) or not isinstance(self.max_distance, int) or self.max_distance < 1:
            raise ValueError(f"max_distance={self.max_distance!r}: must be an integer >= 1.")
        for name in ("sink_tau", "local_tau"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be in (0, 1].")
        if self.max_tokens < 2 or self.batch_size < 1:
            raise ValueError(f"max_tokens={self.max_tokens}, batch_size={self.batch_size}: need >= 2 and >= 1.")

    @property
    def rule(self) -> str:
        local = "local_mass" if self.local_counts_bos else "local_mass_no_bos"
        return (f"sink if sink_score >= {self.sink_tau}; else local if {local} >= {self.local_tau} (the "
                f"{self.window} most recent keys, own key included, BOS {'counted' if self.local_counts_bos else 'not counted'}); "
                "else distributed")


def classify(frame, config: AttentionStructureConfig) -> np.ndarray:
    """Head class per row of ``frame`` (a DataFrame or a dict of columns) by :attr:`AttentionStructureConfig.rule`."""
    local = np.asarray(frame["local_mass" if config.local_counts_bos else "local_mass_no_bos"])
    return np.where(np.asarray(frame["sink_score"]) >= config.sink_tau, "sink",
                    np.where(local >= config.local_tau, "local", "distributed"))


def measurement(config: AttentionStructureConfig) -> Measurement:
    def rows(model, batch: Batch) -> pd.DataFrame:
        stats = [batch.attention[layer] for layer in range(model.cfg.n_layers)]
        columns = per_head_columns(batch.samples, {
            name: torch.stack([getattr(s, name) for s in stats])
            for name in ("sink_score", "entropy", "local_mass", "local_mass_no_bos")})
        columns["head_class"] = classify(columns, config)
        # float32 values as float64 (exact, the same numbers as before), one array per row, views of
        # one matrix in (sample, layer, head) order: what reading the result file back gives, at a
        # fraction of the cost of Python lists (10,240 rows: 1.4 ms, not 32). Copied layer by layer in
        # NumPy, on this thread: with PyTorch's CPU ops on the stacked tensor (512,000 values at the
        # study's size, run on its thread pool, the likely cause) this step took 12-33 ms instead of 5-8
        # in about a third of the calls on an H200's 16-core host, 3.4-6.3 ms in 35 of 35 since
        # (attention_stats_bench --phases, sessions 33-35).
        first = stats[0].distance
        distance = np.empty((first.shape[0], len(stats), *first.shape[1:]))  # [batch, layer, head, D]
        for layer, s in enumerate(stats):
            distance[:, layer] = s.distance.detach().float().cpu().numpy()
        columns["distance"] = list(distance.reshape(-1, distance.shape[-1]))
        return pd.DataFrame(columns)

    return Measurement(EXPERIMENT, lambda model, captured: [], rows, attention=(config.window, config.max_distance),
                       config=config)


def run(
    model,
    texts: TextsLike,
    *,
    max_tokens: int = 512,
    window: int = 5,
    max_distance: int = 50,
    sink_tau: float = 0.3,
    local_tau: float = 0.3,
    local_counts_bos: bool = False,
    batch_size: int = 10,
    bos: BosPolicy = "checkpoint",
    store: Optional[RunStore] = None,
    show_progress: bool = True,
) -> pd.DataFrame:
    """Columns: ``model``, ``variant``, ``sample``, ``text``, ``register``, ``n_tokens``, ``layer``,
    ``head``, ``sink_score``, ``entropy``, ``local_mass``, ``local_mass_no_bos``, ``head_class``,
    ``distance`` (one float64 array of ``max_distance`` values per row)."""
    config = AttentionStructureConfig(window, max_distance, sink_tau, local_tau, local_counts_bos, max_tokens,
                                      batch_size, bos)
    return measure(model, texts, [measurement(config)], max_tokens=max_tokens, bos=bos, batch_size=batch_size,
                   store=store, show_progress=show_progress)[EXPERIMENT]


def class_shares(df: pd.DataFrame, by: tuple[str, ...] = ()) -> pd.DataFrame:
    """Share of heads in each class (per text, then mean / CI over texts), overall or per ``by``."""
    frame = df.copy()
    for name in CLASSES:
        frame[f"{name}_share"] = (frame["head_class"] == name).astype(float)
    return summarize(frame, [f"{name}_share" for name in CLASSES], by=list(by))


def per_layer(df: pd.DataFrame) -> pd.DataFrame:
    """Per layer: head means of sink score, entropy and local masses over texts."""
    return summarize(df, ["sink_score", "entropy", "local_mass", "local_mass_no_bos"], by=["layer"])


def distance_profile(df: pd.DataFrame) -> pd.DataFrame:
    """Long table: per model, layer and distance d, the head- and text-mean attention at d."""
    rows = []
    for (model, variant, layer), frame in df.groupby(["model", "variant", "layer"]):
        profile = np.mean(np.stack([np.asarray(d, dtype=float) for d in frame["distance"]]), axis=0)
        rows += [{"model": model, "variant": variant, "layer": layer, "distance": d, "attention": float(v)}
                 for d, v in enumerate(profile)]
    return pd.DataFrame(rows)


def compare(df: pd.DataFrame) -> pd.DataFrame:
    return compare_variants(class_shares(df))


from drope_lens.engine.options import attention_structure as add_cli_arguments  # noqa: E402  (options importable without torch)


def run_cli(ctx) -> int:
    from drope_lens.engine.runner import print_table

    from drope_lens.engine.measure import run_cli_measurement

    a = ctx.args
    config = AttentionStructureConfig(a.window, a.max_distance, a.sink_tau, a.local_tau, a.local_counts_bos,
                                      a.max_tokens, a.batch_size, a.bos)
    df = run_cli_measurement(ctx, EXPERIMENT, config, lambda model, texts, store: run(
        model, texts, max_tokens=config.max_tokens, window=config.window, max_distance=config.max_distance,
        sink_tau=config.sink_tau, local_tau=config.local_tau, local_counts_bos=config.local_counts_bos,
        batch_size=config.batch_size, bos=config.bos, store=store))
    print(f"Head classes: {config.rule}\n")
    print_table("Share of heads per class (mean, 95% CI over texts):", compare(df))
    print_table("Per layer (head means):", compare_variants(per_layer(df), by=["layer"]))
    return 0
