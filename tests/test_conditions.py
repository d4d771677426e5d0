"""hooks.conditions: each condition changes exactly what its name says; spike layer from the BOS ratio."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import drope_lens as dl
from drope_lens.measurement.analysis import bos_norm_ratios, prepare_conditions, spike_layer
from drope_lens.measurement.generation import greedy_generate, padded_forward
from drope_lens.hooks.conditions import CONDITIONS, batched_conditions, build_condition, check_conditions

TOKENS = torch.tensor([[1, 5, 9, 17, 33, 40, 61, 70, 12, 3]])
ROWS = [[1, 5, 9, 17, 33, 40, 61, 70], [1, 44, 45, 46], [1, 7, 8, 20, 21, 22]]


def _recorded(condition):
    """The condition's hooks wrapped to record (hook name, input, output) of every call."""
    seen = []

    def wrap(fn):
        def inner(x, hook):
            out = fn(x, hook)
            seen.append((hook.name, x.detach().clone(), (x if out is None else out).detach().clone()))
            return out
        return inner

    return [(name, wrap(fn)) for name, fn in condition.hooks], seen


@pytest.fixture(scope="module")
def model(checkpoint_factory):
    return dl.load_model(checkpoint_factory(attention_type="qk_norm_nope")[0])


def test_layer1_conditions(model):
    for name, targets, bos_only in (("l1_mlp", {"blocks.1.hook_mlp_out"}, False),
                                    ("l1_attn", {"blocks.1.hook_attn_out"}, False),
                                    ("l1_both", {"blocks.1.hook_mlp_out", "blocks.1.hook_attn_out"}, False),
                                    ("l1_both_bos", {"blocks.1.hook_mlp_out", "blocks.1.hook_attn_out"}, True)):
        hooks, seen = _recorded(build_condition(model, name))
        model.run_with_hooks(TOKENS, fwd_hooks=hooks)
        assert {s[0] for s in seen} == targets, name
        for _, x, out in seen:
            if bos_only:
                assert torch.all(out[:, 0] == 0) and torch.equal(out[:, 1:], x[:, 1:]), name
                assert x[:, 0].abs().max() > 0
            else:
                assert torch.all(out == 0) and x.abs().max() > 0, name


def test_bos_conditions_use_the_spike_layer(model):
    for name, expected in (("bos_mlp", {"blocks.1.hook_mlp_out"}), ("bos_v_spike", {"blocks.1.attn.hook_v"}),
                           ("bos_v_all", {"blocks.0.attn.hook_v", "blocks.1.attn.hook_v"})):
        condition = build_condition(model, name, spike_layer=1)
        hooks, seen = _recorded(condition)
        model.run_with_hooks(TOKENS, fwd_hooks=hooks)
        assert {s[0] for s in seen} == expected
        for _, x, out in seen:
            assert torch.all(out[:, 0] == 0) and torch.equal(out[:, 1:], x[:, 1:])
    assert build_condition(model, "bos_mlp", spike_layer=1).info["layer"] == 1


@pytest.mark.parametrize("rotary", ["pre", "post"])
def test_topk_mean_replaces_the_top_dim_by_its_mean(model, rotary):
    hooks, seen = _recorded(build_condition(model, "topk_mean_q_k", rotary=rotary))
    model.run_with_hooks(TOKENS, fwd_hooks=hooks)
    suffix = ("hook_rot_q", "hook_rot_k") if rotary == "post" else ("hook_q", "hook_k")
    assert len(seen) == 4 and all(s[0].endswith(suffix) for s in seen)
    for _, x, out in seen:
        x, out = x[0], out[0]  # [pos, head, d_head]
        for head in range(x.shape[1]):
            top = int((x[:, head].double() ** 2).sum(0).argmax())
            torch.testing.assert_close(out[:, head, top], x[:, head, top].mean().expand(x.shape[0]))
            keep = torch.ones(x.shape[2], dtype=torch.bool)
            keep[top] = False
            assert torch.equal(out[:, head, keep], x[:, head, keep])


def test_massive_zero_zeros_the_mask(model):
    mask_q = {0: torch.zeros(4, 16, dtype=torch.bool), 1: torch.zeros(4, 16, dtype=torch.bool)}
    mask_q[1][2, 5] = True
    mask_k = {0: torch.zeros(4, 16, dtype=torch.bool), 1: torch.zeros(4, 16, dtype=torch.bool)}
    mask_k[0][0, 0] = mask_k[0][3, 9] = True
    condition = build_condition(model, "massive_zero", massive_masks={"q": mask_q, "k": mask_k})
    assert condition.info["n_zeroed_q"] == 1 and condition.info["n_zeroed_k"] == 2
    hooks, seen = _recorded(condition)
    model.run_with_hooks(TOKENS, fwd_hooks=hooks)
    for name, x, out in seen:
        layer, tensor = int(name.split(".")[1]), name[-1]
        mask = (mask_q if tensor == "q" else mask_k)[layer]
        assert torch.all(out[:, :, mask] == 0) and torch.equal(out[:, :, ~mask], x[:, :, ~mask])


