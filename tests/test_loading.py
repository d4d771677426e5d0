"""Loading features: shards, tokenizer/BOS, n_ctx, hub ids, variants, to_drope, registry, CLI, memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import drope_lens as dl
from builders import reference_model, relative_error, save_checkpoint, tiny_config

TOKENS = torch.tensor([[1, 5, 9, 17, 33, 40, 2, 61, 70, 88, 12, 3]])


def test_sharded_checkpoint_with_index(tmp_path):
    ref = reference_model(tiny_config(num_hidden_layers=3))
    path = save_checkpoint(ref, tmp_path / "sharded", max_shard_size="60KB")
    shards = sorted(path.glob("*.safetensors"))
    assert len(shards) > 2 and (path / "model.safetensors.index.json").is_file()
    model = dl.load_model(path)
    with torch.no_grad():
        assert relative_error(model(TOKENS), ref(TOKENS).logits) <= 1e-5


def test_bf16_checkpoint_loaded_in_float32(tmp_path):
    ref = reference_model(tiny_config())
    path = save_checkpoint(ref, tmp_path / "bf16", dtype=torch.bfloat16)
    model = dl.load_model(path, dtype=torch.float32)
    assert model.W_Q.dtype == torch.float32
    ref_bf16_weights = reference_model(tiny_config())
    with torch.no_grad():
        for param in ref_bf16_weights.parameters():  # round the weights only (not inv_freq)
            param.copy_(param.to(torch.bfloat16).to(torch.float32))
    with torch.no_grad():
        assert relative_error(model(TOKENS), ref_bf16_weights(TOKENS).logits) <= 1e-5


@pytest.mark.parametrize("prepend_bos", [True, False])
def test_tokenizer_keeps_checkpoint_bos_behaviour(checkpoint_factory, prepend_bos):
    path, _ = checkpoint_factory(prepend_bos=prepend_bos)
    model = dl.load_model(path)
    tokens = model.to_tokens("the city of paris")
    assert model.cfg.default_prepend_bos is prepend_bos
    assert (tokens[0, 0].item() == 1) is prepend_bos
    assert tokens.shape[1] == 4 + int(prepend_bos)


def test_n_ctx_is_free_and_allocates_nothing(checkpoint_factory):
    path, _ = checkpoint_factory(attention_type="nope")
    small = dl.load_model(path)
    huge = dl.load_model(path, n_ctx=1_000_000)
    assert small.cfg.n_ctx == 128 and huge.cfg.n_ctx == 1_000_000
    buffer_bytes = lambda m: sum(b.numel() * b.element_size() for b in m.buffers())
    assert buffer_bytes(huge) == buffer_bytes(small) < 1_000
    torch.testing.assert_close(huge(TOKENS), small(TOKENS), rtol=0, atol=0)


def test_hub_id_goes_through_the_download_cache(checkpoint_factory, monkeypatch):
    """A hub id is resolved with huggingface_hub.snapshot_download (patched: no network in tests)."""
    path, ref = checkpoint_factory(attention_type="k_norm_nope")
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision))
        return str(path)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = dl.load_model("SakanaAI/Tiny-DroPE", revision="abc123")
    assert calls == [("SakanaAI/Tiny-DroPE", "abc123")]
    assert model.lens.source == "SakanaAI/Tiny-DroPE" and model.lens.revision == "abc123"
    with torch.no_grad():
        assert relative_error(model(TOKENS), ref(TOKENS).logits) <= 1e-5


def test_variant_override_and_to_drope_match_no_rotary_reference(checkpoint_factory):
    path, ref = checkpoint_factory()
    rope = dl.load_model(path)
    forced = dl.load_model(path, variant="drope")
    converted = dl.to_drope(rope)
    assert dl.is_drope(forced) and dl.is_drope(converted) and not dl.is_drope(rope)
    assert converted.lens.attention_type == "nope"
    # the reference: the same HF weights with rotary cos/sin = 1/0 (upstream's construction)
    ref.model.rotary_emb.inv_freq.zero_()
    try:
        with torch.no_grad():
            no_rotary = ref(TOKENS).logits
    finally:
        ref.model.rotary_emb.inv_freq.copy_(reference_model(tiny_config()).model.rotary_emb.inv_freq)
    assert relative_error(forced(TOKENS), no_rotary) <= 1e-5
    assert relative_error(converted(TOKENS), no_rotary) <= 1e-5
    with torch.no_grad():
        assert relative_error(rope(TOKENS), ref(TOKENS).logits) <= 1e-5  # original untouched


def test_to_drope_copies_weights_and_keeps_hook_names(checkpoint_factory):
    rope = dl.load_model(checkpoint_factory()[0])
    drope = dl.to_drope(rope)
    assert set(drope.hook_dict) == set(rope.hook_dict)
    assert drope.W_Q.data_ptr() != rope.W_Q.data_ptr()
    torch.testing.assert_close(drope.W_Q, rope.W_Q)
    with pytest.raises(ValueError, match="already a DroPE model"):
        dl.to_drope(drope)


def test_drope_checkpoint_forced_to_rope_applies_rotary(checkpoint_factory):
    path, _ = checkpoint_factory(attention_type="nope")
    drope = dl.load_model(path)
    forced = dl.load_model(path, variant="rope")
    assert forced.variant == "rope"
    assert not torch.allclose(forced(TOKENS), drope(TOKENS))


def _is_tl_bias(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lstrip("_").startswith("b_")


def test_parameters_are_frozen_unless_asked(checkpoint_factory):
    path, _ = checkpoint_factory()
    assert not any(p.requires_grad for p in dl.load_model(path).parameters())
    trainable = dl.load_model(path, requires_grad=True)
    named = dict(trainable.named_parameters())
    # checkpoint weights train; TransformerLens's zero biases (a Llama has none) stay frozen at zero
    assert all(p.requires_grad for n, p in named.items() if not _is_tl_bias(n))
    assert any(_is_tl_bias(n) for n in named) and not any(p.requires_grad for n, p in named.items() if _is_tl_bias(n))


def test_save_refuses_biases_a_checkpoint_cannot_hold(checkpoint_factory, tmp_path):
    model = dl.load_model(checkpoint_factory()[0])
    with torch.no_grad():
        model.blocks[0].attn.b_O.add_(0.5)
    with pytest.raises(ValueError, match="non-zero biases.*blocks.0.attn.b_O"):
        dl.save_model(model, tmp_path / "out")


def test_hook_points_present(checkpoint_factory):
    model = dl.load_model(checkpoint_factory(attention_type="qk_norm_nope")[0])
    for name in ("hook_q", "hook_k", "hook_v", "hook_q_normed", "hook_k_normed", "hook_rot_q", "hook_rot_k",
                 "hook_attn_scores", "hook_pattern", "hook_z"):
        assert f"blocks.0.attn.{name}" in model.hook_dict
    for name in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
                 "mlp.hook_pre", "mlp.hook_post"):
        assert f"blocks.1.{name}" in model.hook_dict


def test_weights_are_views_of_the_linear_layout(checkpoint_factory):
    """W_Q etc. are views of the checkpoint's [out, in] storage: projections copy no weights."""
    model = dl.load_model(checkpoint_factory(n_kv_heads=2)[0])
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    assert attn.W_Q.permute(0, 2, 1).reshape(-1, model.cfg.d_model).is_contiguous()
    assert attn._W_K.permute(0, 2, 1).reshape(-1, model.cfg.d_model).data_ptr() == attn._W_K.data_ptr()
    assert mlp.W_in.T.is_contiguous() and mlp.W_out.T.is_contiguous()


