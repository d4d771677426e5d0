"""The DroPE recipe on a CPU-sized toy: pretraining lowers the loss, to_drope + recalibration
changes weights but keeps shapes and hook names, both checkpoints load back."""

from __future__ import annotations

import json
import time

import torch

import drope_lens as dl
from drope_lens.toy.corpus import CorpusConfig, heldout_documents
from drope_lens.toy.train import RECIPES, Recipe, ToyModelConfig, TrainConfig, evaluate_loss, pack, train_toy_pair

MINI_CORPUS = CorpusConfig(n_train=400, n_heldout=40, filler_repeats=(1, 3), context=128)


def test_mini_training_run(tmp_path):
    started = time.perf_counter()
    run = train_toy_pair(
        tmp_path,
        MINI_CORPUS,
        ToyModelConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_mlp=128, context=64, vocab_size=320),
        TrainConfig(pretrain_steps=40, batch_size=8, lr=5e-3, warmup=5, device="cpu", save_dtype="float32"),
        recipes=[Recipe("base", fraction=0.2)],
    )
    assert time.perf_counter() - started < 60
    losses = run.report["pretrain_losses"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0  # pretraining lowers the loss
    # 8 recalibration steps (20% of 40) of 8 rows x 64 positions; padding is not counted
    assert 0.7 * 8 * 8 * 64 < run.report["recalibrate_tokens"] <= 8 * 8 * 64
    assert 0.12 < run.report["recalibrate_share"] < 0.28 and run.report["drope_recipe"] == "base"
    rope, drope = dl.load_model(run.rope), dl.load_model(run.drope)
    assert rope.variant == "rope" and drope.variant == "drope" and drope.lens.attention_type == "nope"
    assert set(rope.hook_dict) == set(drope.hook_dict)
    rope_params, drope_params = dict(rope.named_parameters()), dict(drope.named_parameters())
    assert {k: v.shape for k, v in rope_params.items()} == {k: v.shape for k, v in drope_params.items()}
    assert not torch.equal(rope_params["blocks.0.attn.W_Q"], drope_params["blocks.0.attn.W_Q"])
    # the saved checkpoints are the trained models: their held-out loss is the one measured in training
    heldout = pack(rope.tokenizer, [d.text for d in heldout_documents(MINI_CORPUS)], 64)
    for name, model in (("rope", rope), ("drope", drope)):
        assert abs(evaluate_loss(model, heldout, rope.tokenizer.eos_token_id) - run.report["heldout_loss"][name]) < 1e-4
    saved = json.loads((tmp_path / "training.json").read_text())
    assert saved["heldout_loss"]["rope"] < 6.0 and 0.8 * 40 * 8 * 64 < saved["pretrain_tokens"] <= 40 * 8 * 64
    rope_tokens, drope_tokens = (json.loads((d / "toy.json").read_text())["tokens"] for d in (run.rope, run.drope))
    assert drope_tokens == {**rope_tokens, "recalibrate_tokens": run.report["recalibrate_tokens"]}


def test_stages_resume_and_recipes_differ(tmp_path):
    """A second call with one more recipe reuses the corpus, RoPE and the first recalibration, and
    adds the new recipe: a QK-norm DroPE (its norms saved and loaded back) on longer rows."""
    model = ToyModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, d_mlp=64, context=64, vocab_size=400)
    training = TrainConfig(pretrain_steps=6, batch_size=4, warmup=1, device="cpu", save_dtype="float32")
    first = train_toy_pair(tmp_path, MINI_CORPUS, model, training, recipes=[Recipe("base", fraction=0.5)])
    stamp = (tmp_path / "rope" / "model.safetensors").stat().st_mtime_ns
    qk = Recipe("qk128", fraction=0.5, rows=128, documents=128, attention_type="qk_norm_nope")
    second = train_toy_pair(tmp_path, MINI_CORPUS, model, training, recipes=[Recipe("base", fraction=0.5), qk])
    assert (tmp_path / "rope" / "model.safetensors").stat().st_mtime_ns == stamp  # not retrained
    assert second.report["recipes"]["base"] == first.report["recipes"]["base"]
    entry = second.report["recipes"]["qk128"]
    assert entry["row_tokens"] == 128 and entry["batch_size"] == 2  # tokens per step kept
    drope = dl.load_model(tmp_path / "drope-qk128")
    assert drope.lens.attention_type == "qk_norm_nope" and drope.blocks[0].attn.q_norm is not None
    assert not torch.equal(drope.blocks[0].attn.q_norm.w, torch.ones_like(drope.blocks[0].attn.q_norm.w))
    assert set(RECIPES) >= {"base", "qknorm", "long512"}


