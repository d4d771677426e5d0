"""engine.host_transfer: one packed device-to-host copy gives back every tensor exactly.

CUDA-free: ``include_cpu=True`` packs CPU tensors the way device tensors are packed (one byte
buffer, one copy), so the round trip is checked against the original tensors themselves (an
independent value: torch.equal on every element, dtype and shape)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pytest
import torch

from drope_lens.engine.host_transfer import DeferredCapture, find_deferred, pack_to_host
from drope_lens.measurement.attention_stats import AttentionStats


class _Work(DeferredCapture):
    def __init__(self):
        self.launched = 0

    def launch(self):
        self.launched += 1

    def result(self):
        return self.launched


@dataclass(frozen=True)
class _Frozen:
    a: torch.Tensor
    b: Optional[torch.Tensor] = None


def _tree():
    g = torch.Generator().manual_seed(0)
    norms = torch.randn(4, 9, generator=g)
    stats = AttentionStats(*[torch.rand(3, 5, generator=g) for _ in range(4)], torch.rand(3, 5, 7, generator=g),
                           torch.tensor([6, 7, 8]))
    work = _Work()
    tree = {
        0: {"bos_norm": norms[:, 0], "bos_ratio": norms[:, 0] / norms[:, 1:].mean(dim=1)},  # a strided view
        "float64": torch.randn(3, 2, generator=g, dtype=torch.float64),
        "bf16": torch.randn(2, 3, 5, generator=g).bfloat16().transpose(0, 2),  # non-contiguous
        "half": torch.randn(7, generator=g).half(),
        "bool": torch.rand(5, generator=g) > 0.5,
        "uint8": torch.randint(0, 256, (3, 3), generator=g, dtype=torch.uint8),
        "int32": torch.randint(-9, 9, (5,), generator=g, dtype=torch.int32),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "list": [torch.arange(3), (torch.ones(3, dtype=torch.int16), "label", 3)],
        "frozen": _Frozen(torch.randn(2, generator=g)),
        "stats": {1: stats, "alias": stats},
        "work": work,
        "nested_work": [work],
    }
    return tree


def _pairs(original, rebuilt, path="tree"):
    if isinstance(original, torch.Tensor):
        yield path, original, rebuilt
    elif isinstance(original, dict):
        assert list(original) == list(rebuilt), path
        for key in original:
            yield from _pairs(original[key], rebuilt[key], f"{path}[{key!r}]")
    elif isinstance(original, (list, tuple)):
        assert type(original) is type(rebuilt) and len(original) == len(rebuilt), path
        for i, (a, b) in enumerate(zip(original, rebuilt)):
            yield from _pairs(a, b, f"{path}[{i}]")
    elif hasattr(original, "__dataclass_fields__"):
        assert type(original) is type(rebuilt), path
        for name in original.__dataclass_fields__:
            yield from _pairs(getattr(original, name), getattr(rebuilt, name), f"{path}.{name}")
    else:
        assert original is rebuilt or original == rebuilt, path


def test_one_packed_copy_gives_back_every_tensor_of_mixed_dtypes_exactly():
    tree = _tree()
    pack = pack_to_host(tree, include_cpu=True)
    host = pack.host()
    assert pack.n_copies == 1
    pairs = list(_pairs(tree, host))
    assert len(pairs) == 25  # 13 tensors + 6 AttentionStats fields, reached twice (alias)
    storages = set()
    for path, a, b in pairs:
        assert b.dtype == a.dtype and b.shape == a.shape, path
        assert torch.equal(b, a), path
        storages.add(b.untyped_storage().data_ptr())
    assert len(storages) == 1  # every tensor is a view into the one copied buffer
    assert host["stats"]["alias"] is host["stats"][1]  # shared structure stays shared
    assert host["work"] is tree["work"] and host["nested_work"][0] is tree["work"]  # deferred values untouched
    assert find_deferred(tree) == [tree["work"]]


def test_cpu_tensors_pass_through_without_a_copy():
    tree = _tree()
    pack = pack_to_host(tree)
    assert pack.n_copies == 0 and pack.host() is tree


@pytest.mark.gpu
def test_device_tensors_come_back_in_one_copy():
    tree = _tree()
    on_device = {k: v for k, v in tree.items() if k not in ("work", "nested_work")}
    device_tree = {"x": [t.cuda() for _, t, _ in _pairs(on_device, on_device)]}
    pack = pack_to_host(device_tree)
    host = pack.host()
    assert pack.n_copies == 1
    for a, b in zip(device_tree["x"], host["x"]):
        assert b.device.type == "cpu" and b.dtype == a.dtype and torch.equal(b, a.cpu())
