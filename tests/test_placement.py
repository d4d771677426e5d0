"""load_model(..., n_devices=N): layers split over N GPUs (placement.py).

On CPU: the placement plan against TransformerLens's own block-to-device rule (the rule its
forward follows), argument errors, and n_devices=1 unchanged. With two or more GPUs
(``@pytest.mark.gpu``): logits, hooks and both experiments of a split model against the
single-GPU model and the Hugging Face reference.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from transformer_lens.utilities.multi_gpu import get_device_for_block_index

import drope_lens as dl
from builders import TEST_DEVICE, relative_error, tensors_equal
from drope_lens.model.placement import Placement, plan_placement

TOKENS = torch.randint(3, 90, (3, 40), generator=torch.Generator().manual_seed(0))
TOKENS[:, 0] = 1


@pytest.mark.parametrize("n_layers,n_devices,base", [(32, 2, 0), (5, 2, 0), (62, 8, 0), (40, 3, 2), (4, 4, 1)])
def test_blocks_follow_transformer_lens_rule(n_layers, n_devices, base):
    placement = Placement(torch.device("cuda", base), n_devices, n_layers)
    cfg = SimpleNamespace(device=f"cuda:{base}", n_devices=n_devices, n_layers=n_layers)
    expected = [get_device_for_block_index(i, cfg) for i in range(n_layers)]
    assert placement.layer_devices == expected
    assert {d.index for d in expected} == set(range(base, base + n_devices))  # every GPU gets layers
    assert placement.device_for("embed") == placement.device_for("hook_embed") == expected[0]
    assert placement.device_for("ln_final") == placement.device_for("unembed") == expected[-1]
    assert placement.device_for(f"blocks.{n_layers - 1}.attn.q_norm") == expected[-1]
    assert placement.device_for("blocks.0.mlp") == expected[0]


def test_split_arguments_are_checked(checkpoint_factory, monkeypatch):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=f"n_devices={bad!r}"):
            plan_placement("cpu", bad, 4)
    with pytest.raises(ValueError, match="n_devices=2 splits layers over CUDA GPUs; device='cpu'"):
        plan_placement("cpu", 2, 4)
    with pytest.raises(ValueError, match="only 4 layers"):
        plan_placement("cuda:0", 5, 4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"needs GPUs 1..2, but 2 are visible"):
        plan_placement("cuda:1", 2, 4)
    path, _ = checkpoint_factory()
    with pytest.raises(ValueError, match="device='cpu' is not CUDA"):
        dl.load_model(path, device="cpu", n_devices=2)


def test_replicas_under_torchrun_take_consecutive_gpu_groups(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    placement = plan_placement("cuda", 2, 8)  # rank 1's replica: GPUs 2 and 3
    assert [d.index for d in placement.layer_devices] == [2, 2, 2, 2, 3, 3, 3, 3]
    assert plan_placement("cuda", 1, 8).base == torch.device("cuda", 1)
    assert plan_placement("cuda:0", 1, 8).base == torch.device("cuda", 0)  # an explicit index is kept


def test_one_device_is_the_unsplit_model(checkpoint_factory):
    path, ref = checkpoint_factory(attention_type="qk_norm_nope", n_kv_heads=2)
    plain, one = dl.load_model(path), dl.load_model(path, n_devices=1)
    assert one.cfg.n_devices == 1 and one.cfg.device == plain.cfg.device == TEST_DEVICE
    with torch.no_grad():
        logits = one(TOKENS)
        assert tensors_equal(logits, plain(TOKENS))
        assert relative_error(logits, ref(TOKENS).logits) <= 1e-5


# ------------------------------------------------------------------------------------------
# Two or more GPUs
# ------------------------------------------------------------------------------------------
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")


@pytest.mark.gpu
@two_gpus
@pytest.mark.parametrize("kwargs", [{}, {"attention_type": "qk_norm_nope", "n_kv_heads": 2}, {"tie": True}])
def test_split_model_computes_what_one_gpu_computes(checkpoint_factory, kwargs):
    path, ref = checkpoint_factory(num_hidden_layers=4, **kwargs)
    single = dl.load_model(path, device="cuda:0")
    split = dl.load_model(path, device="cuda:0", n_devices=2)
    devices = {name: p.device for name, p in split.named_parameters()}
    assert devices["embed.W_E"] == devices["blocks.1.attn.W_Q"] == torch.device("cuda", 0)
    assert devices["blocks.2.attn.W_Q"] == devices["unembed.W_U"] == devices["ln_final.w"] == torch.device("cuda", 1)
    tokens = TOKENS.cuda()
    with torch.inference_mode():
        logits = split(tokens)
        assert logits.device == torch.device("cuda", 1)  # where the last block and the unembedding sit
        torch.testing.assert_close(logits.cpu(), single(tokens).cpu(), rtol=0, atol=0)
        hf = copy.deepcopy(ref).cuda()(tokens).logits
        assert relative_error(logits, hf.to(logits.device)) <= 1e-5
        _, cache = split.run_with_cache(tokens)
    assert cache["blocks.0.attn.hook_q"].device.index == 0 and cache["blocks.3.attn.hook_q"].device.index == 1


@pytest.mark.gpu
@two_gpus
@pytest.mark.parametrize("source", ["bundled:toy/rope", "bundled:toy/drope"])
def test_experiments_on_a_split_model_equal_one_gpu(source):
    """Hooks with per-layer tensors (captured norms, zeroing masks) on layers on two GPUs."""
    from drope_lens.experiments import disruption, massive_values
    from drope_lens.measurement.texts import toy_texts

    texts = toy_texts()[:6]
    settings = dict(max_tokens=64, show_progress=False)
    single = dl.load_model(source, device="cuda:0")
    split = dl.load_model(source, device="cuda:0", n_devices=2)
    assert massive_values.run(split, texts, **settings).equals(massive_values.run(single, texts, **settings))
    a = disruption.run(single, texts[:2], texts[2:], seeds=2, **settings)
    assert disruption.run(split, texts[:2], texts[2:], seeds=2, **settings).equals(a)
