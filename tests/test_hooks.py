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
    """Captured norms and positions equal float64 values computed by hand from Hugging Face forward
    hooks (q_proj / v_proj / self_attn / decoder-layer outputs), not from the same TransformerLens
    cache. Planted bugs this catches: the sequence-axis norm divided by T instead of sqrt(T); the
    token-mean norm taken over the batch axis; capture_positions reading the wrong slot."""
    path, ref = checkpoint_factory()
    model = dl.load_model(path)
    tokens = torch.cat([TOKENS, TOKENS.flip(1)])  # two rows
    store: dict = {}
    pairs = (hooks.capture_dim_norms(store, 2, tensors=("q", "v"))
             + hooks.capture_token_mean_norm(store, ["blocks.1.hook_attn_out"])
             + hooks.capture_positions(store, ["blocks.0.hook_resid_post"], [0, 3], model=model))
    model.run_with_hooks(tokens, fwd_hooks=pairs)
    seen = {}

    def keep(key):
        return lambda module, inputs, output: seen.__setitem__(key, (output[0] if isinstance(output, tuple)
                                                                       else output).detach().double())

    layers = ref.model.layers
    handles = [layers[1].self_attn.q_proj.register_forward_hook(keep("q")),
               layers[1].self_attn.v_proj.register_forward_hook(keep("v")),
               layers[1].self_attn.register_forward_hook(keep("attn_out")),
               layers[0].register_forward_hook(keep("resid0"))]
    with torch.no_grad():
        ref(tokens)
    for h in handles:
        h.remove()
    batch, n = tokens.shape
    d_head = model.cfg.d_head
    q = seen["q"].view(batch, n, -1, d_head)
    v = seen["v"].view(batch, n, -1, d_head)
    torch.testing.assert_close(store[(1, "q")].double().cpu(), q.square().sum(1).sqrt() / n ** 0.5, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(store[(1, "v")].double().cpu(), v.square().sum(1).sqrt() / n ** 0.5, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(store["blocks.1.hook_attn_out"].double().cpu(),
                               seen["attn_out"].square().sum(-1).sqrt().mean(1), rtol=1e-5, atol=1e-6)
    for position in (0, 3):
        torch.testing.assert_close(store[("blocks.0.hook_resid_post", position)].double().cpu(),
                                   seen["resid0"][:, position], rtol=1e-4, atol=1e-5)


ROWS = [[1, 5, 9, 17, 33, 40, 61, 70], [1, 44, 45, 46], [1, 7, 8, 20, 21, 22]]
INTERVENTIONS = {
    "zero BOS and position 2": lambda m: hooks.ablate_positions(["blocks.0.hook_mlp_out", "blocks.1.attn.hook_v"],
                                                                [0, 2], model=m),
    "mean over the row's positions": lambda m: hooks.ablate_positions(["blocks.0.hook_resid_post"], [1], "mean",
                                                                      model=m),
    "top-1 q/k dim by its mean": lambda m: hooks.replace_topk_with_mean(2, model=m),
    "top-1 post-rotary q/k by its mean": lambda m: hooks.replace_topk_with_mean(2, rotary="post", model=m),
}


@pytest.fixture(scope="module")
def rope_model(checkpoint_factory):
    return dl.load_model(checkpoint_factory()[0])


@pytest.mark.parametrize("name", list(INTERVENTIONS))
def test_public_interventions_under_left_padding(rope_model, name):
    """Each public intervention on a left-padded batch gives every row the logits of that row run
    alone, unpadded. Planted bug (the old public hooks): positions counted from the padded slot 0,
    so a short row's padding is zeroed instead of its BOS, and padding enters means and norms."""
    from drope_lens.measurement.generation import padded_forward

    model = rope_model
    padded, mask = padded_forward(model, ROWS, fwd_hooks=INTERVENTIONS[name](model))
    for r, row in enumerate(ROWS):
        alone = model.run_with_hooks(torch.tensor([row]), fwd_hooks=INTERVENTIONS[name](model))[0]
        torch.testing.assert_close(padded[r, mask[r].bool()], alone, rtol=0, atol=3e-5)
        assert (alone - model(torch.tensor([row]))[0]).abs().max() > 1e-3, name  # the hook does act


@pytest.mark.parametrize("name", ["zero BOS and position 2", "top-1 q/k dim by its mean",
                                  "top-1 post-rotary q/k by its mean"])
def test_public_interventions_during_generation(rope_model, name):
    """Under KV-cache generation of a left-padded batch, each row's greedy tokens equal a plain
    forward over that row's prompt + generated tokens, unpadded and without a cache, with the
    intervention on the prompt's positions only. Planted bug: 'position 0 of every forward' (hits
    each new token) or the top-k mean recomputed over generated tokens."""
    from drope_lens.measurement.generation import greedy_generate

    model = rope_model
    out = greedy_generate(model, ROWS, 6, fwd_hooks=INTERVENTIONS[name](model), batch_size=3)
    assert out.tokens != greedy_generate(model, ROWS, 6, batch_size=3).tokens, name
    for row, new in zip(ROWS, out.tokens):
        full = torch.tensor([row + new[:-1]])
        restricted = [(hook, _on_prefix(fn, len(row))) for hook, fn in INTERVENTIONS[name](None)]
        logits = model.run_with_hooks(full, fwd_hooks=restricted)
        assert logits[0, len(row) - 1:].argmax(-1).tolist() == new, name


def _on_prefix(fn, n_prompt):
    """``fn`` (index positions, model=None) applied to the first ``n_prompt`` positions only."""
    def inner(x, hook):
        out = x.clone()
        out[:, :n_prompt] = fn(x[:, :n_prompt].clone(), hook)
        return out
    return inner


def test_capture_positions_under_padding_and_generation(rope_model):
    """capture_positions reads each row's absolute position: under left padding the value of the
    row run alone; during generation a generated token's position comes from the forward that
    holds it, per row. Planted bug: the padded slot index used as the position."""
    from drope_lens.measurement.generation import greedy_generate, padded_forward

    model = rope_model
    name = "blocks.0.hook_resid_post"
    store: dict = {}
    padded_forward(model, ROWS, fwd_hooks=hooks.capture_positions(store, [name], [0, 3], model=model))
    for r, row in enumerate(ROWS):
        _, cache = model.run_with_cache(torch.tensor([row]), names_filter=name)
        for position in (0, 3):
            torch.testing.assert_close(store[(name, position)][r], cache[name][0, position], rtol=0, atol=2e-5)
    store = {}
    rows = sorted(ROWS, key=len, reverse=True)  # greedy_generate's batch order (longest first): store rows follow it
    out = greedy_generate(model, rows, 6, fwd_hooks=hooks.capture_positions(store, [name], [8], model=model),
                          batch_size=3)
    for r, (row, new) in enumerate(zip(rows, out.tokens)):
        _, cache = model.run_with_cache(torch.tensor([row + new[:-1]]), names_filter=name)
        torch.testing.assert_close(store[(name, 8)][r], cache[name][0, 8], rtol=0, atol=2e-5)


def test_shared_norms_compute_each_tensor_once_and_forget_freed_ones():
    from drope_lens.hooks.norms import NormCache

    x = torch.randn(2, 5, 3, 4)
    with hooks.shared_norms():
        first = hooks.position_norms(x)
        assert hooks.position_norms(x) is first  # the same tensor: computed once
        assert hooks.position_norms(x.clone()) is not first  # another tensor (same values): its own
        assert torch.equal(hooks.first_position_norms(x), torch.linalg.vector_norm(x[:, 0], dim=(1, 2)))
    assert hooks.position_norms(x) is not first and torch.equal(hooks.position_norms(x), first)  # outside: every call
    torch.testing.assert_close(first, x.square().sum(dim=(2, 3)).sqrt())
    cache, y = NormCache(), torch.randn(2, 3)
    cache.get(y, "sum", lambda t: t.sum(dim=-1))
    assert len(cache._entries) == 1
    del y
    assert not cache._entries  # an entry goes with its tensor


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

    from drope_lens.model.attention import apply_rotary
    from drope_lens.model.linear import head_projection

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
