"""What distinguishes a RoPE from a DroPE attention layer, and which attention kernel to use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from ..checkpoint import RopeScaling

#: ``auto``: fused SDPA unless scores or pattern are hooked; ``sdpa`` / ``explicit``: always that path.
Backend = Literal["auto", "sdpa", "explicit"]


@dataclass(frozen=True)
class AttentionSettings:
    """What distinguishes a RoPE from a DroPE attention layer."""

    rotary: bool
    rope_theta: float
    norm_q: bool
    norm_k: bool
    has_norm_weights: bool
    scale: float  # multiplier applied to q.k before the softmax
    rope_scaling: Optional[RopeScaling] = None  # Llama-3 frequency adjustment (RoPE only)
    #: A query at position p sees keys p - sliding_window < k <= p (None: every key k <= p), the
    #: convention of transformers' ``sliding_window_overlay``. Applies with and without rotary.
    sliding_window: Optional[int] = None

    def __post_init__(self) -> None:
        if (self.norm_q or self.norm_k) and not self.has_norm_weights:
            raise ValueError("norm_q/norm_k need has_norm_weights=True")
        if not self.scale > 0:
            raise ValueError(f"scale must be positive, got {self.scale}")
        if self.sliding_window is not None and not (isinstance(self.sliding_window, int) and self.sliding_window > 0):
            raise ValueError(f"sliding_window must be a positive integer or None, got {self.sliding_window!r}")
