"""drope_lens.hooks: interventions touch exactly what they should; positions are absolute."""

from __future__ import annotations

import pytest
import torch

import drope_lens as dl
from drope_lens import hooks

TOKENS = torch.tensor([[1, 5, 9, 17, 33, 40, 61, 70, 12, 3]])


class _Hook:
    name = "blocks.0.attn.hook_q"


def test_zero_dims_zeros_exactly_the_mask():
    x = torch.randn(2, 7, 4, 16)
    mask = torch.zeros(4, 16, dtype=torch.bool)
    mask[1, 3] = mask[2, 15] = mask[0, 0] = True
    [(name, fn)] = hooks.zero_dims({0: mask}, "q")
    assert name == "blocks.0.attn.hook_q"
    out = fn(x, _Hook())
    assert torch.all(out[:, :, mask] == 0)
    assert torch.equal(out[:, :, ~mask], x[:, :, ~mask])


def test_zero_dims_in_a_model_forward(checkpoint_factory):
    model = dl.load_model(checkpoint_factory(attention_type="nope")[0])
    mask = torch.zeros(4, 16, dtype=torch.bool)
    mask[2, 5] = True
    seen = {}
    capture = ("blocks.1.attn.hook_q", lambda x, hook: seen.__setitem__("q", x.clone()))
    _, cache = model.run_with_cache(TOKENS, names_filter="blocks.1.attn.hook_q")
    model.run_with_hooks(TOKENS, fwd_hooks=hooks.zero_dims({1: mask}, "q") + [capture])
    assert torch.all(seen["q"][..., 2, 5] == 0)
    expected = cache["blocks.1.attn.hook_q"].clone()
    expected[..., 2, 5] = 0
    assert torch.equal(seen["q"], expected)


def test_replace_topk_with_mean():
    x = torch.randn(1, 12, 2, 8)
    x[..., 0, 3] *= 50  # head 0: dim 3 is the top dim
    x[..., 1, 6] *= 50  # head 1: dim 6
    [(_, fn)] = [p for p in hooks.replace_topk_with_mean(1, k=1, tensors=("q",)) if p[0].endswith("hook_q")]
    out = fn(x, _Hook())
    torch.testing.assert_close(out[0, :, 0, 3], x[0, :, 0, 3].mean().expand(12))
    torch.testing.assert_close(out[0, :, 1, 6], x[0, :, 1, 6].mean().expand(12))
    keep = torch.ones(2, 8, dtype=torch.bool)
    keep[0, 3] = keep[1, 6] = False
    assert torch.equal(out[..., keep], x[..., keep])


def test_batched_zero_dims_equals_each_row_alone(checkpoint_factory):
    model = dl.load_model(checkpoint_factory(n_kv_heads=2)[0])
    rng = torch.Generator().manual_seed(0)
    masks = [{layer: torch.rand(4, 16, generator=rng) < 0.2 for layer in range(2)} for _ in range(3)]
    k_masks = [{layer: torch.rand(2, 16, generator=rng) < 0.2 for layer in range(2)} for _ in range(3)]
    tokens = TOKENS.repeat(3, 1)
    batched = model.run_with_hooks(
        tokens, fwd_hooks=hooks.batched_zero_dims(masks, "q") + hooks.batched_zero_dims(k_masks, "k"))
    plain = model(TOKENS)[0]
    for row in range(3):
        alone = model.run_with_hooks(
            TOKENS, fwd_hooks=hooks.zero_dims(masks[row], "q") + hooks.zero_dims(k_masks[row], "k"))
        # fp32 GEMMs are not bitwise batch-invariant (even unhooked forwards differ by ~1e-6)
        torch.testing.assert_close(batched[row], alone[0], rtol=0, atol=2e-5)
        assert (alone[0] - plain).abs().max() > 1e-2  # the masks do change the output


def test_by_row_groups_equals_each_condition_alone(checkpoint_factory):
    model = dl.load_model(checkpoint_factory(attention_type="nope")[0])
    tokens = TOKENS.repeat(4, 1)
    cond_a = hooks.ablate_positions(["blocks.0.hook_mlp_out"], [0], model=model)
    cond_b = hooks.ablate_positions(["blocks.1.hook_attn_out"], [2, 3], mode="mean", model=model)
    out = model.run_with_hooks(tokens, fwd_hooks=hooks.by_row_groups([cond_a, cond_b], [[0, 1], [2]]))
    torch.testing.assert_close(out[0], model.run_with_hooks(TOKENS, fwd_hooks=cond_a)[0], rtol=0, atol=2e-5)
    torch.testing.assert_close(out[2], model.run_with_hooks(TOKENS, fwd_hooks=cond_b)[0], rtol=0, atol=2e-5)
    torch.testing.assert_close(out[3], model(TOKENS)[0], rtol=0, atol=2e-5)


