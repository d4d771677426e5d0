"""The DroPE recipe on a CPU-sized toy: pretraining lowers the loss, to_drope + recalibration
changes weights but keeps shapes and hook names, both checkpoints load back."""

from __future__ import annotations

import json
import time

import torch

import drope_lens as dl
from drope_lens.toy.corpus import CorpusConfig
from drope_lens.toy.train import ToyModelConfig, TrainConfig, train_toy_pair


def test_mini_training_run(tmp_path):
    started = time.perf_counter()
    run = train_toy_pair(
        tmp_path,
        CorpusConfig(n_train=400, n_heldout=40, filler_repeats=(1, 3)),
        ToyModelConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_mlp=128, context=64, vocab_size=320),
        TrainConfig(pretrain_steps=40, batch_size=8, lr=5e-3, warmup=5, device="cpu"),
    )
    assert time.perf_counter() - started < 60
    losses = run.report["pretrain_losses"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0  # pretraining lowers the loss
    assert run.report["recalibrate_tokens"] == 6 * 8 * 64  # 15% of 40 steps, rounded
    rope, drope = dl.load_model(run.rope), dl.load_model(run.drope)
    assert rope.variant == "rope" and drope.variant == "drope" and drope.lens.attention_type == "nope"
    assert set(rope.hook_dict) == set(drope.hook_dict)
    rope_params, drope_params = dict(rope.named_parameters()), dict(drope.named_parameters())
    assert {k: v.shape for k, v in rope_params.items()} == {k: v.shape for k, v in drope_params.items()}
    assert not torch.equal(rope_params["blocks.0.attn.W_Q"], drope_params["blocks.0.attn.W_Q"])
    saved = json.loads((tmp_path / "training.json").read_text())
    assert saved["heldout_loss"]["rope"] < 6.0 and saved["pretrain_tokens"] == 40 * 8 * 64


def test_quality_probe_runs_on_a_trained_pair(tmp_path):
    from drope_lens.toy.corpus import evaluation_sets
    from drope_lens.toy.probe import passkey_accuracy, yes_no_accuracy

    corpus = CorpusConfig(n_train=200, n_heldout=20, filler_repeats=(1, 2))
    run = train_toy_pair(tmp_path, corpus,
                         ToyModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, d_mlp=64, context=32, vocab_size=300),
                         TrainConfig(pretrain_steps=5, batch_size=4, warmup=1, device="cpu"))
    model = dl.load_model(run.drope)
    sets = evaluation_sets(corpus, n_sentiment=4, n_passkey=2, passkey_repeats=1)
    assert 0.0 <= yes_no_accuracy(model, sets["cities"][:6], "Yes", "No") <= 1.0
    assert 0.0 <= yes_no_accuracy(model, sets["sentiment"], "Positive", "Negative") <= 1.0
    assert passkey_accuracy(model, sets["passkey"], new_tokens=3) in (0.0, 0.5, 1.0)
