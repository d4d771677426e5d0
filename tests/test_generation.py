"""KV-cache generation and left padding behave as the plain forward does, RoPE and DroPE."""

from __future__ import annotations

import pytest
import torch

import drope_lens as dl

VARIANTS = [pytest.param({}, id="rope"), pytest.param({"attention_type": "qk_norm_nope"}, id="drope-qk-norm"),
            pytest.param({"attention_type": "nope", "n_kv_heads": 2}, id="drope-gqa")]


@pytest.mark.parametrize("kwargs", VARIANTS)
def test_greedy_generation_with_and_without_kv_cache(checkpoint_factory, kwargs):
    path, _ = checkpoint_factory(**kwargs)
    model = dl.load_model(path)
    prompt = torch.tensor([[1, 5, 9, 17, 33, 40, 61, 70]])
    with_cache = model.generate(prompt, max_new_tokens=12, do_sample=False, use_past_kv_cache=True, verbose=False)
    without = model.generate(prompt, max_new_tokens=12, do_sample=False, use_past_kv_cache=False, verbose=False)
    assert with_cache.shape == (1, 20)
    assert torch.equal(with_cache, without)


@pytest.mark.parametrize("kwargs", VARIANTS)
def test_left_padded_batch_matches_rows_alone(checkpoint_factory, kwargs):
    path, _ = checkpoint_factory(**kwargs)
    model = dl.load_model(path)
    rows = [[1, 5, 9, 17, 33, 40, 61, 70, 12], [1, 44, 45, 46], [1, 7, 8, 20, 21, 22, 23]]
    length = max(map(len, rows))
    pad = model.tokenizer.pad_token_id
    tokens = torch.tensor([[pad] * (length - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    for backend in ("sdpa", "explicit"):
        model.set_attention_backend(backend)
        batch = model(tokens, attention_mask=mask)
        for i, row in enumerate(rows):
            alone = model(torch.tensor([row]))
            torch.testing.assert_close(batch[i, length - len(row):], alone[0], rtol=0, atol=1e-5)


def test_left_padded_strings_through_the_tokenizer(checkpoint_factory):
    path, _ = checkpoint_factory(attention_type="nope")
    model = dl.load_model(path)
    texts = ["the city of paris is in france", "yes"]
    batch = model(texts, padding_side="left")
    assert torch.isfinite(batch).all()
    alone = model(texts[1])
    torch.testing.assert_close(batch[1, -alone.shape[1]:], alone[0], rtol=0, atol=1e-5)