def test_use_attn_result_hook(checkpoint_factory):
    model = dl.load_model(checkpoint_factory(attention_type="nope")[0])
    plain = model(TOKENS)
    model.set_use_attn_result(True)
    logits, cache = model.run_with_cache(TOKENS, names_filter=lambda n: n.endswith("hook_result"))
    torch.testing.assert_close(logits, plain, rtol=0, atol=1e-5)
    assert cache["blocks.0.attn.hook_result"].shape == (1, TOKENS.shape[1], 4, 64)


def test_registry_and_load_pair(checkpoint_factory, tmp_path, monkeypatch):
    from drope_lens.model import registry

    assert registry.lookup("llama2-7b").drope == "SakanaAI/Llama-2-7b-hf-DroPE"
    assert registry.lookup("llama2-7b").rope == "meta-llama/Llama-2-7b-hf"
    assert "smollm-360m" in registry.pairs()
    rope_path, _ = checkpoint_factory()
    drope_path, _ = checkpoint_factory(attention_type="nope")
    user_file = tmp_path / "registry.json"
    user_file.write_text(json.dumps({"tiny": {"rope": str(rope_path), "drope": str(drope_path)}}))
    monkeypatch.setenv("DROPE_LENS_REGISTRY", str(user_file))
    rope, drope = dl.load_pair("tiny")
    assert (rope.variant, drope.variant) == ("rope", "drope")
    dl.register_pair("tiny2", rope=str(drope_path), drope=str(drope_path))
    assert registry.lookup("tiny2").rope == str(drope_path)
    with pytest.raises(KeyError, match="unknown pair 'nope-such'"):
        dl.load_pair("nope-such")


