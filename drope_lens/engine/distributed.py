"""Data-parallel sweeps on PyTorch's own distributed runtime (``torchrun``, ``torch.distributed``).

A sweep launched as ``torchrun --nproc-per-node N drope-lens run ...`` (or any script that calls
an experiment's ``run``) runs as N processes, the *ranks*. Each rank loads its own model replica
on its own GPU (``cuda:LOCAL_RANK``, or ``cuda:LOCAL_RANK * n_devices`` for replicas split over
several GPUs), runs its share of the sweep's planned batches (:func:`shard`), writes its parts
through the run's :class:`~drope_lens.engine.results.RunStore` into the same directory, and the results
are exchanged at the end (:func:`all_gather`); rank 0 writes ``data.parquet`` and ``meta.json``.

Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything here is a no-op:
:func:`world` is ``World(rank=0, size=1, local_rank=0)``, :func:`shard` returns everything,
:func:`barrier` returns at once.

The process group is created once, by :func:`init_from_env` (the CLI calls it; an experiment's
collectives call it on first use, so ``run(...)`` works unchanged under ``torchrun``): NCCL when
the ranks compute on CUDA, gloo on CPU.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import heapq
import os
import sys
from typing import Any, Iterator, NamedTuple, Optional, Sequence, TypeVar, Union

import torch

T = TypeVar("T")


from ..model.ranks import (  # noqa: F401  (re-exported: the engine's public API)
    _ALONE,
    World,
    _dist,
    _env_int,
    _initialized,
    is_main,
    launched,
    rank_device,
    world,
)


def init_from_env(
    device: Union[str, torch.device, None] = None,
    *,
    n_devices: int = 1,
    backend: Optional[str] = None,
    timeout: Optional[datetime.timedelta] = None,
) -> World:
    """Create the process group once when launched by ``torchrun`` with more than one rank.

    ``backend`` defaults to ``"nccl"`` when ``device`` is CUDA (``None``: CUDA if available) and
    ``"gloo"`` otherwise. On CUDA the current device is set to this rank's first GPU
    (:func:`rank_device`), so ``"cuda"`` means this rank's GPU from then on. Does nothing when the
    group exists already, or when not launched by ``torchrun``, or with a world size of 1.
    """
    if n_devices < 1:
        raise ValueError(f"n_devices={n_devices}: must be at least 1.")
    if _initialized() or not launched():
        return world()
    me = world()
    if me.size == 1:
        return me
    dist = _dist()
    if dist is None:  # pragma: no cover - torch built without distributed
        raise RuntimeError("this torch build has no torch.distributed; cannot run with WORLD_SIZE > 1.")
    target = rank_device(device, n_devices)
    if backend is None:
        backend = "nccl" if target.type == "cuda" else "gloo"
    if target.type == "cuda":
        count = torch.cuda.device_count()
        if target.index + n_devices > count:
            raise ValueError(
                f"LOCAL_RANK={me.local_rank} with n_devices={n_devices} needs GPUs {target.index}.."
                f"{target.index + n_devices - 1}, but this machine has {count}; run at most "
                f"{count // n_devices} processes per node (torchrun --nproc-per-node)."
            )
        torch.cuda.set_device(target)
    kwargs: dict[str, Any] = {"backend": backend}
    if timeout is not None:
        kwargs["timeout"] = timeout
    dist.init_process_group(**kwargs)
    atexit.register(_destroy)
    return world()


def _destroy() -> None:
    if _initialized():
        with contextlib.suppress(Exception):
            _dist().destroy_process_group()


def _group_ready() -> bool:
    """True when collectives are needed (world size > 1); creates the group on first use."""
    if world().size == 1:
        return False
    if not _initialized():
        init_from_env()
    return True


def barrier() -> None:
    """Wait until every rank gets here (returns at once outside a distributed run)."""
    if not _group_ready():
        return
    dist = _dist()
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (a picklable object)."""
    if not _group_ready():
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not _group_ready():
        return [obj]
    boxes: list[Any] = [None] * world().size
    _dist().all_gather_object(boxes, obj)
    return boxes


def shard(items: Sequence[T], costs: Optional[Sequence[float]] = None, *, me: Optional[World] = None) -> list[T]:
    """This rank's share of ``items`` (each item, e.g. a planned batch, goes to exactly one rank).

    Deterministic: every rank computes the same assignment from the same ``items`` and
    ``costs``. Without ``costs``, round robin (item ``k`` to rank ``k mod size``). With ``costs``,
    longest first to the least-loaded rank (ties: the earlier item, the lower rank), which keeps
    the slowest rank's load within one item of the best split. The share keeps the items' order.
    """
    me = me or world()
    n = len(items)
    if costs is None:
        return [items[k] for k in range(me.rank, n, me.size)]
    if len(costs) != n:
        raise ValueError(f"shard: {n} items but {len(costs)} costs.")
    if any(c < 0 for c in costs):
        raise ValueError("shard: costs must be non-negative.")
    loads = [(0.0, rank) for rank in range(me.size)]
    heapq.heapify(loads)
    mine = []
    for k in sorted(range(n), key=lambda k: (-costs[k], k)):
        load, rank = heapq.heappop(loads)
        if rank == me.rank:
            mine.append(k)
        heapq.heappush(loads, (load + float(costs[k]), rank))
    return [items[k] for k in sorted(mine)]


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Inside this block this process is a world of one: sweeps run all their batches here, no
    collective is issued, stores write. (E.g. rank 0 timing a single-GPU run while the others wait
    at a barrier after the block.)"""
    _ALONE[0] += 1
    try:
        yield
    finally:
        _ALONE[0] -= 1


@contextlib.contextmanager
def quiet_unless_main() -> Iterator[None]:
    """Discard what non-zero ranks print to stdout (tables, summaries); stderr is kept."""
    if is_main():
        yield
        return
    saved = sys.stdout
    with open(os.devnull, "w") as sink:
        sys.stdout = sink
        try:
            yield
        finally:
            sys.stdout = saved