def test_evaluation_runs_on_a_trained_pair_and_scores_in_the_study_way(tmp_path):
    from drope_lens.toy.evaluate import EvalConfig, evaluate_pair

    corpus = CorpusConfig(n_train=200, n_heldout=20, filler_repeats=(1, 2), context=128)
    run = train_toy_pair(tmp_path, corpus,
                         ToyModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, d_mlp=64, context=64, vocab_size=600),
                         TrainConfig(pretrain_steps=5, batch_size=4, warmup=1, device="cpu"))
    result = evaluate_pair(run.rope, run.drope, device="cpu",
                           config=EvalConfig(n_passkey=3, n_sentiment=4, passkey_new_tokens=4, context_multiples=(1, 2)))
    assert result["trained_context"] == 64
    for name in ("rope", "drope"):
        r = result[name]
        assert r["n"]["cities"] == 104 and r["heldout_ppl"] > 1.0
        for length, multiple in (("1x", 1), ("2x", 2)):
            assert r["passkey"][length]["prompt_tokens"] <= 64 * multiple or r["passkey"][length]["filler_repeats"] == 1
    assert result["heldout_ppl_ratio"] == result["drope"]["heldout_ppl"] / result["rope"]["heldout_ppl"]


def test_dilution_bias_is_the_haystack_repeated():
    """The dilution augmentation's premise, checked against attention computed by hand (float64,
    from the layer's own q, k, v) on the shipped DroPE model's first layer: ``+ ln m`` on a haystack key's score is that key
    (and its value) present ``m`` times. Fails if the bias lands on queries, the wrong rows or
    keys, or with the wrong sign."""
    import math

    from drope_lens.toy.train import dilution_bias, dilution_hooks

    drope = dl.load_model("bundled:toy/drope")
    assert drope.lens.attention_type == "nope"
    tokens = drope.to_tokens(["The grass is green. The secret passkey is 12345. Remember",
                              "Some sky is blue. The sun is yellow. Here we go again and"], truncate=False)
    tokens = tokens[:, :12]
    haystack = torch.zeros(tokens.shape, dtype=torch.bool)
    haystack[0, 2:6] = True
    haystack[1, 4:9] = True
    m = torch.tensor([3.0, 2.0])
    bias = [dilution_bias(m.log(), haystack)]
    _, cache = drope.run_with_cache(tokens, names_filter=[f"blocks.0.attn.hook_{x}" for x in "qkv"])
    z = {}
    hooks = dilution_hooks(bias) + [("blocks.0.attn.hook_z", lambda value, hook: z.setdefault("z", value.detach()))]
    with torch.no_grad():
        drope.run_with_hooks(tokens, fwd_hooks=hooks)
    attn = drope.blocks[0].attn
    q, k, v = (cache[f"blocks.0.attn.hook_{x}"].double() for x in "qkv")  # the bias acts after these
    scale = 1 / math.sqrt(attn.cfg.d_head)
    for row in range(2):
        copies = [int(m[row]) if haystack[row, j] else 1 for j in range(tokens.shape[1])]
        for i in range(tokens.shape[1]):
            keys = torch.cat([k[row, j : j + 1].expand(copies[j], -1, -1) for j in range(i + 1)])  # [n, head, e]
            values = torch.cat([v[row, j : j + 1].expand(copies[j], -1, -1) for j in range(i + 1)])
            pattern = torch.softmax(torch.einsum("he,nhe->hn", q[row, i], keys) * scale, dim=-1)
            expected = torch.einsum("hn,nhe->he", pattern, values)
            torch.testing.assert_close(z["z"][row, i].double(), expected, atol=2e-4, rtol=1e-3)
    plain = drope.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_z"])[1]["blocks.0.attn.hook_z"]
    assert (plain - z["z"]).abs().max() > 1e-2  # the bias changes the layer: the comparison above has teeth


def test_dilution_hook_moves_the_bias_to_the_scores_device():
    """A bias built on the CPU is added to scores on another device (a GPU, or each GPU of a split
    model); the meta device stands in for one here (adding a CPU tensor to it raises)."""
    from drope_lens.toy.train import dilution_bias, dilution_hooks

    bias = [dilution_bias(torch.tensor([0.5]), torch.tensor([[True, False, True]]))]
    [(_, hook)] = dilution_hooks(bias)
    scores = torch.zeros(1, 2, 3, 3, device="meta")
    out = hook(scores, None)
    assert out.device == scores.device and out.shape == scores.shape


def test_dilution_recipe_trains_on_masked_rows(tmp_path):
    """A dilution recipe recalibrates on a fresh stream packed with haystack masks (cached beside
    the corpus) and records its ln m bound; a mask/data shape mismatch is refused."""
    import pytest

    from drope_lens.toy.train import train

    model = ToyModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, d_mlp=64, context=128, vocab_size=400)
    training = TrainConfig(pretrain_steps=6, batch_size=4, warmup=1, device="cpu", save_dtype="float32")
    run = train_toy_pair(tmp_path, MINI_CORPUS, model, training, recipes=[Recipe("dil", fraction=0.5, dilution=2.0)])
    rows, mask = torch.load(tmp_path / "corpus" / "recal-masked.pt")
    assert rows.shape == mask.shape and rows.shape[1] == 128 and 0 < mask.sum() < (rows != -1).sum()
    entry = run.report["recipes"]["dil"]
    assert entry["recipe"]["dilution"] == 2.0 and entry["heldout_loss"] != entry["heldout_loss_before"]
    drope = dl.load_model(tmp_path / "drope-dil", requires_grad=True)
    with pytest.raises(ValueError, match="haystack mask of the data's shape"):
        train(drope, rows, 1, batch_size=2, lr=1e-3, warmup=1, weight_decay=0.0, seed=0, eos_token_id=2,
              haystack=mask[:, :64], dilution=1.0)
