"""The engine: planned batches over a run's units, resumed from its RunStore, shared among ranks.

Every experiment runs through :func:`run_sweep` (the one execution path, as TransformerLens runs
every analysis through ``run_with_hooks``): it declares its planned batches (:class:`Planned`:
the store units each feeds, a cost, a checkpoint key when a unit's rows span batches) and a step
that runs one batch (its forward or generation with its hooks) and yields how the captures become
rows. The engine then does the same for every experiment, so that its numbers never depend on how
the sweep was run:

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
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, TypeVar

import torch
from tqdm.auto import tqdm

from drope_lens.engine import distributed
from drope_lens.engine.results import RunStore
from drope_lens.measurement.tokens import model_name, model_variant

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


# ------------------------------------------------------------------------------------------
# run_sweep: steps 1-4 above for any experiment
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Planned:
    """One planned batch: the store ``units`` its rows feed, its relative ``cost`` (for balancing
    ranks) and, when a unit's rows come from several batches, its ``checkpoint`` key in the store
    (the batch's rows are saved under it as soon as it finishes; the units are saved when all are in)."""

    units: tuple[str, ...]
    cost: float = 1.0
    checkpoint: Optional[str] = None


#: What a batch's step yields: a callable returning its rows (called one step later, so that the
#: next forward already runs while these rows are copied to the host and built).
Deferred = Callable[[], Any]


def run_sweep(
    planned: Sequence[Planned],
    store: Optional[RunStore],
    step: Callable[[int, frozenset], Iterable[Deferred]],
    *,
    label: str,
    device=None,
    assemble: Optional[Callable[[dict[int, Any], Sequence[str]], Mapping[str, Any]]] = None,
    load: Optional[Callable[[str], Any]] = None,
    weights: Optional[Sequence[int]] = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run the batches of ``planned`` that feed an unfinished unit; ``{unit: rows}`` for every unit.

    ``step(k, done)`` runs planned batch ``k`` (``done``: units finished before this run, which a
    step may skip computing) and yields deferred results, one per forward. Without checkpoints
    (every unit's rows come from one batch) a result is ``{unit: DataFrame}``, saved as the unit's
    part at once by the rank that computed it. With checkpoints, a result is the batch's rows (a
    DataFrame, saved under ``planned[k].checkpoint``); ``assemble(batch_rows, units)`` then turns
    every needed batch's rows into ``{unit: DataFrame}`` for the unfinished ``units`` (rank 0 saves
    them and drops the checkpoints). Units finished before this run are read back with ``load``
    (default :meth:`RunStore.load_part`). Under ``torchrun`` every rank returns every unit.
    ``weights``: per planned batch, how far it moves the progress bar (default 1).
    """
    checkpointed = any(p.checkpoint is not None for p in planned)
    if checkpointed and not all(p.checkpoint is not None for p in planned):
        raise ValueError("run_sweep: give every planned batch a checkpoint key, or none.")
    if checkpointed and assemble is None:
        raise ValueError("run_sweep: checkpointed batches need assemble(batch_rows, units).")
    plan = plan_sweep([p.units for p in planned], store, costs=[p.cost for p in planned],
                      checkpoints=[p.checkpoint for p in planned] if checkpointed else None, device=device)
    units: dict[str, None] = {u: None for p in planned for u in p.units}  # plan order, no repeats
    local: dict = {}  # unit -> rows (no checkpoints) or planned batch -> rows (checkpoints)

    def finish(k: int, deferred: Deferred) -> None:
        result = deferred()
        if checkpointed:
            local[k] = result
            if store is not None:
                store.save_batch(planned[k].checkpoint, result)
            return
        for unit, rows in result.items():
            if unit in plan.done:  # recomputed only because it shares a batch with a missing unit
                continue
            local[unit] = rows
            if store is not None:
                store.save_part(unit, rows)

    total = sum(weights[k] if weights is not None else 1 for k in plan.mine)
    bar = progress(range(total), total, label, show_progress)
    pending = None
    for k in plan.mine:
        for deferred in step(k, plan.done):
            if pending is not None:
                finish(*pending)
            pending = (k, deferred)
        bar.update(weights[k] if weights is not None else 1)
    if pending is not None:
        finish(*pending)
    bar.close()
    loaded = load or (lambda unit: store.load_part(unit))
    if not checkpointed:
        rows = gather(local)
        return {u: rows[u] if u in rows else loaded(u) for u in units}
    # Batches checkpointed by an earlier, interrupted run: every rank reads them before the gather
    # (rank 0 deletes them after it, once the units are saved).
    saved = {k: store.load_batch(planned[k].checkpoint) for k in plan.saved}
    batch_rows = gather(local) | saved
    todo = [u for u in units if u not in plan.done]
    built = dict(assemble({k: batch_rows[k] for k in plan.needed}, todo)) if todo else {}
    if store is not None and distributed.is_main():
        for unit in todo:
            store.save_part(unit, built[unit])
        store.drop_batches([p.checkpoint for p in planned])
    return {u: built[u] if u in built else loaded(u) for u in units}


def bind_store(store, model, experiment: str, config, **content):
    """``store`` bound to this model's fingerprint (None stays None): ``experiment`` (a label),
    ``config`` (the experiment's config dataclass, every field), ``content`` (what the rows are
    computed from, by content: :func:`~drope_lens.engine.results.texts_fingerprint`,
    :func:`~drope_lens.engine.results.items_fingerprint`, other settings) and the model's
    :func:`~drope_lens.engine.results.model_fingerprint`. The scope is :func:`unit_prefix`; see
    :meth:`drope_lens.engine.results.RunStore.bind` (raises before any work when the directory holds
    another configuration)."""
    if store is None:
        return None
    from drope_lens.engine.results import model_fingerprint

    fields = {"experiment": experiment, "config": config, **content, "model": model_fingerprint(model)}
    return store.bind(unit_prefix(model), fields, device=model.cfg.device)


def unit_prefix(model) -> str:
    """Names a model's units in a run store: variant plus a short hash of its source."""
    import hashlib

    return f"{model_variant(model)}-{hashlib.sha256(model_name(model).encode()).hexdigest()[:6]}"




class HostCopy:
    """Tensors (a tensor or a nested dict of them) copied from the device into pinned host memory
    without blocking; ``host()`` waits for those copies only, so the next forward can already be
    queued. CPU tensors are passed through."""

    def __init__(self, tree):
        self.tree = self._copy(tree)
        # one event per device the copies run on (the tensors' devices: a model split over GPUs,
        # or on a GPU other than the current one), recorded on that device's current stream
        self.events = []
        for device in sorted(self._cuda_devices(tree), key=str):
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            self.events.append(event)

    @classmethod
    def _copy(cls, tree):
        if isinstance(tree, dict):
            return {k: cls._copy(v) for k, v in tree.items()}
        if not tree.is_cuda:
            return tree
        out = torch.empty(tree.shape, dtype=tree.dtype, pin_memory=True)
        out.copy_(tree, non_blocking=True)
        return out

    @classmethod
    def _cuda_devices(cls, tree) -> set:
        if isinstance(tree, dict):
            return set().union(*(cls._cuda_devices(v) for v in tree.values()))
        return {tree.device} if tree.is_cuda else set()

    def host(self):
        for event in self.events:
            event.synchronize()
        return self.tree


def progress(iterable, total: int, desc: str, enabled: bool = True):
    """A progress bar (shown on rank 0 only under torchrun: it counts rank 0's share)."""
    return tqdm(iterable, total=total, desc=desc, disable=not (enabled and distributed.is_main()), leave=False)


