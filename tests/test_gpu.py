"""CUDA-only checks (skipped without a GPU): fp32 equivalence on CUDA, fused kernels, nf4."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

import drope_lens as dl
from builders import plant_massive_qk, reference_model, relative_error, save_checkpoint, tiny_config

pytestmark = pytest.mark.gpu
TOKENS = torch.randint(3, 90, (4, 48), generator=torch.Generator().manual_seed(0))
TOKENS[:, 0] = 1


@pytest.mark.parametrize("kwargs", [{}, {"attention_type": "qk_norm_nope", "n_kv_heads": 2, "softmax_scale": 0.07}])
def test_fp32_equivalence_on_cuda(checkpoint_factory, kwargs):
    path, ref = checkpoint_factory(**kwargs)
    model = dl.load_model(path, device="cuda")
    ref = copy.deepcopy(ref).cuda()
    with torch.no_grad():
        assert relative_error(model(TOKENS.cuda()), ref(TOKENS.cuda()).logits) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_half_precision_on_overflowing_checkpoint(tmp_path, dtype):
    ref = reference_model(tiny_config(), attention_type="nope", init_std=0.05, seed=3)
    plant_massive_qk(ref)
    path = save_checkpoint(ref, tmp_path / "hot", attention_type="nope")
    tokens = TOKENS.cuda()
    exact = dl.load_model(path, device="cuda")(tokens)
    model = dl.load_model(path, dtype=dtype, device="cuda")
    fused = model(tokens).float()
    model.set_attention_backend("explicit")
    explicit = model(tokens).float()
    hf = copy.deepcopy(ref).to(device="cuda", dtype=dtype)
    hf.config._attn_implementation = "sdpa"
    with torch.no_grad():
        hf_error = relative_error(hf(tokens).logits.float(), exact)
    assert torch.isfinite(fused).all() and torch.isfinite(explicit).all()
    assert relative_error(fused, exact) <= hf_error


def _hf_nf4(directory, attention_type=None):
    """transformers + BitsAndBytesConfig (nf4, double quant, bf16 compute); DroPE built as upstream."""
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.bfloat16)
    model = LlamaForCausalLM.from_pretrained(directory, quantization_config=config, dtype=torch.bfloat16,
                                             attn_implementation="sdpa", device_map={"": 0}).eval()
    if attention_type is not None:
        from safetensors.torch import load_file

        weights = load_file(directory / "model.safetensors")
        model.model.rotary_emb.inv_freq.zero_()
        for i, layer in enumerate(model.model.layers):
            attn = layer.self_attn
            for kind in ("q", "k"):
                if kind in attention_type.split("_norm")[0]:
                    w = weights[f"model.layers.{i}.self_attn.{kind}_norm.weight"]
                    norm = torch.nn.RMSNorm(w.numel(), eps=model.config.rms_norm_eps).cuda().to(torch.bfloat16)
                    norm.weight.data.copy_(w)
                    getattr(attn, f"{kind}_proj").register_forward_hook(lambda m, i, o, n=norm: n(o))
    return model


@pytest.mark.parametrize("attention_type", [None, "qk_norm_nope"])
def test_nf4_matches_transformers_bitsandbytes(checkpoint_factory, tmp_path, attention_type):
    pytest.importorskip("bitsandbytes", reason="quantization='nf4' needs bitsandbytes, not installed here")
    path, _ = checkpoint_factory(attention_type=attention_type, dtype=torch.bfloat16)
    ours = dl.load_model(path, device="cuda", quantization="nf4")
    assert ours.quantization == "nf4" and ours.cfg.dtype == torch.bfloat16
    hf_dir = tmp_path / "as_llama"
    shutil.copytree(path, hf_dir)
    config = json.loads((hf_dir / "config.json").read_text())
    config.update(model_type="llama", architectures=["LlamaForCausalLM"])
    config.pop("auto_map", None)
    (hf_dir / "config.json").write_text(json.dumps(config))
    hf = _hf_nf4(hf_dir, attention_type)
    # the same quantised network: identical packed weights
    hf_q = hf.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(ours.blocks[0].attn.W_Q.data, hf_q.data)
    tokens = TOKENS.cuda()
    with torch.no_grad():
        assert relative_error(ours(tokens), hf(tokens).logits) <= 1e-2
    fired = set()
    hookable = [n for n in ours.hook_dict if not n.endswith(("hook_result", "_input", "hook_attn_in", "hook_mlp_in"))]
    ours.run_with_hooks(tokens, fwd_hooks=[(lambda n: n in hookable, lambda t, hook: fired.add(hook.name))])
    assert fired == set(hookable)
