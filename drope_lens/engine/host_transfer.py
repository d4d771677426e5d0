"""One device-to-host copy of everything a forward's capture hooks stored, and deferred device work.

After a hooked forward the measurement engine holds many small device tensors (per layer norms,
per head attention statistics, ...). Copying them one by one costs one synchronising copy each;
:func:`pack_to_host` instead gathers every CUDA tensor of a nested structure (dicts, lists, tuples,
dataclasses such as :class:`~drope_lens.measurement.attention_stats.AttentionStats`) into ONE byte
buffer per device (one ``torch.cat`` per dtype, segments ordered by element size so that every
segment starts aligned), issues ONE ``non_blocking`` copy into pinned host memory and records a
CUDA event. :meth:`HostPack.host` waits on that event only and returns the same structure with CPU
tensors (views into the pinned buffer, bit-identical to the device tensors).

Values that are :class:`DeferredCapture` objects are left in place and not copied: they stand for
device work that should start only after the copy was issued (e.g. the batched spectra of Exp 4's
representation entropy), :func:`find_deferred` lists them so that the engine can ``launch()`` them,
and whoever reads them calls ``result()`` (which returns host values).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch

from drope_lens.measurement.deferred import DeferredCapture

__all__ = ["DeferredCapture", "HostPack", "find_deferred", "pack_to_host"]


def find_deferred(tree) -> list[DeferredCapture]:
    """Every :class:`DeferredCapture` in a nested structure, in traversal order, each once."""
    return _collect(tree, DeferredCapture)


def _collect(tree, kind: type) -> list:
    """Every ``kind`` instance in a nested structure (dicts, lists, tuples, dataclasses; never inside a
    :class:`DeferredCapture` unless that is ``kind``), in traversal order, each once."""
    found: dict[int, Any] = {}

    def walk(node) -> None:
        if isinstance(node, kind):
            found.setdefault(id(node), node)
        elif isinstance(node, DeferredCapture):
            return
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)
        elif dataclasses.is_dataclass(node) and not isinstance(node, type):
            for f in dataclasses.fields(node):
                walk(getattr(node, f.name))

    walk(tree)
    return list(found.values())


def _rebuild(node, replace: dict[int, torch.Tensor], memo: dict[int, Any]):
    """``node`` with every tensor whose id is in ``replace`` swapped; shared sub-structures stay shared."""
    key = id(node)
    if key in memo:
        return memo[key]
    if isinstance(node, torch.Tensor):
        out = replace.get(key, node)
    elif isinstance(node, DeferredCapture):
        out = node
    elif isinstance(node, dict):
        out = type(node)((k, _rebuild(v, replace, memo)) for k, v in node.items())
    elif isinstance(node, tuple) and hasattr(node, "_fields"):  # named tuple
        out = type(node)(*(_rebuild(v, replace, memo) for v in node))
    elif isinstance(node, (list, tuple)):
        out = type(node)(_rebuild(v, replace, memo) for v in node)
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        out = dataclasses.replace(node, **{f.name: _rebuild(getattr(node, f.name), replace, memo)
                                           for f in dataclasses.fields(node) if f.init})
    else:
        out = node
    memo[key] = out
    return out


def _tensors(tree) -> list[torch.Tensor]:
    """Every tensor of a nested structure (not inside DeferredCapture objects), each once."""
    return _collect(tree, torch.Tensor)


class HostPack:
    """The pending host copy of a nested structure (see :func:`pack_to_host`). It holds the
    structure already rebuilt around host tensors (filled once the copies end), not the device
    tensors, so device memory is released as soon as the caller drops its own references."""

    def __init__(self, host_tree, events: list, n_copies: int):
        self._tree, self._events = host_tree, events
        #: device-to-host copies issued (one per device holding tensors; 0 when nothing was on a device)
        self.n_copies = n_copies

    def host(self):
        """Wait for the copies (their events only) and return the structure with host tensors."""
        for event in self._events:
            event.synchronize()
        self._events = []
        return self._tree


def pack_to_host(tree, *, include_cpu: bool = False) -> HostPack:
    """Start ONE non-blocking copy per device of every tensor in ``tree`` (module doc).

    Tensors already on the CPU are passed through as they are, unless ``include_cpu`` (used by
    tests to exercise the packing without a GPU: they are then packed and copied like device
    tensors, into ordinary memory). :class:`DeferredCapture` values are not touched.
    """
    tensors = [t for t in _tensors(tree) if include_cpu or t.device.type != "cpu"]
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        by_device.setdefault(t.device, []).append(t)
    replace: dict[int, torch.Tensor] = {}
    events = []
    for device, group in by_device.items():
        flat, layout = _pack(group)
        pinned = device.type == "cuda"
        host = torch.empty(flat.shape, dtype=torch.uint8, pin_memory=pinned)
        host.copy_(flat, non_blocking=pinned)
        if pinned:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            events.append(event)
        replace.update(_unpack(host, layout))
    return HostPack(_rebuild(tree, replace, {}) if replace else tree, events, n_copies=len(by_device))


def _pack(group: list[torch.Tensor]) -> tuple[torch.Tensor, list]:
    """One uint8 buffer holding every tensor of ``group`` (one device) and how to cut it back.

    One ``torch.cat`` per dtype gives a contiguous buffer per dtype; the dtypes' byte views are
    concatenated by decreasing element size, so every segment's byte offset is a multiple of its
    element size (sizes are powers of two) and ``view(dtype)`` of the slice is valid.
    """
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in group:
        by_dtype.setdefault(t.dtype, []).append(t)
    segments, layout, offset = [], [], 0
    for dtype in sorted(by_dtype, key=lambda d: (-d.itemsize, str(d))):
        members = by_dtype[dtype]
        flat = torch.cat([t.detach().reshape(-1) for t in members]) if len(members) > 1 \
            else members[0].detach().reshape(-1).contiguous()
        data = flat if dtype == torch.uint8 else flat.view(torch.uint8)
        segments.append(data)
        layout.append((dtype, offset, [(id(t), tuple(t.shape), t.numel()) for t in members]))
        offset += data.numel()
    flat = torch.cat(segments) if len(segments) > 1 else segments[0]
    return flat, layout


def _unpack(host: torch.Tensor, layout: list) -> dict[int, torch.Tensor]:
    out: dict[int, torch.Tensor] = {}
    for dtype, offset, members in layout:
        n_bytes = sum(numel for _, _, numel in members) * dtype.itemsize
        values = host[offset: offset + n_bytes]
        values = values if dtype == torch.uint8 else values.view(dtype)
        start = 0
        for key, shape, numel in members:
            out[key] = values[start: start + numel].view(shape)
            start += numel
    return out
