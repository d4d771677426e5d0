"""The sweep engine: planned batches over a run's units, resumed from its RunStore, shared among ranks.

Every experiment plans its forwards the same way, so that its numbers never depend on how the
sweep was run:

1. Plan the batches over ALL units of the run, finished or not (a *unit* is what the RunStore
   saves as one part: a text, a condition, ...; a planned batch lists the units its rows feed).
2. :func:`plan_sweep` reads which units are finished (and which batches are checkpointed), keeps
   the batches that still feed an unfinished unit, and gives this rank its share of them
   (:func:`drope_lens.engine.distributed.shard`: whole planned batches, so every row is computed in the
   same batch, with the same batch mates, as in a single-process uninterrupted run: the same
   GEMM shapes, hence the same roundings on any GPU).
3. Run ``plan.mine``; save parts (or :meth:`~drope_lens.engine.results.RunStore.save_batch` checkpoints
   when a unit's rows come from several batches, which several ranks may compute).
4. :func:`gather` the rows computed on every rank; units finished before this run come from the
   store. Every rank then holds, and ``run`` returns, the whole run's DataFrame.

Outside ``torchrun`` the same code runs with one rank: the plan is everything unfinished and
``gather`` returns its input. Under ``torchrun`` the finished-units reading is rank 0's, sent to
all ranks, so every rank shards the same list even while other ranks already write parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, TypeVar

from drope_lens.engine import distributed
from drope_lens.engine.results import RunStore

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class SweepPlan:
    """What one rank runs of a sweep planned as ``n_batches`` batches.

    ``done``: units saved before this run started. ``needed``: batches that feed an unfinished
    unit. ``saved``: needed batches whose checkpoint exists (load, do not run). ``todo``: needed
    batches to run, over all ranks. ``mine``: this rank's share of ``todo``, in plan order.
    """

    n_batches: int
    done: frozenset[str]
    needed: tuple[int, ...]
    saved: tuple[int, ...]
    todo: tuple[int, ...]
    mine: tuple[int, ...]


def plan_sweep(
    batch_units: Sequence[Iterable[str]],
    store: Optional[RunStore],
    *,
    costs: Optional[Sequence[float]] = None,
    checkpoints: Optional[Sequence[str]] = None,
    device=None,
) -> SweepPlan:
    """This rank's share of the planned batches that still feed an unfinished unit.

    Args:
        batch_units: per planned batch, the store units its rows belong to.
        store: the run's store (None: nothing is finished, nothing is checkpointed).
        costs: per planned batch, its relative cost (e.g. rows x tokens) for balancing ranks;
            None shares batches round robin.
        checkpoints: per planned batch, its checkpoint key in ``store`` (see
            :meth:`RunStore.save_batch`); a needed batch with a checkpoint is loaded, not run.
        device: where the model computes (picks the backend if the process group is created here).
    """
    batch_units = [tuple(units) for units in batch_units]
    if costs is not None and len(costs) != len(batch_units):
        raise ValueError(f"plan_sweep: {len(batch_units)} batches but {len(costs)} costs.")
    if checkpoints is not None and len(checkpoints) != len(batch_units):
        raise ValueError(f"plan_sweep: {len(batch_units)} batches but {len(checkpoints)} checkpoint keys.")
    if distributed.world().size > 1:
        distributed.init_from_env(device)
    state = None
    if distributed.is_main():
        state = _read_state(batch_units, store, checkpoints)
    done, checkpointed = distributed.broadcast(state)  # rank 0's reading, on every rank
    needed = tuple(k for k, units in enumerate(batch_units) if not all(u in done for u in units))
    saved = tuple(k for k in needed if k in checkpointed)
    todo = tuple(k for k in needed if k not in checkpointed)
    mine = tuple(distributed.shard(todo, None if costs is None else [costs[k] for k in todo]))
    return SweepPlan(len(batch_units), done, needed, saved, todo, mine)


def _read_state(batch_units, store, checkpoints) -> tuple[frozenset[str], frozenset[int]]:
    if store is None:
        return frozenset(), frozenset()
    units = {u for batch in batch_units for u in batch}
    done = frozenset(u for u in units if store.has(u))
    checkpointed = frozenset(k for k, key in enumerate(checkpoints or ()) if store.has_batch(key))
    return done, checkpointed


def gather(local: dict[K, V]) -> dict[K, V]:
    """``local`` merged with every other rank's (keys must be disjoint: each rank computed its own
    batches). Outside ``torchrun``: ``local`` itself."""
    if distributed.world().size == 1:
        return local
    merged: dict[K, V] = {}
    for rank, part in enumerate(distributed.all_gather(local)):
        clash = merged.keys() & part.keys()
        if clash:
            raise RuntimeError(f"ranks computed the same keys {sorted(clash)[:3]}: the sweep plan differed between ranks.")
        merged.update(part)
    return merged
