"""Captured values whose device work starts after the forward (see :mod:`drope_lens.engine.host_transfer`)."""

from __future__ import annotations

from typing import Any


class DeferredCapture:
    """A captured value whose device work starts after the forward's other captures were copied.

    A capture hook may store one in its measurement's ``captured`` dict instead of a tensor. The
    measurement engine (:mod:`drope_lens.engine.measure`) calls ``launch()`` once, right after it
    issued the one host copy of every other capture (asynchronous on CUDA: the GPU works while the
    host builds frames), and a measurement's ``rows`` calls ``result()``, which waits for the work
    and returns host values. ``result()`` must also work when ``launch()`` was never called.
    """

    def launch(self) -> None:
        raise NotImplementedError(f"{type(self).__name__}.launch")

    def result(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.result")
