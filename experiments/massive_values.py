"""Experiment 1: massive values in Q, K and V, per layer.

For one text of T tokens and one layer, ``M[h, i] = ||x[:, h, i]||_2 / sqrt(T)`` over the sequence
axis of ``hook_q``/``hook_k``/``hook_v`` (pre-rotary by default, as the study; ``rotary="post"``
uses ``hook_rot_q``/``hook_rot_k`` as Jin et al. 2025). Entry (h, i) is massive when
``M[h, i] > threshold * mean(M)``, the mean over all heads x dims of that layer and tensor.
Texts are tokenised with BOS and cut to ``max_tokens``; M covers every position, BOS included.

``run`` returns one row per (text, layer, tensor) with the count and where the massive entries
sit (``heads``, ``dims``); the summaries below aggregate it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from drope_lens.measurement.analysis import massive_mask, sequence_norms  # noqa: F401  (shared with Exp 2-6; importable here as before)
from drope_lens.measurement.summaries import dim_locations  # noqa: F401  (importable here as before)
from drope_lens.engine.results import RunStore, texts_fingerprint
from drope_lens.measurement.texts import Text, TextsLike, as_texts

from drope_lens.engine.distributed import is_main
from drope_lens.engine.sweep import HostCopy, Planned, bind_store, run_sweep, unit_prefix
from drope_lens.measurement.tokens import (BosPolicy, batches_by_length, check_bos, default_texts, model_name, model_variant,
                               resolve_max_tokens, tokenize)

EXPERIMENT = "massive_values"


@dataclass(frozen=True)
class MassiveValuesConfig:
    threshold: float = 5.0
    max_tokens: int = 512
    rotary: Literal["pre", "post"] = "pre"
    tensors: tuple[str, ...] = ("q", "k", "v")
    batch_size: int = 10
    bos: BosPolicy = "checkpoint"

    def __post_init__(self) -> None:
        check_bos(self.bos)
        if not self.threshold > 0:
            raise ValueError(f"threshold={self.threshold}: must be positive.")
        if self.rotary not in ("pre", "post"):
            raise ValueError(f"rotary={self.rotary!r}: allowed values are 'pre', 'post'.")
        bad = [t for t in self.tensors if t not in ("q", "k", "v")]
        if bad or not self.tensors:
            raise ValueError(f"tensors={self.tensors}: choose from 'q', 'k', 'v'.")
        if self.max_tokens < 2 or self.batch_size < 1:
            raise ValueError("max_tokens must be >= 2 and batch_size >= 1.")


class _BatchStatistics:
    """Counts, means, maxima and masks of one batch, copied to the host asynchronously.

    Everything is enqueued on the GPU right after the batch's forward and copied into pinned
    memory; ``host()`` waits only for those copies, so the next batch's forward can already be
    running while this batch is turned into rows.
    """

    def __init__(self, norms: dict, tensors: Sequence[str], n_layers: int, threshold: float):
        arrays: dict[str, dict[str, torch.Tensor]] = {}
        for tensor in tensors:
            first = norms[(0, tensor)].device  # layers may sit on several GPUs (load_model(n_devices=...))
            m = torch.stack([norms[(layer, tensor)].to(first) for layer in range(n_layers)])  # [layer, batch, head, d]
            mask = massive_mask(m, threshold)
            arrays[tensor] = {"count": mask.sum(dim=(-2, -1)), "mean": m.mean(dim=(-2, -1)),
                              "max": m.amax(dim=(-2, -1)), "mask": mask}
        self.copies = HostCopy(arrays)

    def host(self) -> dict[str, dict[str, np.ndarray]]:
        return {t: {k: v.numpy() for k, v in arrays.items()} for t, arrays in self.copies.host().items()}


def _batch_rows(model, texts: Sequence[Text], samples: Sequence[int], n_tokens: int, stats: dict) -> pd.DataFrame:
    """Rows (text x layer x tensor) of one batch from its host statistics, built with array ops.

    Row order: by text, then layer, then tensor (as ``tensors`` were given).
    """
    n_layers, n_rows = model.cfg.n_layers, len(samples)
    tensors = list(stats)
    columns: dict[str, np.ndarray] = {}
    heads_lists, dims_lists = [], []
    per_tensor = {}
    for tensor, arrays in stats.items():
        mask = arrays["mask"][:, :n_rows]  # [layer, batch, head, d]
        n_heads, d_head = mask.shape[-2:]
        row_major = np.ascontiguousarray(mask.transpose(1, 0, 2, 3))  # [batch, layer, head, d]
        flat = np.flatnonzero(row_major) % (n_heads * d_head)  # sorted by batch row, then layer
        heads, dims = (flat // d_head).tolist(), (flat % d_head).tolist()
        counts = arrays["count"][:, :n_rows].T.reshape(-1)  # [batch * layer]
        bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()
        per_tensor[tensor] = ([heads[a:b] for a, b in zip(bounds[:-1], bounds[1:])],
                              [dims[a:b] for a, b in zip(bounds[:-1], bounds[1:])], counts,
                              arrays["mean"][:, :n_rows].T.reshape(-1), arrays["max"][:, :n_rows].T.reshape(-1))
    # interleave tensors: row index = ((text * n_layers) + layer) * n_tensors + tensor
    n = n_rows * n_layers
    for key, index in (("count", 2), ("mean_m", 3), ("max_m", 4)):
        columns[key] = np.stack([per_tensor[t][index] for t in tensors], axis=1).reshape(-1)
    for i in range(n):
        for t in tensors:
            heads_lists.append(per_tensor[t][0][i])
            dims_lists.append(per_tensor[t][1][i])
    sample_of_row = np.repeat(np.asarray(samples), n_layers * len(tensors))
    return pd.DataFrame({
        "model": model_name(model), "variant": model_variant(model), "sample": sample_of_row,
        "text": [texts[s].name for s in sample_of_row], "register": [texts[s].register for s in sample_of_row],
        "n_tokens": n_tokens, "layer": np.tile(np.repeat(np.arange(n_layers), len(tensors)), n_rows),
        "tensor": np.tile(np.asarray(tensors, dtype=object), n), "count": columns["count"].astype(np.int64),
        "heads": heads_lists, "dims": dims_lists, "d_head": int(model.cfg.d_head),
        "mean_m": columns["mean_m"].astype(np.float64), "max_m": columns["max_m"].astype(np.float64),
    })


def run(
    model,
    texts: Optional[TextsLike] = None,
    *,
    threshold: float = 5.0,
    max_tokens: Optional[int] = None,
    rotary: Literal["pre", "post"] = "pre",
    tensors: tuple[str, ...] = ("q", "k", "v"),
    batch_size: int = 10,
    bos: BosPolicy = "checkpoint",
    store: Optional[RunStore] = None,
    show_progress: bool = True,
) -> pd.DataFrame:
    """Massive-value counts per text, layer and tensor (see module docstring).

    ``texts``: a string, a list of strings or :class:`~drope_lens.measurement.texts.Text`, a pandas Series or
    a datasets column (:func:`~drope_lens.measurement.texts.as_texts`); default: the first 10 of
    :func:`~drope_lens.measurement.tokens.default_texts` (the toy corpus's held-out text for the
    toy pair, the built-in English texts otherwise). ``max_tokens``: tokens per text; default the
    study's 512 capped at the model's trained context (a larger value warns, naming the cap).
    ``bos``: the position-0 policy (:data:`~drope_lens.measurement.tokens.BosPolicy`).

    Columns: ``model``, ``variant``, ``sample`` (index into ``texts``), ``text``, ``register``,
    ``n_tokens``, ``layer``, ``tensor``, ``count``, ``heads`` and ``dims`` (lists: where each
    massive entry sits), ``d_head`` (the head width ``dims`` index into), ``mean_m`` (the layer's
    mean M) and ``max_m``. With ``store``, each
    text's rows are saved as soon as they are measured and texts already saved are skipped.
    Batches are pipelined: a batch's rows are built while the next batch runs on the GPU.

    Under ``torchrun`` each rank runs whole planned chunks of ``batch_size`` texts (see
    :mod:`drope_lens.engine.sweep`) and every rank returns the whole DataFrame, equal to a single-process run's.
    """
    max_tokens = resolve_max_tokens(model, max_tokens)
    config = MassiveValuesConfig(threshold, max_tokens, rotary, tuple(tensors), batch_size, bos)
    texts = as_texts(default_texts(model)[:10] if texts is None else texts)
    store = bind_store(store, model, EXPERIMENT, config, texts=texts_fingerprint(texts))
    unit = lambda i: f"{unit_prefix(model)}-sample-{i}"  # noqa: E731
    # A planned chunk of ``batch_size`` texts (split into equal-length batches) is the unit of
    # planning and sharing (see drope_lens.engine.sweep): each text's numbers always come from the
    # same batch, so a resumed or torchrun-shared sweep equals an uninterrupted one bit for bit.
    # A chunk is tokenised only when it runs; a batch's rows are built while the next one runs.
    chunks = [list(range(i, min(i + config.batch_size, len(texts)))) for i in range(0, len(texts), config.batch_size)]

    def step(k: int, done: frozenset):
        chunk = chunks[k]
        tokens = tokenize(model, [texts[i] for i in chunk], config.max_tokens, bos=config.bos)
        for local, batch in batches_by_length(tokens, config.batch_size):
            samples = [chunk[i] for i in local]
            if done.issuperset(unit(i) for i in samples):
                continue
            norms = sequence_norms(model, batch, config.tensors, config.rotary)
            statistics = _BatchStatistics(norms, config.tensors, model.cfg.n_layers, config.threshold)
            yield lambda samples=samples, n=int(batch.shape[1]), statistics=statistics: {
                unit(sample): frame.reset_index(drop=True) for sample, frame in
                _batch_rows(model, texts, samples, n, statistics.host()).groupby("sample", sort=False)}

    def load(name: str) -> pd.DataFrame:  # parquet gives arrays back: keep lists
        frame = store.load_part(name)
        for column in ("heads", "dims"):
            frame[column] = [list(map(int, v)) for v in frame[column]]
        return frame

    frames = run_sweep([Planned(tuple(unit(i) for i in chunk), len(chunk)) for chunk in chunks], store, step,
                       label=f"massive values {model_variant(model)}", device=model.cfg.device, load=load,
                       weights=[len(chunk) for chunk in chunks], show_progress=show_progress)
    return pd.concat([frames[unit(i)] for i in range(len(texts))], ignore_index=True)


# ------------------------------------------------------------------------------------------
# Summaries: DataFrame in, DataFrame out. Nothing here touches a model.
# ------------------------------------------------------------------------------------------
def per_layer(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over texts of the count, per model, tensor and layer (the per-layer curve)."""
    return (df.groupby(["model", "variant", "tensor", "layer"])["count"].agg(["mean", "std"])
            .reset_index())


