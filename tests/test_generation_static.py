"""Static-shape decoding (and its CUDA graph) gives what the dynamic decode path gives.

``greedy_generate`` runs a batch's decode steps in static mode (whole-length KV cache, mask
buffer, slot index on the device; replayed as a CUDA graph on CUDA) only when nothing is
hooked. The references here: the dynamic path (forced by a hook that changes nothing),
Hugging Face ``generate`` (tokens), and on CUDA the same static steps run eagerly.
"""

from __future__ import annotations

import pytest
import torch

import drope_lens as dl
from drope_lens.measurement import generation
from drope_lens.measurement.generation import greedy_generate

ROWS = [[1, 5, 9, 17, 33, 40, 61, 70, 12], [1, 44, 45, 46], [1, 7, 8, 20, 21, 22, 23], [1, 30, 31]]
NEW = 9
VARIANTS = [pytest.param(None, id="rope"), pytest.param("qk_norm_nope", id="drope")]


class _Spy:
    """Counts static decode steps and CUDA graphs captured, wrapping the real class."""

    def __init__(self, monkeypatch):
        self.steps, self.graphs = 0, 0
        real = generation._StaticDecode
        spy = self

        class Counting(real):
            def __call__(self, tokens, end, steps_left):
                spy.steps += 1
                had = self.graph is not None
                out = super().__call__(tokens, end, steps_left)
                spy.graphs += int(self.graph is not None and not had)
                return out

        monkeypatch.setattr(generation, "_StaticDecode", Counting)


def _identity(x, hook):
    return x


def _static_equals_dynamic_and_changes_generation(model, hooks, monkeypatch):
    """Under ``hooks``, every batch decodes in static mode; its tokens and every step's logits equal
    the dynamic path's (forced by an unmarked hook that changes nothing), and they differ from the
    unhooked generation (the hooks do something)."""
    spy = _Spy(monkeypatch)
    vocab = list(range(model.cfg.d_vocab))
    static = greedy_generate(model, ROWS, NEW, batch_size=4, fwd_hooks=hooks, score_ids=vocab, score_steps=True)
    assert spy.steps == NEW - 1
    dynamic = greedy_generate(model, ROWS, NEW, batch_size=4, score_ids=vocab, score_steps=True,
                              fwd_hooks=hooks + [("blocks.0.hook_resid_pre", _identity)])
    assert spy.steps == NEW - 1, "a batch with an unmarked hook decoded in static mode"
    plain = greedy_generate(model, ROWS, NEW, batch_size=4, score_ids=vocab, score_steps=True)
    assert static.tokens == dynamic.tokens
    torch.testing.assert_close(static.step_logits, dynamic.step_logits, rtol=0, atol=1e-5)
    assert not torch.allclose(static.step_logits, plain.step_logits, atol=1e-3)


