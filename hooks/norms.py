"""L2 norms of hooked activations, computed once per tensor by all the hooks of one forward.

Measurements that share a forward (:func:`drope_lens.engine.measure.measure`) read norms of the
same activations: Exp 4 and Exp 5 both take the residual stream's (``hook_resid_post`` per
position, ``hook_resid_pre`` at position 0), and Exp 8-9 takes ``hook_q`` and ``hook_q_normed``,
which are one tensor when the model has no q norm (likewise k). Inside ``with shared_norms():``
(the engine's hooked forward) :func:`position_norms` and :func:`first_position_norms` compute each
tensor's norms once and give every later caller the same float32 tensor; outside it they compute
at every call. Results are keyed by the tensor itself (its identity, held weakly: an entry goes
when its activation is freed), so hooks on different hook points that receive one tensor share
them; capture hooks only read, so a tensor holds the same values for all of its hooks.
"""

from __future__ import annotations

import contextlib
import weakref
from contextvars import ContextVar
from functools import partial
from typing import Callable, Iterator, Optional

import torch
from jaxtyping import Float

#: how a kind of norm is computed from the hooked tensor
Compute = Callable[[torch.Tensor], torch.Tensor]


class NormCache:
    """The norms computed in one forward, per (live tensor, kind of norm)."""

    def __init__(self) -> None:
        self._entries: dict[tuple[int, str], tuple[weakref.ref, torch.Tensor]] = {}

    def get(self, x: torch.Tensor, kind: str, compute: Compute) -> torch.Tensor:
        """``compute(x)``, computed at the first call for ``x`` and ``kind`` and reused after."""
        key = (id(x), kind)
        entry = self._entries.get(key)
        if entry is not None and entry[0]() is x:
            return entry[1]
        value = compute(x)
        self._entries[key] = (weakref.ref(x, partial(self._drop, key)), value)
        return value

    def _drop(self, key: tuple[int, str], ref: weakref.ref) -> None:
        """Forget ``key`` once its tensor is freed (unless a newer tensor took its place)."""
        if self._entries.get(key, (None,))[0] is ref:
            del self._entries[key]


_CURRENT: ContextVar[Optional[NormCache]] = ContextVar("drope_lens_norm_cache", default=None)


@contextlib.contextmanager
def shared_norms() -> Iterator[None]:
    """Within the block, each tensor's norms are computed once (see module doc). For forwards whose
    hooks only read activations: a hook that changed a tensor in place after another had taken its
    norms would leave later callers the old ones (inference tensors keep no version counter to
    notice it)."""
    token = _CURRENT.set(NormCache())
    try:
        yield
    finally:
        _CURRENT.reset(token)


def _cached(x: torch.Tensor, kind: str, compute: Compute) -> torch.Tensor:
    cache = _CURRENT.get()
    return compute(x) if cache is None else cache.get(x, kind, compute)


def _position_norms(x: torch.Tensor) -> torch.Tensor:
    # float32 accumulation without materialising a float32 copy of x (nor any copy when x is a view)
    return torch.linalg.vector_norm(x, dim=tuple(range(2, x.ndim)), dtype=torch.float32)


def _first_position_norms(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x[:, 0], dim=tuple(range(1, x.ndim - 1)), dtype=torch.float32)


def position_norms(x: Float[torch.Tensor, "batch pos ..."]) -> Float[torch.Tensor, "batch pos"]:
    """||x[b, t]||_2 over all axes after the position axis (all heads together for q/k/v), float32,
    in the units of ``x``."""
    return _cached(x, "position", _position_norms)


def first_position_norms(x: Float[torch.Tensor, "batch pos ..."]) -> Float[torch.Tensor, "batch"]:
    """||x[b, 0]||_2 over all axes after the position axis, float32, in the units of ``x``: position 0
    alone (not a slice of :func:`position_norms`, whose reduction may round differently on CUDA)."""
    return _cached(x, "first_position", _first_position_norms)