def totals(df: pd.DataFrame) -> pd.DataFrame:
    """Per model and tensor: total count over layers, mean +- std over texts."""
    per_text = df.groupby(["model", "variant", "tensor", "sample"])["count"].sum().reset_index()
    return (per_text.groupby(["model", "variant", "tensor"])["count"]
            .agg(mean="mean", std="std", n_texts="count").reset_index())


def compare(df: pd.DataFrame) -> pd.DataFrame:
    """RoPE vs DroPE totals per tensor with the relative change (DroPE - RoPE) / RoPE."""
    t = totals(df)
    wide = t.pivot_table(index="tensor", columns="variant", values=["mean", "std"])
    wide.columns = [f"{stat}_{variant}" for stat, variant in wide.columns]
    wide = wide.reset_index()
    if {"mean_rope", "mean_drope"} <= set(wide.columns):
        wide["change_pct"] = 100.0 * (wide["mean_drope"] - wide["mean_rope"]) / wide["mean_rope"]
    return wide


# ------------------------------------------------------------------------------------------
# Command line: ``drope-lens run massive-values`` (see drope_lens.engine.runner).
# ------------------------------------------------------------------------------------------
from drope_lens.engine.options import massive_values as add_cli_arguments  # noqa: E402  (options importable without torch)


def run_cli(ctx) -> int:
    from dataclasses import asdict

    from drope_lens.engine.results import model_identity
    from drope_lens.engine.runner import print_table

    args = ctx.args
    config = MassiveValuesConfig(args.threshold, args.max_tokens, args.rotary, batch_size=args.batch_size, bos=args.bos)
    chosen = ctx.texts()[: args.n_texts]
    store = ctx.store(EXPERIMENT, config, {"texts": chosen})
    frames, identities = [], []
    for model in ctx.models():
        frames.append(run(model, chosen, threshold=config.threshold, max_tokens=config.max_tokens,
                          rotary=config.rotary, batch_size=config.batch_size, bos=config.bos, store=store))
        identities.append(model_identity(model))
    ctx.finalize(store, frames, {"config": asdict(config), "seed": None, "texts": [t.name for t in chosen]}, identities)
    if not is_main():  # under torchrun, rank 0 prints the summaries
        return 0
    df = pd.concat(frames, ignore_index=True)
    print_table("Massive-value counts, total over layers (mean +- std over texts):", totals(df))
    if len(ctx.sources) == 2:
        print_table("RoPE vs DroPE:", compare(df))
    print_table("Where massive dims sit (frequency index f = dim mod d_head/2; low-frequency half f >= d_head/4):",
                dim_locations(df))
    return 0