@pytest.mark.parametrize("attention_type", [None, "nope"])
def test_position_zero_is_absolute_during_kv_cache_generation(checkpoint_factory, attention_type):
    """Zeroing the BOS MLP write gives the same generation with and without the KV cache."""
    model = dl.load_model(checkpoint_factory(attention_type=attention_type)[0])
    prompt = TOKENS[:, :6]
    seen_offsets = []
    bos_only = hooks.ablate_positions(["blocks.0.hook_mlp_out"], [0], model=model)
    spy = ("blocks.0.hook_mlp_out", lambda x, hook: seen_offsets.append(model.position_offset))
    with model.hooks(fwd_hooks=bos_only + [spy]):
        cached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_past_kv_cache=True, verbose=False)
    assert seen_offsets[:3] == [0, 6, 7]  # later forwards start at the cache offset
    with model.hooks(fwd_hooks=bos_only):
        uncached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_past_kv_cache=False, verbose=False)
    assert torch.equal(cached, uncached)
    # the study's flaw: "position 0 of every forward" also hits every newly generated token
    naive = hooks.ablate_positions(["blocks.0.hook_mlp_out"], [0])
    with model.hooks(fwd_hooks=naive):
        flawed = model.generate(prompt, max_new_tokens=8, do_sample=False, use_past_kv_cache=True, verbose=False)
    assert not torch.equal(flawed, cached)


def test_capture_hooks(checkpoint_factory):
    model = dl.load_model(checkpoint_factory()[0])
    store: dict = {}
    pairs = (hooks.capture_dim_norms(store, 2, tensors=("q", "v"))
             + hooks.capture_token_mean_norm(store, ["blocks.1.hook_attn_out"])
             + hooks.capture_positions(store, ["blocks.0.hook_resid_post"], [0, 3], model=model))
    _, cache = model.run_with_cache(TOKENS)
    model.run_with_hooks(TOKENS, fwd_hooks=pairs)
    q = cache["blocks.1.attn.hook_q"]
    torch.testing.assert_close(store[(1, "q")], q.norm(dim=1) / TOKENS.shape[1] ** 0.5)
    torch.testing.assert_close(store["blocks.1.hook_attn_out"], cache["blocks.1.hook_attn_out"].norm(dim=-1).mean(1))
    torch.testing.assert_close(store[("blocks.0.hook_resid_post", 3)], cache["blocks.0.hook_resid_post"][:, 3])


def test_sequence_axis_norm_with_lengths():
    x = torch.randn(2, 6, 3, 4)
    lengths = torch.tensor([6, 4])
    m = hooks.sequence_axis_norm(x, lengths)
    torch.testing.assert_close(m[0], x[0].norm(dim=0) / 6 ** 0.5)
    torch.testing.assert_close(m[1], x[1, :4].norm(dim=0) / 2.0)


def test_bad_hook_arguments():
    with pytest.raises(ValueError, match="tensor='x'"):
        hooks.qkv_hook(0, "x")
    with pytest.raises(ValueError, match="mode='half'"):
        hooks.ablate_positions(["blocks.0.hook_mlp_out"], [0], mode="half")
    with pytest.raises(ValueError, match="k=0"):
        hooks.replace_topk_with_mean(2, k=0)


def test_jaxtyping_shapes_are_checked():
    """Public functions carry jaxtyping shapes; a shape checker accepts right and rejects wrong."""
    from beartype import beartype
    from jaxtyping import TypeCheckError, jaxtyped

    from drope_lens.attention import apply_rotary
    from drope_lens.linear import head_projection

    norm = jaxtyped(typechecker=beartype)(hooks.sequence_axis_norm)
    assert norm(torch.randn(2, 5, 3, 4)).shape == (2, 3, 4)
    with pytest.raises(TypeCheckError):
        norm(torch.randn(2, 5, 3))
    project = jaxtyped(typechecker=beartype)(head_projection)
    assert project(torch.randn(1, 3, 8), torch.randn(2, 8, 4), torch.zeros(2, 4)).shape == (1, 3, 2, 4)
    with pytest.raises(TypeCheckError):
        project(torch.randn(1, 3, 8), torch.randn(2, 8, 4), torch.zeros(2, 4, 1))
    rotate = jaxtyped(typechecker=beartype)(apply_rotary)
    assert rotate(torch.randn(1, 3, 2, 4), 0, 10000.0).shape == (1, 3, 2, 4)
