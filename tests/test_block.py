"""LensTransformerBlock: ln1 once per block, the same numbers as TransformerLens's block."""

from __future__ import annotations

import torch
from transformer_lens.components import TransformerBlock

import drope_lens as dl
from drope_lens.model.block import LensTransformerBlock


def _count_calls(module, counter):
    return module.register_forward_hook(lambda *_: counter.__setitem__(0, counter[0] + 1))


def test_ln1_runs_once_and_logits_equal_transformer_lens_block():
    model = dl.load_model("bundled:toy/rope")
    tokens = model.to_tokens(["The city of Paris is in France.", "Is the city of Oslo in Norway?"])
    assert all(type(block) is LensTransformerBlock for block in model.blocks)
    calls = [0]
    handle = _count_calls(model.blocks[0].ln1, calls)
    with torch.inference_mode():
        ours = model(tokens)
        assert calls[0] == 1
        for block in model.blocks:  # stock TransformerLens 3.9 block forward: ln1 three times
            block.__class__ = TransformerBlock
        calls[0] = 0
        stock = model(tokens)
        assert calls[0] == 3
    handle.remove()
    assert torch.equal(ours, stock)


def test_hooking_ln1_keeps_transformer_lens_semantics():
    model = dl.load_model("bundled:toy/rope")
    # Hooking ln1 runs TransformerLens's eager RMSNorm; on CUDA the unhooked forward would use the
    # fused one, which may differ in the last bit (tests/test_fused.py): compare eager with eager.
    model.set_fused_kernels(False)
    tokens = model.to_tokens("The city of Paris is in France.")
    fired = []
    with torch.inference_mode():
        plain = model(tokens)
        hooked = model.run_with_hooks(
            tokens, fwd_hooks=[("blocks.1.ln1.hook_normalized", lambda x, hook: fired.append(x.shape))]
        )
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("ln1.hook_scale"))
    assert len(fired) == 3  # query, key and value inputs, as in stock TransformerLens
    assert torch.equal(plain, hooked)
    assert cache["blocks.0.ln1.hook_scale"].shape == (1, tokens.shape[1], 1)
