"""Whether a TransformerLens hook point currently has hooks attached."""

from __future__ import annotations

from transformer_lens.hook_points import HookPoint


def is_hooked(hook_point: HookPoint) -> bool:
    """True if any forward, forward-pre or backward hook is attached to ``hook_point``."""
    return bool(hook_point._forward_hooks or hook_point._backward_hooks or hook_point._forward_pre_hooks)
