"""Which process of a ``torchrun`` launch this is, and which device it computes on.

The model layer needs only this much of the distributed runtime (to place a replica on its
rank's GPU); the collectives that share work among ranks live in
:mod:`drope_lens.engine.distributed`, which re-exports these names. Outside ``torchrun`` every
process is ``World(rank=0, size=1, local_rank=0)``.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Union

import torch


class World(NamedTuple):
    """This process's place: ``rank`` in ``[0, size)``, ``local_rank`` on its machine."""

    rank: int
    size: int
    local_rank: int


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() else None


def _initialized() -> bool:
    dist = _dist()
    return dist is not None and dist.is_initialized()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r}: must be an integer (torchrun sets it).") from None


def launched() -> bool:
    """True when ``torchrun`` (or a launcher that sets the same variables) started this process."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


_ALONE = [0]  # > 0 inside alone(): this process acts as a world of one


def world() -> World:
    """Rank, world size and local rank: from the process group if one exists, else from the
    ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` variables ``torchrun`` sets, else ``(0, 1, 0)``."""
    local = _env_int("LOCAL_RANK", 0)
    if _ALONE[0]:
        return World(0, 1, local)
    if _initialized():
        dist = _dist()
        return World(dist.get_rank(), dist.get_world_size(), local)
    if launched():
        rank, size = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
        if not 0 <= rank < size:
            raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={size}).")
        return World(rank, size, local)
    return World(0, 1, 0)


def is_main() -> bool:
    """True on rank 0 (the rank that prints, draws progress bars and writes the final files)."""
    return world().rank == 0


def rank_device(device: Union[str, torch.device, None] = None, n_devices: int = 1) -> torch.device:
    """This rank's first device: ``cuda:LOCAL_RANK * n_devices`` for a bare ``"cuda"`` under
    ``torchrun`` (each group of ``n_devices`` GPUs holds one replica), the current CUDA device for
    a bare ``"cuda"`` otherwise, and ``device`` itself when it names an index or is not CUDA.
    ``None`` means CUDA when available, else CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type != "cuda" or device.index is not None:
        return device
    if launched():
        return torch.device("cuda", world().local_rank * n_devices)
    return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
