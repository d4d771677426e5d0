"""drope_lens.measurement.generation: batched greedy decoding equals Hugging Face ``generate`` under hooks."""

from __future__ import annotations

import pytest
import torch

import drope_lens as dl
from drope_lens.measurement.generation import absolute_positions, greedy_generate, padded_forward

ROWS = [[1, 5, 9, 17, 33, 40, 61, 70, 12], [1, 44, 45, 46], [1, 7, 8, 20, 21, 22, 23], [1, 30, 31]]
VARIANTS = [pytest.param(None, id="rope"), pytest.param("qk_norm_nope", id="drope")]
NEW = 10


def _hf_generate(ref, rows, new, pad=2, eos=None):
    length = max(map(len, rows))
    tokens = torch.tensor([[pad] * (length - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        out = ref.generate(tokens, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=pad,
                           eos_token_id=eos)
    return [row[length:].tolist() for row in out], mask


def _bos_mlp_zero(model, layer):
    """Ours: zero blocks.{layer}.hook_mlp_out at absolute position 0 (each row's first token)."""

    def fn(x, hook):
        pos = absolute_positions(model, x.shape[1], x.device)
        return x.masked_fill((pos == 0)[..., None], 0.0)

    return [(f"blocks.{layer}.hook_mlp_out", fn)]


class _HFBosMlpZero:
    """HF forward hook on layers[l].mlp: zero the output at each row's first attended token in the
    prefill (the forward with more than one position); decode steps untouched."""

    def __init__(self, first_index):
        self.first_index = first_index

    def __call__(self, module, inputs, output):
        if output.shape[1] == 1:
            return output
        out = output.clone()
        out[torch.arange(out.shape[0]), self.first_index] = 0.0
        return out




@pytest.mark.parametrize("attention_type", VARIANTS)
def test_equals_hf_generate_left_padded(checkpoint_factory, attention_type):
    path, ref = checkpoint_factory(attention_type=attention_type)
    model = dl.load_model(path)
    ours = greedy_generate(model, ROWS, NEW, batch_size=4)
    theirs, _ = _hf_generate(ref, ROWS, NEW)
    assert ours.tokens == theirs
    assert ours.prompt_lengths == [len(r) for r in ROWS]
    # batch size 1 (no padding) and 2 (different groups) give the same tokens
    assert greedy_generate(model, ROWS, NEW, batch_size=1).tokens == theirs
    assert greedy_generate(model, ROWS, NEW, batch_size=2).tokens == theirs


@pytest.mark.parametrize("attention_type", VARIANTS)
def test_equals_hf_generate_under_hooks(checkpoint_factory, attention_type):
    """A dims hook (every position) and a BOS-only MLP ablation (absolute position 0 under left
    padding), expressed as HF forward hooks, give the same tokens."""
    path, ref = checkpoint_factory(attention_type=attention_type)
    model = dl.load_model(path)
    d_head = 16
    zero_cols = [0 * d_head + 3, 2 * d_head + 7]  # v dims (head 0, dim 3) and (head 2, dim 7) of layer 1

    def ours_v(x, hook):
        x = x.clone()
        x[:, :, 0, 3] = 0.0
        x[:, :, 2, 7] = 0.0
        return x

    def hf_v(module, inputs, output):
        output = output.clone()
        output[..., zero_cols] = 0.0
        return output

    hooks = _bos_mlp_zero(model, 0) + [("blocks.1.attn.hook_v", ours_v)]
    ours = greedy_generate(model, ROWS, NEW, fwd_hooks=hooks, batch_size=4)
    length = max(map(len, ROWS))
    first = torch.tensor([length - len(r) for r in ROWS])
    handles = [ref.model.layers[0].mlp.register_forward_hook(_HFBosMlpZero(first)),
               ref.model.layers[1].self_attn.v_proj.register_forward_hook(hf_v)]
    try:
        theirs, _ = _hf_generate(ref, ROWS, NEW)
    finally:
        for h in handles:
            h.remove()
    plain, _ = _hf_generate(ref, ROWS, NEW)
    assert ours.tokens == theirs
    assert theirs != plain  # the hooks change the generation


@pytest.mark.parametrize("attention_type", VARIANTS)
def test_position_zero_hook_acts_on_prompt_only(checkpoint_factory, attention_type):
    """Cache-free check: feeding each row's prompt + generated tokens through a plain forward with
    the same hook reproduces every greedy choice, i.e. the hook hit position 0 and nothing else."""
    path, _ = checkpoint_factory(attention_type=attention_type)
    model = dl.load_model(path)
    hooks = _bos_mlp_zero(model, 0)
    out = greedy_generate(model, ROWS, NEW, fwd_hooks=hooks, batch_size=4)
    plain = greedy_generate(model, ROWS, NEW, batch_size=4)
    assert out.tokens != plain.tokens
    for row, new in zip(ROWS, out.tokens):
        full = torch.tensor([row + new[:-1]])
        logits = model.run_with_hooks(full, fwd_hooks=hooks)
        assert logits[0, len(row) - 1:].argmax(-1).tolist() == new


def test_stop_tokens_and_score_ids(checkpoint_factory):
    path, ref = checkpoint_factory()
    model = dl.load_model(path)
    plain = greedy_generate(model, ROWS, NEW, batch_size=4)
    stop = plain.tokens[1][3]  # a token row 1 produces at step 3
    ours = greedy_generate(model, ROWS, NEW, stop_token_ids=[stop], batch_size=4, score_ids=[5, 9])
    for before, after in zip(plain.tokens, ours.tokens):
        cut = before.index(stop) + 1 if stop in before else len(before)
        assert after == before[:cut]
    theirs, _ = _hf_generate(ref, ROWS, NEW, eos=stop)
    for after, hf in zip(ours.tokens, theirs):
        assert after == [t for t in hf][: len(after)]
    logits, mask = padded_forward(model, ROWS)
    torch.testing.assert_close(ours.logits, logits[:, -1, [5, 9]].float().cpu(), rtol=0, atol=1e-5)  # scores come back on the CPU
    assert ours.texts[0] == model.tokenizer.decode(ours.tokens[0], skip_special_tokens=True)


def test_strings_and_bad_arguments(checkpoint_factory):
    path, _ = checkpoint_factory(attention_type="nope")
    model = dl.load_model(path)
    out = greedy_generate(model, ["the city of paris is in", "yes"], 3)
    assert out.prompt_lengths == [7, 2] and all(len(t) == 3 for t in out.tokens)
    with pytest.raises(ValueError, match="max_new_tokens=-1"):
        greedy_generate(model, ["yes"], -1)
    with pytest.raises(ValueError, match="batch_size=0"):
        greedy_generate(model, ["yes"], 2, batch_size=0)
    with pytest.raises(ValueError, match="bos='sometimes'"):
        greedy_generate(model, ["yes"], 2, bos="sometimes")


def test_generation_first_then_autograd(checkpoint_factory):
    """Rotary tables first built inside greedy_generate (inference mode) serve a later forward that
    autograd records (regression: they were inference tensors, and training then failed)."""
    from drope_lens.model.attention import RotaryTable

    path, _ = checkpoint_factory()
    model = dl.load_model(path)
    RotaryTable._tables.clear()
    greedy_generate(model, ROWS[:1], 2)
    for param in model.parameters():
        param.requires_grad_(True)
    model(torch.tensor(ROWS[:1])).sum().backward()
    assert model.blocks[0].attn.W_Q.grad is not None


@pytest.mark.parametrize("attention_type", VARIANTS)
def test_shared_prefix_scores_equal_whole_prompts(checkpoint_factory, attention_type):
    """score_shared_prefix (prefix once, members' own tokens on shared keys/values) gives the logits
    of scoring each prompt whole, also under a position-0 ablation and a scaling hook."""
    from drope_lens.measurement.generation import score_shared_prefix

    path, _ = checkpoint_factory(attention_type=attention_type)
    model = dl.load_model(path)
    groups = [[[1, 5, 9, 17, 33, 40, 61, 70, 12, 8], [1, 5, 9, 17, 33, 40, 61, 70, 13], [1, 5, 9, 17, 33, 40, 61, 22, 23, 24]],
              [[1, 44, 45, 46, 47, 3], [1, 44, 45, 46, 47, 4, 5], [1, 44, 45, 46, 47, 6]],
              [[1, 7, 8, 20, 21, 22, 23, 9], [1, 7, 8, 20, 21, 22, 23, 10], [1, 7, 8, 20, 21, 22, 23, 11]],
              [[1, 30], [1, 31], [1, 30, 31]]]
    score_ids = [5, 9, 30]
    hooks = _bos_mlp_zero(model, 1) + [("blocks.0.attn.hook_rot_q", lambda q, hook: q * 1.5)]
    for fwd_hooks in ([], hooks):
        got = score_shared_prefix(model, groups, score_ids, fwd_hooks=fwd_hooks, batch_size=6)
        flat = [p for g in groups for p in g]
        whole = greedy_generate(model, flat, 0, fwd_hooks=fwd_hooks, score_ids=score_ids, batch_size=1).logits
        torch.testing.assert_close(got.reshape(-1, len(score_ids)), whole, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="group sizes"):
        score_shared_prefix(model, [[[1, 2]], [[1, 2], [1, 3]]], score_ids)
