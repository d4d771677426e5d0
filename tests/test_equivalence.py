"""drope_lens models compute what the checkpoint computes: compared with HF ``transformers``."""

from __future__ import annotations

import pytest
import torch

import drope_lens as dl
from builders import relative_error

BOUND = 1e-5
TOKENS = torch.tensor([[1, 5, 9, 17, 33, 40, 2, 61, 70, 88, 12, 3, 44, 45, 46, 90, 91, 7, 8, 20]])
LAYOUTS = [
    pytest.param(4, False, id="mha-untied"),
    pytest.param(2, True, id="gqa-tied"),
    pytest.param(1, False, id="mqa-untied"),
]


def _hf_projections(ref, tokens):
    """Outputs of every q_proj/k_proj/v_proj of the HF model (the study's way: forward hooks)."""
    captured, handles = {}, []
    for layer, block in enumerate(ref.model.layers):
        for name in ("q_proj", "k_proj", "v_proj"):
            module = getattr(block.self_attn, name)

            def hook(mod, inp, out, key=(layer, name[0])):
                captured[key] = out.detach().clone()

            handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        logits = ref(tokens).logits
    for handle in handles:
        handle.remove()
    return logits, captured


@pytest.mark.parametrize("n_kv_heads,tie", LAYOUTS)
def test_rope_matches_transformers(checkpoint_factory, n_kv_heads, tie):
    path, ref = checkpoint_factory(n_kv_heads=n_kv_heads, tie=tie)
    model = dl.load_model(path)
    assert model.variant == "rope" and not dl.is_drope(model)
    ref_logits, projections = _hf_projections(ref, TOKENS)
    logits, cache = model.run_with_cache(TOKENS)
    assert relative_error(logits, ref_logits) <= BOUND
    for (layer, kind), hf_out in projections.items():
        ours = cache[f"blocks.{layer}.attn.hook_{kind}"]
        # hook_q/k/v are [batch, pos, head, d_head]; HF's projection is [batch, pos, head*d_head]
        assert relative_error(ours.flatten(-2), hf_out) <= BOUND, (layer, kind)


@pytest.mark.parametrize("attention_type", dl.DROPE_ATTENTION_TYPES)
@pytest.mark.parametrize("softmax_scale", [None, 0.07])
@pytest.mark.parametrize("n_kv_heads,tie", LAYOUTS[:2])
def test_drope_matches_upstream_construction(checkpoint_factory, attention_type, softmax_scale, n_kv_heads, tie):
    path, ref = checkpoint_factory(attention_type=attention_type, softmax_scale=softmax_scale,
                                   n_kv_heads=n_kv_heads, tie=tie)
    model = dl.load_model(path)
    assert dl.is_drope(model)
    assert model.lens.attention_type == attention_type
    assert model.lens.softmax_scale == softmax_scale
    ref_logits, projections = _hf_projections(ref, TOKENS)
    logits, cache = model.run_with_cache(TOKENS)
    assert relative_error(logits, ref_logits) <= BOUND
    for (layer, kind), hf_out in projections.items():
        if kind in "qk" and attention_type != "nope":
            continue  # the HF hook output is post-norm for normed variants; raw checked below
        assert relative_error(cache[f"blocks.{layer}.attn.hook_{kind}"].flatten(-2), hf_out) <= BOUND, (layer, kind)


def test_upstream_saved_checkpoint_needs_no_remote_code(checkpoint_factory):
    """config.json as SakanaAI saves it: llama_drope, DroPELlamaForCausalLM, auto_map to absent code."""
    import json

    path, ref = checkpoint_factory(attention_type="qk_norm_nope")
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama_drope"
    assert config["architectures"] == ["DroPELlamaForCausalLM"]
    assert "auto_map" in config and not list(path.glob("*.py"))
    model = dl.load_model(path)
    with torch.no_grad():
        assert relative_error(model(TOKENS), ref(TOKENS).logits) <= BOUND


def test_hook_rot_q_is_identity_for_drope(checkpoint_factory):
    path, _ = checkpoint_factory(attention_type="nope")
    model = dl.load_model(path)
    _, cache = model.run_with_cache(TOKENS)
    for layer in range(model.cfg.n_layers):
        assert torch.equal(cache[f"blocks.{layer}.attn.hook_rot_q"], cache[f"blocks.{layer}.attn.hook_q"])
        assert torch.equal(cache[f"blocks.{layer}.attn.hook_rot_k"], cache[f"blocks.{layer}.attn.hook_k"])


def test_normed_hooks_are_post_norm(checkpoint_factory):
    """hook_q stays the raw projection; hook_q_normed is the full-width RMSNorm of it."""
    path, ref = checkpoint_factory(attention_type="qk_norm_nope")
    model = dl.load_model(path)
    _, cache = model.run_with_cache(TOKENS)
    raw = cache["blocks.0.attn.hook_q"].flatten(-2).cpu()  # the reference norm lives on the CPU
    norm = ref.model.layers[0].self_attn.q_norm
    with torch.no_grad():
        expected = norm(raw)
    torch.testing.assert_close(cache["blocks.0.attn.hook_q_normed"].flatten(-2).cpu(), expected, rtol=0, atol=1e-5)
    assert not torch.allclose(raw, expected)


def test_long_drope_input_beyond_2048_tokens(checkpoint_factory):
    """Past TL's 2,048-token rotary cache the DroPE model must stay rotary-free."""
    path, ref = checkpoint_factory(attention_type="nope")
    model = dl.load_model(path)
    tokens = torch.randint(3, 90, (1, 2100), generator=torch.Generator().manual_seed(1))
    tokens[0, 0] = 1
    with torch.no_grad():
        ref_logits = ref(tokens).logits
        logits = model(tokens)
    assert model.cfg.n_ctx == 128  # far below the input: nothing is sized by n_ctx
    assert relative_error(logits, ref_logits) <= BOUND


def test_rope_beyond_trained_length_warns_once_and_matches(checkpoint_factory):
    path, ref = checkpoint_factory()
    model = dl.load_model(path)
    tokens = torch.randint(3, 90, (1, 300), generator=torch.Generator().manual_seed(2))
    with pytest.warns(UserWarning, match="trained context of 128"):
        logits = model(tokens)
    with torch.no_grad():
        assert relative_error(logits, ref(tokens).logits) <= BOUND
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(tokens)  # second time: no warning


def test_fused_and_explicit_paths_agree(checkpoint_factory, monkeypatch):
    path, _ = checkpoint_factory(attention_type="qk_norm_nope", n_kv_heads=2)
    model = dl.load_model(path)
    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(1)
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    fused = model(TOKENS)
    assert len(calls) == model.cfg.n_layers  # nothing hooked: SDPA everywhere
    calls.clear()
    logits, cache = model.run_with_cache(TOKENS, names_filter=lambda n: n.endswith("hook_pattern"))
    assert len(calls) == 0  # patterns cached: explicit path everywhere
    torch.testing.assert_close(logits, fused, rtol=0, atol=1e-5)
    for layer in range(model.cfg.n_layers):
        rows = cache[f"blocks.{layer}.attn.hook_pattern"].sum(-1)
        torch.testing.assert_close(rows, torch.ones_like(rows), rtol=0, atol=1e-6)
    # only scores hooked, on one layer: that layer explicit, others fused
    calls.clear()
    model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.1.attn.hook_attn_scores", lambda t, hook: t)])
    assert len(calls) == model.cfg.n_layers - 1