def test_cli_info(checkpoint_factory):
    path, ref = checkpoint_factory(attention_type="qk_norm_nope", softmax_scale=0.07, n_kv_heads=2, tie=True)
    out = subprocess.run([sys.executable, "-m", "drope_lens.cli", "info", str(path), "--json"],
                         capture_output=True, text=True, check=True).stdout
    info = json.loads(out)
    assert info["variant"] == "drope" and info["attention_type"] == "qk_norm_nope"
    assert info["softmax_scale"] == 0.07 and info["kv_heads"] == 2 and info["heads"] == 4
    assert info["layers"] == 2 and info["d_model"] == 64 and info["n_ctx"] == 128
    assert info["dtype"] == "float32" and info["quantization"] == "none"
    assert info["parameters"] == sum(p.numel() for p in ref.parameters())
    bad = subprocess.run([sys.executable, "-m", "drope_lens.cli", "info", "/no/such/dir"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no such checkpoint directory" in bad.stderr


def test_peak_host_memory_of_streaming_load(tmp_path, checkpoint_factory):
    """Peak RSS growth while loading a bf16 checkpoint stays under 1.3x its weight bytes.

    A tiny checkpoint is loaded first so that imports (tokenizers, transformers modules) are
    not counted: they are a fixed cost, independent of the checkpoint's size.
    """
    warmup, _ = checkpoint_factory()
    ref = reference_model(tiny_config(hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                                      num_attention_heads=8, num_key_value_heads=8, vocab_size=8192),
                          init_std=0.02)
    path = save_checkpoint(ref, tmp_path / "mem", dtype=torch.bfloat16, max_shard_size="20MB")
    weight_bytes = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    del ref
    script = textwrap.dedent(f"""
        import torch, drope_lens as dl
        def status_kb(field):
            for line in open('/proc/self/status'):
                if line.startswith(field):
                    return int(line.split()[1])
        dl.load_model({str(warmup)!r}, dtype=torch.bfloat16)
        with open('/proc/self/clear_refs', 'w') as handle:
            handle.write('5')  # reset the peak-RSS counter (VmHWM) to the current RSS
        base = status_kb('VmRSS')
        model = dl.load_model({str(path)!r}, dtype=torch.bfloat16)
        print((status_kb('VmHWM') - base) * 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    growth = int(out.split()[-1])
    assert weight_bytes > 50e6
    assert growth <= 1.3 * weight_bytes, (growth, weight_bytes)


def test_to_tokens_announces_truncation(checkpoint_factory):
    model = dl.load_model(checkpoint_factory()[0], n_ctx=8)
    text = "the city of paris is in france and rome is in italy"
    with pytest.warns(UserWarning, match="truncated to n_ctx=8"):
        assert model.to_tokens(text).shape[1] == 8
    assert model.to_tokens(text, truncate=False).shape[1] == 13


@pytest.mark.parametrize("kwargs", [{"n_kv_heads": 2, "tie": True},
                                    {"attention_type": "qk_norm_nope", "softmax_scale": 0.07}])
def test_save_model_round_trip(checkpoint_factory, tmp_path, kwargs):
    path, ref = checkpoint_factory(**kwargs)
    model = dl.load_model(path)
    saved = dl.save_model(model, tmp_path / "saved")
    again = dl.load_model(saved)
    assert again.lens.attention_type == model.lens.attention_type and again.lens.softmax_scale == model.lens.softmax_scale
    torch.testing.assert_close(again(TOKENS), model(TOKENS), rtol=0, atol=0)
    assert again.to_tokens("the city of paris").tolist() == model.to_tokens("the city of paris").tolist()


def test_saved_rope_and_to_drope_checkpoints_load_elsewhere(checkpoint_factory, tmp_path):
    from transformers import LlamaForCausalLM

    path, ref = checkpoint_factory()
    rope = dl.load_model(path)
    hf = LlamaForCausalLM.from_pretrained(dl.save_model(rope, tmp_path / "rope"))  # independent loader
    with torch.no_grad():
        assert relative_error(rope(TOKENS), hf(TOKENS).logits) <= 1e-5
    drope = dl.load_model(dl.save_model(dl.to_drope(rope), tmp_path / "drope"))
    assert dl.is_drope(drope) and json.loads((tmp_path / "drope" / "config.json").read_text())["model_type"] == "llama_drope"
    torch.testing.assert_close(drope(TOKENS), dl.to_drope(rope)(TOKENS), rtol=0, atol=0)


def test_prefetched_reads_keep_order_and_bytes(checkpoint_factory):
    from drope_lens.model.safetensors_stream import index_checkpoint, read_tensor, read_tensors_prefetched

    path, _ = checkpoint_factory()
    entries = sorted(index_checkpoint(path).values(), key=lambda e: e.start)
    for workers in (0, 3):
        got = list(read_tensors_prefetched(entries, workers=workers, lookahead=2))
        assert [e.name for e, _ in got] == [e.name for e in entries]
        assert all(torch.equal(t, read_tensor(e)) for e, t in got)
