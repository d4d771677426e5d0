"""Whether a TransformerLens hook point currently has hooks attached, and calling it only then."""

from __future__ import annotations

import torch
from torch.nn.modules import module as _module
from transformer_lens.hook_points import HookPoint


def is_hooked(hook_point: HookPoint) -> bool:
    """True if any forward, forward-pre or backward hook is attached to ``hook_point``."""
    return bool(hook_point._forward_hooks or hook_point._backward_hooks or hook_point._forward_pre_hooks)


def through(hook_point: HookPoint, x: torch.Tensor) -> torch.Tensor:
    """``hook_point(x)``; without any hook on it (nor a global module hook) ``x`` itself.

    A ``HookPoint`` is the identity plus whatever hooks are attached; calling it goes through
    ``nn.Module.__call__`` (two Python frames and eight hook-dictionary checks) even when none is
    attached, about sixteen times per layer. When nothing is attached the result is ``x`` either
    way; otherwise the hook point is called as usual, so ``run_with_hooks``, ``hooks()``,
    ``add_hook``, ``run_with_cache`` and plain ``register_forward_hook`` see exactly what they saw.
    """
    if (
        is_hooked(hook_point)
        or hook_point._backward_pre_hooks
        or _module._global_forward_hooks
        or _module._global_forward_pre_hooks
        or _module._global_backward_hooks
        or _module._global_backward_pre_hooks
        or type(hook_point).forward is not HookPoint.forward
    ):
        return hook_point(x)
    return x
