"""Where a model's modules live when its layers are split over several GPUs of one machine.

``load_model(..., device="cuda:0", n_devices=N)`` puts block ``i`` of an ``L``-layer model on GPU
``base + (i * N) // L``: TransformerLens's own rule (``get_device_for_block_index``), which its
forward follows to move the residual stream from block to block. The embedding sits with block
0; the final norm and the unembedding with the last block (TransformerLens applies them where
the last block left the residual). Everything a module owns (weights, zero biases, buffers) goes
to that module's device, and drope_lens's kernels run on the device of their input (the fused
kernels switch the current CUDA device to it), so a split model computes exactly what the
single-GPU model computes: the same kernels on the same inputs, on other GPUs.

``n_devices`` GPUs hold one replica; under ``torchrun`` each rank's replica starts at GPU
``LOCAL_RANK * n_devices`` (:func:`drope_lens.model.ranks.rank_device`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch

from .ranks import launched, rank_device


@dataclass(frozen=True)
class Placement:
    """The device of every module of an ``n_layers``-layer model split over ``n_devices`` devices."""

    base: torch.device
    n_devices: int
    n_layers: int

    @property
    def layer_devices(self) -> list[torch.device]:
        """Device of each block, in layer order (TransformerLens's rule)."""
        return [self.layer_device(i) for i in range(self.n_layers)]

    def layer_device(self, layer: int) -> torch.device:
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer}: the model has layers 0..{self.n_layers - 1}.")
        if self.n_devices == 1:
            return self.base
        return torch.device(self.base.type, (self.base.index or 0) + (layer * self.n_devices) // self.n_layers)

    def device_for(self, module: str) -> torch.device:
        """Device of the module at dotted path ``module`` (``"blocks.3.attn"``, ``"unembed"``, ...)."""
        head, _, rest = module.partition(".")
        if head == "blocks" and rest:
            return self.layer_device(int(rest.split(".", 1)[0]))
        if head in ("ln_final", "unembed", "hook_unembed"):
            return self.layer_device(self.n_layers - 1)
        return self.layer_device(0)  # embed, hook_embed, hook_tokens, the model itself


def plan_placement(device: Union[str, torch.device], n_devices: int, n_layers: int) -> Placement:
    """Validate a split and return its placement.

    ``device`` is the first device (a bare ``"cuda"`` is resolved: this rank's first GPU under
    ``torchrun``, else the current device; with ``n_devices == 1`` outside ``torchrun`` it is
    kept as given). Errors name the bad value: ``n_devices`` must be a positive integer, at most
    ``n_layers``, and a split needs CUDA devices ``base .. base + n_devices - 1`` to exist.
    """
    if isinstance(n_devices, bool) or not isinstance(n_devices, int) or n_devices < 1:
        raise ValueError(f"n_devices={n_devices!r}: must be a positive integer (GPUs per model).")
    if n_devices > n_layers:
        raise ValueError(f"n_devices={n_devices}: the model has only {n_layers} layers to split.")
    base = torch.device(device)
    if n_devices > 1 and base.type != "cuda":
        raise ValueError(f"n_devices={n_devices} splits layers over CUDA GPUs; device={str(device)!r} is not CUDA.")
    if base.type == "cuda" and (n_devices > 1 or launched()):
        base = rank_device(base, n_devices)
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if base.index + n_devices > count:
            raise ValueError(
                f"n_devices={n_devices} from {base}: needs GPUs {base.index}..{base.index + n_devices - 1}, "
                f"but {count} are visible."
            )
    return Placement(base, n_devices, n_layers)


def layer_device(model, layer: int) -> torch.device:
    """Where block ``layer`` of a loaded model computes (the device of its weights)."""
    block = model.blocks[layer]
    for param in block.parameters():
        return param.device
    return torch.device(model.cfg.device)  # pragma: no cover - a block without parameters