def _hf_tokens(ref, rows, new, pad=2):
    length = max(map(len, rows))
    tokens = torch.tensor([[pad] * (length - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        out = ref.generate(tokens, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=pad,
                           eos_token_id=None)
    return [row[length:].tolist() for row in out]


@pytest.mark.parametrize("attention_type", VARIANTS)
def test_static_decode_equals_dynamic_and_hf(checkpoint_factory, attention_type, monkeypatch):
    """Planted bugs this catches: a slot written one position off, the current slot not made
    visible, rotary positions of the query taken from the slot instead of the mask (left padding)."""
    path, ref = checkpoint_factory(attention_type=attention_type)
    model = dl.load_model(path)
    spy = _Spy(monkeypatch)
    vocab = list(range(model.cfg.d_vocab))
    static = greedy_generate(model, ROWS, NEW, batch_size=4, score_ids=vocab, score_steps=True)
    assert spy.steps == NEW - 1  # every decode step was static
    dynamic = greedy_generate(model, ROWS, NEW, batch_size=4, score_ids=vocab, score_steps=True,
                              fwd_hooks=[("blocks.0.hook_resid_pre", _identity)])
    assert spy.steps == NEW - 1  # the hooked run stayed dynamic
    assert static.tokens == dynamic.tokens == _hf_tokens(ref, ROWS, NEW)
    assert static.step_logits.shape == (len(ROWS), NEW, len(vocab))
    torch.testing.assert_close(static.step_logits, dynamic.step_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(static.step_logits[:, 0], static.logits, rtol=0, atol=0)


def test_a_hook_left_on_the_model_runs_at_every_step(checkpoint_factory, monkeypatch):
    """A hook added with ``add_hook`` (not passed to greedy_generate) still sees every decode
    step: the batch must not go static, where it would run once at graph capture."""
    path, _ = checkpoint_factory()
    model = dl.load_model(path)
    spy = _Spy(monkeypatch)
    seen = []
    model.add_hook("blocks.1.hook_mlp_out", lambda x, hook: seen.append(x.shape[1]))
    try:
        greedy_generate(model, ROWS, NEW, batch_size=4)
    finally:
        model.reset_hooks()
    assert spy.steps == 0
    assert seen == [max(map(len, ROWS))] + [1] * (NEW - 1)


def test_stop_tokens_under_static_decode(checkpoint_factory):
    """Rows stop at a stop token (padding after it) with static decoding as with the dynamic one."""
    path, _ = checkpoint_factory()
    model = dl.load_model(path)
    plain = greedy_generate(model, ROWS, NEW, batch_size=4)
    stop = plain.tokens[0][4]
    static = greedy_generate(model, ROWS, NEW, batch_size=4, stop_token_ids=[stop])
    dynamic = greedy_generate(model, ROWS, NEW, batch_size=4, stop_token_ids=[stop],
                              fwd_hooks=[("blocks.0.hook_resid_pre", _identity)])
    assert static.tokens == dynamic.tokens
    assert static.tokens[0] == plain.tokens[0][:5]


def test_score_steps_needs_score_ids(checkpoint_factory):
    path, _ = checkpoint_factory()
    model = dl.load_model(path)
    with pytest.raises(ValueError, match="score_steps=True needs score_ids"):
        greedy_generate(model, ROWS, 3, score_steps=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("attention_type", VARIANTS)
def test_cuda_graph_equals_eager_decoding(checkpoint_factory, attention_type, dtype, monkeypatch):
    """On CUDA the captured graph replays exactly the eager static steps: identical tokens and
    bit-identical logits at every step; in float32 the tokens also equal the dynamic path's."""
    path, _ = checkpoint_factory(attention_type=attention_type)
    model = dl.load_model(path, device="cuda", dtype=dtype)
    spy = _Spy(monkeypatch)
    vocab = list(range(model.cfg.d_vocab))
    rows = ROWS * 2
    graphed = greedy_generate(model, rows, NEW, batch_size=8, score_ids=vocab, score_steps=True)
    assert spy.graphs == 1 and spy.steps == NEW - 1
    eager = greedy_generate(model, rows, NEW, batch_size=8, score_ids=vocab, score_steps=True, cuda_graphs=False)
    assert spy.graphs == 1
    assert graphed.tokens == eager.tokens
    assert torch.equal(graphed.step_logits, eager.step_logits)
    assert torch.isfinite(graphed.step_logits).all()
    if dtype == "float32":
        dynamic = greedy_generate(model, rows, NEW, batch_size=8, score_ids=vocab, score_steps=True,
                                  fwd_hooks=[("blocks.0.hook_resid_pre", _identity)])
        assert graphed.tokens == dynamic.tokens
        torch.testing.assert_close(graphed.step_logits, dynamic.step_logits, rtol=0, atol=1e-4)


def test_prompt_slots_of_decode_steps(checkpoint_factory):
    """Prompt-only hooks learn on the host that a decode forward's new tokens hold no prompt
    token (None: ``replace_topk_with_mean`` then does nothing, as it did with an all-False mask),
    while the cached keys (``hook_rot_k``) still carry each row's prompt slots."""
    from hooks.interventions import prompt_slots

    path, _ = checkpoint_factory()
    model = dl.load_model(path)
    seen = {"q": [], "rot_k": []}

    def record(kind):
        def fn(x, hook):
            slots = prompt_slots(model, x.shape[1], hook.name, x.device)
            seen[kind].append(None if slots is None else slots.cpu())
        return fn

    hooks = [("blocks.0.attn.hook_q", record("q")), ("blocks.0.attn.hook_rot_k", record("rot_k"))]
    greedy_generate(model, ROWS, 4, fwd_hooks=hooks, batch_size=4)
    length = max(map(len, ROWS))
    ordered = sorted(ROWS, key=len, reverse=True)  # a batch holds its rows longest first
    expected = torch.tensor([[False] * (length - len(r)) + [True] * len(r) for r in ordered])
    assert torch.equal(seen["q"][0], expected)
    assert seen["q"][1:] == [None] * 3
    for step, keys in enumerate(seen["rot_k"]):
        assert torch.equal(keys[:, :length], expected) and not keys[:, length:].any()
        assert keys.shape[1] == length + step


def _exp3_hooks(model):
    """Exp 3's hooked conditions as task_rows batches them: topk_mean_q_k on rows 0-1,
    massive_zero (a few q/k dims in every layer) on row 2, row 3 baseline."""
    from hooks.conditions import batched_conditions, build_condition

    n_heads, d_head = model.cfg.n_heads, model.cfg.d_head
    n_kv = model.cfg.n_key_value_heads or n_heads
    masks = {"q": {}, "k": {}}
    for layer in range(model.cfg.n_layers):
        masks["q"][layer] = torch.zeros(n_heads, d_head, dtype=torch.bool)
        masks["q"][layer][0, layer % d_head] = True
        masks["k"][layer] = torch.zeros(n_kv, d_head, dtype=torch.bool)
        masks["k"][layer][n_kv - 1, 3] = True
    topk = build_condition(model, "topk_mean_q_k").hooks
    zero = build_condition(model, "massive_zero", massive_masks=masks).hooks
    return batched_conditions([topk, zero], [[0, 1], [2]])


@pytest.mark.parametrize("attention_type", VARIANTS)
def test_graph_safe_conditions_decode_static_like_dynamic(checkpoint_factory, attention_type, monkeypatch):
    """Exp 3's conditions are marked graph-safe, so their batches decode in static mode; the
    tokens and every step's logits equal the dynamic path's (forced by an unmarked hook), and the
    conditions do change the generation."""
    from drope_lens.measurement.generation import graph_safe_hooks

    path, _ = checkpoint_factory(attention_type=attention_type)
    model = dl.load_model(path)
    hooks = _exp3_hooks(model)
    assert graph_safe_hooks(hooks)
    assert not graph_safe_hooks(hooks + [("blocks.0.hook_resid_pre", _identity)])
    _static_equals_dynamic_and_changes_generation(model, hooks, monkeypatch)


def test_whole_cache_and_position_hooks_stay_dynamic(checkpoint_factory):
    """Graph-safe marks do not carry a post-rotary key hook (it would see the whole-length buffer)
    nor position hooks beyond position 0 (their positions are read on the host per step)."""
    from drope_lens.measurement.generation import graph_safe_hooks
    from hooks.conditions import build_condition
    from hooks.interventions import replace_topk_with_mean

    path, _ = checkpoint_factory()
    model = dl.load_model(path)
    post = replace_topk_with_mean(model.cfg.n_layers, 1, ("q", "k"), "post", model=model)
    assert not graph_safe_hooks(post)
    assert graph_safe_hooks([p for p in post if p[0].endswith("hook_rot_q")])
    assert not graph_safe_hooks(build_condition(model, "l1_both_bos").hooks[:1] + post[-1:])
    from hooks.interventions import ablate_positions

    assert not graph_safe_hooks(ablate_positions(["blocks.1.hook_mlp_out"], [3], model=model))


@pytest.mark.gpu
@pytest.mark.parametrize("which", ["exp3", "bos"])
@pytest.mark.parametrize("attention_type", VARIANTS)
def test_cuda_graph_under_exp3_conditions_equals_eager(checkpoint_factory, attention_type, which, monkeypatch):
    """With graph-safe hooks captured in the graph (Exp 3's conditions; position-0 and layer-1
    ablations): identical tokens and bit-identical logits to the same static steps run eagerly,
    and the tokens of the dynamic path (float32)."""
    from hooks.conditions import batched_conditions, build_condition

    path, _ = checkpoint_factory(attention_type=attention_type)
    model = dl.load_model(path, device="cuda")
    if which == "exp3":
        hooks = _exp3_hooks(model)
    else:
        hooks = batched_conditions([build_condition(model, "bos_v_all").hooks, build_condition(model, "l1_both").hooks],
                                   [[0, 2], [1]])
    spy = _Spy(monkeypatch)
    vocab = list(range(model.cfg.d_vocab))
    graphed = greedy_generate(model, ROWS, NEW, batch_size=4, fwd_hooks=hooks, score_ids=vocab, score_steps=True)
    assert spy.graphs == 1
    eager = greedy_generate(model, ROWS, NEW, batch_size=4, fwd_hooks=hooks, score_ids=vocab, score_steps=True,
                            cuda_graphs=False)
    dynamic = greedy_generate(model, ROWS, NEW, batch_size=4, fwd_hooks=hooks + [("blocks.0.hook_resid_pre", _identity)])
    assert graphed.tokens == eager.tokens == dynamic.tokens
    assert torch.equal(graphed.step_logits, eager.step_logits)


@pytest.mark.parametrize("name, kwargs", [("bos_mlp", {"spike_layer": 0}), ("bos_v_all", {}), ("l1_both", {})])
def test_position_zero_conditions_decode_static_like_dynamic(checkpoint_factory, name, kwargs, monkeypatch):
    """Position-0 conditions touch no decode step (a new token is never at position 0) and the
    layer-1 zeroing is a pure tensor op, so they are graph-safe: static decoding under them equals
    the dynamic path, and they do change the generation. A position hook aimed past position 0
    stays dynamic."""
    from drope_lens.measurement.generation import graph_safe_hooks
    from hooks.conditions import build_condition
    from hooks.interventions import ablate_positions

    path, _ = checkpoint_factory()
    model = dl.load_model(path)
    hooks = build_condition(model, name, **kwargs).hooks
    assert graph_safe_hooks(hooks) and graph_safe_hooks(build_condition(model, "l1_both_bos").hooks)
    assert not graph_safe_hooks(ablate_positions(["blocks.0.hook_mlp_out"], [0, 5], model=model))
    _static_equals_dynamic_and_changes_generation(model, hooks, monkeypatch)


def test_every_named_condition_is_graph_safe(checkpoint_factory):
    """The study's conditions all decode in static mode (and so with CUDA graphs)."""
    from drope_lens.measurement.generation import graph_safe_hooks
    from hooks.conditions import CONDITIONS, build_condition

    path, _ = checkpoint_factory()
    model = dl.load_model(path)
    masks = {t: {0: torch.zeros(model.cfg.n_key_value_heads or model.cfg.n_heads, model.cfg.d_head,
                                dtype=torch.bool)} for t in ("q", "k")}
    masks["q"][0] = torch.zeros(model.cfg.n_heads, model.cfg.d_head, dtype=torch.bool)
    for name in CONDITIONS:
        hooks = build_condition(model, name, spike_layer=0, massive_masks=masks).hooks
        assert graph_safe_hooks(hooks), name


def _in_place_key_edit(x, hook):
    x[..., 0] *= 0.5  # edits the tensor it is given
    return x


@pytest.mark.parametrize("hooked", [False, True], ids=["plain", "in-place-rot-k-hook"])
def test_rotated_key_cache_gives_the_numbers_of_rotating_every_step(checkpoint_factory, hooked, monkeypatch):
    """drope_lens's generation cache stores keys rotated once, as they are appended
    (``_CacheEntry.ROTATED_KEYS_ON``: the CPU and CUDA by default; here the test's device);
    TransformerLens's cache stores them unrotated and the attention rotates every cached key again
    at every step. Both must give the same numbers to the last bit: greedy decoding (static and
    dynamic steps), every step's logits and the shared-prefix scores. With a hook that edits
    ``hook_rot_k`` in place (the whole key buffer it is given), the edit must not reach the stored
    keys: a planted bug that hands the hook the cache's own buffer compounds the edit step after
    step and fails here."""
    from drope_lens.measurement.generation import score_shared_prefix

    path, _ = checkpoint_factory()
    model = dl.load_model(path)
    vocab = list(range(model.cfg.d_vocab))
    hooks = [("blocks.1.attn.hook_rot_k", _in_place_key_edit)] if hooked else []
    groups = [[ROWS[0] + [3, 4], ROWS[0] + [5], ROWS[0] + [6, 7, 8]], [ROWS[2] + [9], ROWS[2] + [10, 11], ROWS[2] + [12]]]

    def run():
        static = greedy_generate(model, ROWS, NEW, batch_size=4, score_ids=vocab, score_steps=True, fwd_hooks=hooks)
        dynamic = greedy_generate(model, ROWS, NEW, batch_size=4, score_ids=vocab, score_steps=True,
                                  fwd_hooks=hooks + [("blocks.0.hook_resid_pre", _identity)])
        scores = score_shared_prefix(model, groups, vocab, batch_size=6, fwd_hooks=hooks)
        return static, dynamic, scores

    here = frozenset({torch.device(model.cfg.device).type})
    monkeypatch.setattr(generation._CacheEntry, "ROTATED_KEYS_ON", here)
    assert generation._Cache(model, 1, 4)[0].stores_rotated_keys
    rotated = run()
    monkeypatch.setattr(generation._CacheEntry, "ROTATED_KEYS_ON", frozenset())
    every_step = run()
    for new, old in zip(rotated[:2], every_step[:2]):
        assert new.tokens == old.tokens
        torch.testing.assert_close(new.step_logits, old.step_logits, rtol=0, atol=0)
    torch.testing.assert_close(rotated[2], every_step[2], rtol=0, atol=0)
    if hooked:  # the hook changes something (else this case would test nothing)
        monkeypatch.setattr(generation._CacheEntry, "ROTATED_KEYS_ON", here)
        plain = greedy_generate(model, ROWS, NEW, batch_size=4, score_ids=vocab, score_steps=True)
        assert not torch.equal(plain.step_logits, rotated[0].step_logits)


def test_head_major_cache_gives_the_numbers_of_the_token_major_one(checkpoint_factory, monkeypatch):
    """The generation cache laid out head-major in memory (``_CacheEntry.HEAD_MAJOR_ON``: the CPU by
    default; here the test's device) reads each head's keys contiguously; its keys and values are
    still ``[batch, pos, head, d_head]`` views. Greedy decoding (static and dynamic steps), every
    step's logits and the shared-prefix scores equal those of the token-major layout to the last bit
    (both are also compared with ``transformers`` by the tests above)."""
    from drope_lens.measurement.generation import score_shared_prefix

    path, _ = checkpoint_factory()
    model = dl.load_model(path)
    vocab = list(range(model.cfg.d_vocab))
    groups = [[ROWS[0] + [3, 4], ROWS[0] + [5], ROWS[0] + [6, 7, 8]], [ROWS[2] + [9], ROWS[2] + [10, 11], ROWS[2] + [12]]]

    def run():
        static = greedy_generate(model, ROWS, NEW, batch_size=4, score_ids=vocab, score_steps=True)
        dynamic = greedy_generate(model, ROWS, NEW, batch_size=4, score_ids=vocab, score_steps=True,
                                  fwd_hooks=[("blocks.0.hook_resid_pre", _identity)])
        return static, dynamic, score_shared_prefix(model, groups, vocab, batch_size=6)

    here = frozenset({torch.device(model.cfg.device).type})
    monkeypatch.setattr(generation._CacheEntry, "HEAD_MAJOR_ON", here)
    entry = generation._Cache(model, 2, 5)[0]
    assert entry.keys.shape[1] == 5 and entry.keys.transpose(1, 2).is_contiguous()
    head_major = run()
    monkeypatch.setattr(generation._CacheEntry, "HEAD_MAJOR_ON", frozenset())
    assert generation._Cache(model, 2, 5)[0].keys.is_contiguous()
    token_major = run()
    for new, old in zip(head_major[:2], token_major[:2]):
        assert new.tokens == old.tokens
        torch.testing.assert_close(new.step_logits, old.step_logits, rtol=0, atol=0)
    torch.testing.assert_close(head_major[2], token_major[2], rtol=0, atol=0)
