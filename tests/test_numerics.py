"""Half precision on a checkpoint whose q.k overflows float16 (DroPE layer-1 massive values)."""

from __future__ import annotations

import copy

import pytest
import torch

import drope_lens as dl
from builders import plant_massive_qk, reference_model, relative_error, save_checkpoint, tensors_equal, tiny_config

TOKENS = torch.randint(3, 90, (8, 64), generator=torch.Generator().manual_seed(0))
TOKENS[:, 0] = 1


@pytest.fixture(scope="module")
def hot_checkpoint(tmp_path_factory):
    ref = reference_model(tiny_config(), attention_type="nope", init_std=0.05, seed=3)
    plant_massive_qk(ref, layer=1, strength=60.0)
    path = save_checkpoint(ref, tmp_path_factory.mktemp("hot"), attention_type="nope")
    return path, ref


def _hf_logits(ref, dtype, impl, device="cpu"):
    model = copy.deepcopy(ref).to(device=device, dtype=dtype)
    model.config._attn_implementation = impl
    with torch.no_grad():
        return model(TOKENS.to(device)).logits.float()


def test_checkpoint_really_overflows_float16(hot_checkpoint):
    path, ref = hot_checkpoint
    model = dl.load_model(path)
    _, cache = model.run_with_cache(TOKENS, names_filter=lambda n: n.startswith("blocks.1.attn.hook_"))
    q_norms = cache["blocks.1.attn.hook_q"].flatten(-2).norm(dim=-1)
    raw_scores = cache["blocks.1.attn.hook_attn_scores"] / model.lens.attn_scale
    assert q_norms.max() > 500
    assert raw_scores.max() > torch.finfo(torch.float16).max
    # HF's eager path computes q.k in float16: it overflows to NaN (the study's "eager NaN").
    assert _hf_logits(ref, torch.float16, "eager").isnan().any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_finite_and_no_worse_than_hf_sdpa(hot_checkpoint, dtype):
    path, ref = hot_checkpoint
    exact = dl.load_model(path)(TOKENS)
    model = dl.load_model(path, dtype=dtype)
    ours = model(TOKENS).float()
    hf_sdpa = _hf_logits(ref, dtype, "sdpa", device=model.cfg.device)  # HF's half precision on the same hardware
    assert torch.isfinite(ours).all()
    assert relative_error(ours, exact) <= relative_error(hf_sdpa, exact)
    model.set_attention_backend("explicit")
    explicit = model(TOKENS).float()
    assert torch.isfinite(explicit).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_pattern_is_computed_in_float32(hot_checkpoint, dtype):
    """The hooked (explicit) path: scores/softmax in float32, so the sink pattern survives."""
    path, _ = hot_checkpoint
    name = "blocks.1.attn.hook_pattern"
    _, exact = dl.load_model(path).run_with_cache(TOKENS, names_filter=name)
    _, half = dl.load_model(path, dtype=dtype).run_with_cache(TOKENS, names_filter=name)
    assert half[name].dtype == torch.float32
    assert torch.isfinite(half[name]).all()
    assert half[name][:, :, 1:, 0].mean() > 0.99  # BOS sink, as in float32
    torch.testing.assert_close(half[name], exact[name], rtol=0, atol=1e-3)


def test_bf16_qk_norm_rounds_like_torch_rmsnorm(checkpoint_factory):
    """DroPE's q/k norm in bf16 is bit-identical to torch.nn.RMSNorm (upstream's module)."""
    path, ref = checkpoint_factory(attention_type="qk_norm_nope")
    model = dl.load_model(path, dtype=torch.bfloat16)
    _, cache = model.run_with_cache(TOKENS[:2, :16], names_filter=lambda n: n.startswith("blocks.0.attn.hook_"))
    raw = cache["blocks.0.attn.hook_q"].flatten(-2)
    # upstream's module on the model's device (a float32 sum's order, hence the last bf16 bit, is the device's)
    norm = copy.deepcopy(ref.model.layers[0].self_attn.q_norm).to(device=raw.device, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = norm(raw)
    assert tensors_equal(cache["blocks.0.attn.hook_q_normed"].flatten(-2), expected)


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))],
)
def test_bf16_rope_matches_hf_rounding(checkpoint_factory, device):
    """RoPE in bf16 rounds like HF's apply_rotary_pos_emb: the first layer's rotated q is bit-identical
    (on CUDA this is the fused rotary kernel)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    path, ref = checkpoint_factory()
    ref = ref.to(device)
    model = dl.load_model(path, dtype=torch.bfloat16, device=device)
    tokens = TOKENS[:2, :32].to(device)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.startswith("blocks.0.attn.hook_"))
    q = cache["blocks.0.attn.hook_q"].transpose(1, 2)  # [batch, head, pos, d_head]
    positions = torch.arange(tokens.shape[1], device=device)[None].expand(tokens.shape[0], -1)
    # HF's rotary embedding keeps inv_freq in float32 and casts cos/sin to q's dtype
    cos, sin = ref.model.rotary_emb(q, positions)
    expected, _ = apply_rotary_pos_emb(q, q, cos, sin)
    assert torch.equal(cache["blocks.0.attn.hook_rot_q"].transpose(1, 2), expected)


def test_rotary_inference_and_training_paths_round_identically():
    """The copy-saving inference path of apply_rotary and the autograd path give the same bits."""
    from drope_lens.model.attention import apply_rotary

    x = torch.randn(2, 37, 4, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        fast = apply_rotary(x, 5, 10_000.0)
    slow = apply_rotary(x.clone().requires_grad_(True), 5, 10_000.0)
    assert torch.equal(fast, slow.detach())


def test_rotary_table_built_under_inference_mode_serves_training():
    """The shared rotary table is cached; one first built inside torch.inference_mode() must
    still work in a later autograd forward (toy training after an analysis run)."""
    from drope_lens.model.attention import RotaryTable, apply_rotary

    RotaryTable._tables.clear()
    with torch.inference_mode():
        apply_rotary(torch.randn(1, 4, 2, 8), 0, 10000.0, fused_kernel=False)
    x = torch.randn(1, 4, 2, 8, requires_grad=True)
    apply_rotary(x, 0, 10000.0, fused_kernel=False).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
