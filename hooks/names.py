"""TransformerLens hook names for the tensors the study measures."""

from __future__ import annotations

from typing import Literal

Tensor = Literal["q", "k", "v"]
Rotary = Literal["pre", "post"]
TENSORS: tuple[str, ...] = ("q", "k", "v")


def qkv_hook(layer: int, tensor: Tensor, rotary: Rotary = "pre") -> str:
    """``blocks.{layer}.attn.hook_{q,k,v}`` (pre-rotary) or ``hook_rot_{q,k}`` (post-rotary).

    V is never rotated, so ``rotary`` is ignored for it.
    """
    if tensor not in TENSORS:
        raise ValueError(f"tensor={tensor!r}: allowed values are {TENSORS}.")
    if rotary not in ("pre", "post"):
        raise ValueError(f"rotary={rotary!r}: allowed values are 'pre', 'post'.")
    if rotary == "post" and tensor != "v":
        return f"blocks.{layer}.attn.hook_rot_{tensor}"
    return f"blocks.{layer}.attn.hook_{tensor}"


def parse_layer(name: str) -> int:
    """The layer index of a ``blocks.{layer}.…`` hook name."""
    parts = name.split(".")
    if len(parts) < 2 or parts[0] != "blocks":
        raise ValueError(f"{name!r} is not a per-layer hook name (blocks.<layer>....).")
    return int(parts[1])
