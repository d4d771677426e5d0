"""The engine's perplexity mode under conditions: mean next-token NLL of every (condition, text) row.

Every (condition, text) pair is one row; rows of equal length share forwards (each row's
condition acting on its rows only, through the hooks the caller builds for a batch's conditions).
The batches are planned over all conditions, finished or not, and a rerun runs every planned
batch that holds a row of an unfinished condition: each row's NLL always comes from the same
batch, so a resumed (or torchrun-shared) sweep equals an uninterrupted single-process one bit for
bit, also on GPUs whose GEMMs round differently for different batch shapes. A condition's rows
span batches, which several ranks may run: each batch's NLLs are checkpointed as they finish, and
the conditions are saved as parts when all are in (:func:`drope_lens.engine.sweep.run_sweep`).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import pandas as pd
import torch

from drope_lens.engine.results import RunStore
from drope_lens.measurement.tokens import batches_by_length, sequence_nll

from .sweep import HostCopy, Planned, run_sweep, unit_prefix


def condition_perplexity(
    model,
    tokens: Sequence[torch.Tensor],
    units: Sequence[str],
    hooks_for: Callable[[list[int]], list],
    rows: Callable[[int, dict[int, float]], pd.DataFrame],
    *,
    store: Optional[RunStore],
    batch_size: int,
    batched: bool = True,
    label: str = "perplexity",
    show_progress: bool = True,
) -> list[pd.DataFrame]:
    """Per condition ``c`` (the store unit ``units[c]``): ``rows(c, {text: nll})``, the mean
    next-token NLL (nats/token, first token not predicted) of every text of ``tokens`` under it.

    ``hooks_for(conditions)``: the hook pairs of a batch whose rows have these conditions, in row
    order. ``batched=False`` runs each condition alone (one forward per condition and batch of
    texts, the reference loop); otherwise conditions are mixed in batches of equal length, rows
    spread evenly over as few batches of at most ``batch_size`` as possible."""
    grid = [(ci, sample) for ci in range(len(units)) for sample in range(len(tokens))]
    groups = [grid] if batched else [[r for r in grid if r[0] == ci] for ci in range(len(units))]
    planned = []
    for group in groups:
        for local, batch in batches_by_length([tokens[sample] for _, sample in group],
                                              balanced_batch_size(len(group), batch_size)):
            planned.append(([group[i] for i in local], batch))
    mode = "mixed" if batched else "alone"
    keys = [f"{unit_prefix(model)}-{mode}-batch-{k}-of-{len(planned)}" for k in range(len(planned))]

    def step(k: int, done: frozenset):
        batch_rows, batch = planned[k]
        hooks = hooks_for([ci for ci, _ in batch_rows])
        with torch.inference_mode():
            logits = model.run_with_hooks(batch.to(model.cfg.device), fwd_hooks=hooks)
            nll = HostCopy(sequence_nll(logits, batch))
            del logits
        yield lambda: pd.DataFrame({"condition": [ci for ci, _ in batch_rows], "sample": [s for _, s in batch_rows],
                                    "nll": nll.host().tolist()})

    def assemble(batch_frames: dict, todo) -> dict:
        results: dict[int, dict[int, float]] = {ci: {} for ci in range(len(units))}
        for k, frame in batch_frames.items():
            for (ci, sample), value in zip(planned[k][0], _checked(store, keys[k], frame, planned[k][0])):
                results[ci][sample] = value
        return {units[ci]: rows(ci, results[ci]) for ci in range(len(units)) if units[ci] in todo}

    parts = run_sweep([Planned(tuple(units[ci] for ci, _ in batch_rows), batch.numel(), keys[k])
                       for k, (batch_rows, batch) in enumerate(planned)], store, step, label=label,
                      device=model.cfg.device, assemble=assemble, show_progress=show_progress)
    return [parts[unit] for unit in units]


def _checked(store: Optional[RunStore], key: str, frame: pd.DataFrame, batch_rows: list[tuple[int, int]]) -> list[float]:
    """A planned batch's NLLs from its rows, after checking that they are the planned rows (a
    checkpoint of an earlier run could hold another configuration's)."""
    if list(zip(frame["condition"].tolist(), frame["sample"].tolist())) != list(batch_rows):
        raise RuntimeError(
            f"{store.batch_path(key) if store is not None else key}: holds other rows than planned batch {key} (was "
            "the run id reused with another configuration?); delete it to recompute that batch."
        )
    return frame["nll"].tolist()



def balanced_batch_size(n_rows: int, batch_size: int) -> int:
    """The smallest batch size that needs as few batches as ``batch_size`` does: rows spread
    evenly (111 rows at 27 -> 5 batches of at most 23, not four of 27 and one of 3)."""
    if n_rows <= 0:
        return batch_size
    n_batches = -(-n_rows // batch_size)
    return -(-n_rows // n_batches)
