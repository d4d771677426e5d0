"""Hook points that nobody hooks are skipped (drope_lens.model.hooks_state.through); every kind of
hook torch and TransformerLens offer must still see and change exactly what it did."""

from __future__ import annotations

import pytest
import torch
from torch.nn.modules.module import register_module_forward_hook
from transformer_lens.hook_points import HookPoint

import drope_lens as dl

TOKENS = torch.tensor([[1, 5, 9, 17, 33, 40, 61, 70, 12, 3], [1, 8, 8, 2, 44, 45, 46, 7, 19, 21]])


@pytest.fixture(scope="module", params=[(None, 4), ("nope", 4), (None, 2)], ids=["rope", "drope", "rope_gqa"])
def model(request, checkpoint_factory):
    attention_type, n_kv = request.param
    return dl.load_model(checkpoint_factory(attention_type=attention_type, n_kv_heads=n_kv)[0])


def test_plain_forward_hooks_see_what_run_with_cache_stores(model):
    _, cache = model.run_with_cache(TOKENS)
    seen: dict[str, list[torch.Tensor]] = {}
    handles = [
        point.register_forward_hook(lambda mod, inp, out, name=name: seen.setdefault(name, []).append(out.clone()))
        for name, point in model.hook_dict.items()
    ]
    try:
        with torch.no_grad():
            model(TOKENS)
    finally:
        for handle in handles:
            handle.remove()
    assert set(seen) == set(cache.keys())
    for name, values in seen.items():
        assert all(torch.equal(value, cache[name]) for value in values), name


def test_a_global_module_hook_sees_every_hook_point(model):
    # Hooks that switch paths (scores/pattern materialised, eager norms) are left out; a global
    # hook switches none: it must see every other hook point, once, with the values that hooks on
    # those hook points themselves see.
    path_switching = ("hook_attn_scores", "hook_pattern", "ln1.", "ln2.", "ln_final.")
    points = {name: point for name, point in model.hook_dict.items() if not any(p in name for p in path_switching)}
    names = {point: name for name, point in points.items()}
    local: dict[str, list[torch.Tensor]] = {}
    handles = [
        point.register_forward_hook(lambda mod, inp, out, name=name: local.setdefault(name, []).append(out.clone()))
        for name, point in points.items()
    ]
    try:
        with torch.no_grad():
            want = model(TOKENS)
    finally:
        for handle in handles:
            handle.remove()
    seen: dict[str, list[torch.Tensor]] = {}

    def record(module, inputs, output):
        if module in names:
            seen.setdefault(names[module], []).append(output.clone())

    handle = register_module_forward_hook(record)
    try:
        with torch.no_grad():
            logits = model(TOKENS)
    finally:
        handle.remove()
    assert set(seen) == set(local) and len(seen) > 10 * model.cfg.n_layers // 2
    for name, values in seen.items():
        assert len(values) == len(local[name]) == 1, name
        assert torch.equal(values[0], local[name][0]), name
    with torch.no_grad():
        assert torch.equal(logits, want) and torch.equal(logits, model(TOKENS))


def test_pre_hooks_and_hook_contexts_change_the_forward(model):
    name = "blocks.1.attn.hook_z"

    def double(z, hook):
        return 2 * z

    with torch.no_grad():
        plain = model(TOKENS)
        want = model.run_with_hooks(TOKENS, fwd_hooks=[(name, double)])
        handle = model.hook_dict[name].register_forward_pre_hook(lambda mod, inp: (2 * inp[0],))
        try:
            got_pre = model(TOKENS)
        finally:
            handle.remove()
        with model.hooks(fwd_hooks=[(name, double)]):
            got_context = model(TOKENS)
        model.add_hook(name, double)
        try:
            got_added = model(TOKENS)
        finally:
            model.reset_hooks()
        again = model(TOKENS)
    assert not torch.equal(want, plain)
    assert torch.equal(got_pre, want) and torch.equal(got_context, want) and torch.equal(got_added, want)
    assert torch.equal(again, plain)


def test_backward_hooks_fire(checkpoint_factory):
    model = dl.load_model(checkpoint_factory()[0], requires_grad=True)
    grads = {}
    def keep(grad, hook):
        grads[hook.name] = grad.clone()

    model.add_hook("blocks.0.hook_resid_mid", keep, dir="bwd")
    try:
        model(TOKENS).sum().backward()
    finally:
        model.reset_hooks()
    assert grads["blocks.0.hook_resid_mid"].shape == (2, 10, model.cfg.d_model)
    assert grads["blocks.0.hook_resid_mid"].abs().sum() > 0