def test_left_padding_targets_each_rows_first_token(model):
    hooks, seen = _recorded(build_condition(model, "l1_both_bos"))
    _, mask = padded_forward(model, ROWS, fwd_hooks=hooks)
    first = (mask == 0).sum(1)
    for _, x, out in seen:
        for row in range(len(ROWS)):
            f = int(first[row])
            assert torch.all(out[row, f] == 0)
            keep = torch.ones(x.shape[1], dtype=torch.bool)
            keep[f] = False
            assert torch.equal(out[row, keep], x[row, keep])


@pytest.mark.parametrize("rotary", ["pre", "post"])
def test_prompt_conditions_equal_a_cache_free_run(checkpoint_factory, rotary):
    """Under left padding and the KV cache, topk_mean_q_k and l1_both_bos act on prompt positions
    only: a plain forward over prompt + generated tokens (no cache, no padding) with the condition
    restricted to the prompt reproduces every greedy choice."""
    # RoPE (post-rotary keys are recomputed per step), 3 layers (a layer-1 BOS ablation reaches later tokens)
    model = dl.load_model(checkpoint_factory(num_hidden_layers=3)[0])
    for name in ("topk_mean_q_k", "l1_both_bos"):
        condition = build_condition(model, name, rotary=rotary)
        out = greedy_generate(model, ROWS, 6, fwd_hooks=condition.hooks, batch_size=3)
        assert out.tokens != greedy_generate(model, ROWS, 6, batch_size=3).tokens, name
        for row, new in zip(ROWS, out.tokens):
            prompt_only = _prompt_restricted(condition.hooks, len(row))
            logits = model.run_with_hooks(torch.tensor([row + new[:-1]]), fwd_hooks=prompt_only)
            assert logits[0, len(row) - 1:].argmax(-1).tolist() == new, name


def _prompt_restricted(hooks, n_prompt):
    """The same hooks applied to the first ``n_prompt`` positions of a plain forward only."""
    def wrap(fn):
        def inner(x, hook):
            out = x.clone()
            out[:, :n_prompt] = fn(x[:, :n_prompt].clone(), hook)
            return out
        return inner
    return [(name, wrap(fn)) for name, fn in hooks]


def test_batched_conditions_equal_each_alone(model):
    names = ("baseline", "l1_both_bos", "topk_mean_q_k")
    conditions = [build_condition(model, n).hooks for n in names]
    rows = ROWS * 3
    groups = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    batched, _ = padded_forward(model, rows, fwd_hooks=batched_conditions(conditions, groups))
    for hooks, group in zip(conditions, groups):
        alone, _ = padded_forward(model, ROWS, fwd_hooks=hooks)
        torch.testing.assert_close(batched[group], alone, rtol=0, atol=2e-5)
    gen = greedy_generate(model, rows, 5, batch_size=9,
                          batch_hooks=lambda idx: batched_conditions(
                              conditions, [[i for i, j in enumerate(idx) if j in g] for g in groups]))
    for hooks, group in zip(conditions, groups):
        assert [gen.tokens[i] for i in group] == greedy_generate(model, ROWS, 5, fwd_hooks=hooks).tokens


def test_spike_layer_from_bos_norm_ratio(checkpoint_factory):
    path, ref = checkpoint_factory(num_hidden_layers=3)
    model = dl.load_model(path)
    texts = ["the city of paris is in france . rome is in italy", "what is the secret passkey ? 1 2 3 4 5"]
    ratios = bos_norm_ratios(model, texts, max_tokens=32)
    expected = []
    for text in texts:
        ids = model.tokenizer(text)["input_ids"]
        with torch.no_grad():
            hidden = ref(torch.tensor([ids]), output_hidden_states=True).hidden_states
        per_layer = [float(h[0, 0].norm() / h[0, 1:].norm(dim=-1).mean()) for h in hidden[1:-1]]
        expected.append(per_layer)
    np.testing.assert_allclose(ratios[:2], np.mean(expected, axis=0), rtol=1e-4)
    assert spike_layer([0.5, 1.9, 2.5, 7.0]) == 3  # argmax, the study's rule (tests/test_analysis.py)
    assert spike_layer([0.5, 1.9, 2.5, 7.0], "first_above") == 2
    assert spike_layer([0.5, 1.9, 1.2], "first_above") is None  # no spike: never another layer
    prepared = prepare_conditions(model, ["bos_mlp", "l1_mlp"], texts, max_tokens=32)
    layer = int(np.argmax(np.mean(expected, axis=0)))
    assert prepared.spike_layer == layer and prepared.spike_rule == "argmax"
    assert prepared.conditions["bos_mlp"].hooks[0][0] == f"blocks.{layer}.hook_mlp_out"
    assert prepared.info("bos_mlp")["layer"] == layer and prepared.massive_masks is None


def test_bad_condition_names(model):
    with pytest.raises(ValueError, match="condition 'bos_everything' is unknown"):
        check_conditions(["baseline", "bos_everything"])
    with pytest.raises(ValueError, match="needs spike_layer"):
        build_condition(model, "bos_mlp")
    with pytest.raises(ValueError, match="spike_layer=7"):
        build_condition(model, "bos_v_spike", spike_layer=7)
    with pytest.raises(ValueError, match="massive_masks"):
        build_condition(model, "massive_zero")
    assert len(CONDITIONS) == 10
