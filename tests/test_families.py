"""Every model family (Llama-3, SmolLM2, Qwen2, Mistral), RoPE and DroPE, against ``transformers``.

References are the ``transformers`` classes themselves and, for DroPE, upstream SakanaAI/DroPE's
construction of its attention from them (``family_builders``). Bound: max|Δlogit| / max|logit|
<= 1e-5 in float32, through both attention paths (SDPA and the explicit one that materialises
the pattern).
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import drope_lens as dl
from builders import WORDS, relative_error, tensors_equal
from drope_lens.model.attention import rope_inv_freq
from drope_lens.model.checkpoint import FAMILIES, SUPPORTED_ARCHITECTURES, CheckpointError, detect_variant, parse_config
from family_builders import CASES, LLAMA3_ROPE, edit_config, family_reference, save_family_checkpoint

BOUND = 1e-5
TOKENS = torch.tensor([[1, 5, 9, 17, 33, 40, 2, 61, 70, 88, 12, 3, 44, 45, 46, 90, 91, 7, 8, 20, 30, 31, 50, 60]])
FAMILY_OF = {"llama3-untied": "llama", "llama3-tied": "llama", "smollm2": "llama", "qwen2": "qwen2",
             "qwen2-sliding": "qwen2", "mistral": "mistral", "mistral-sliding": "mistral"}
# Every case as RoPE and DroPE; every upstream attention type on Qwen2 (upstream's second family)
# and on Mistral with a window; the others (Llama's are in test_equivalence) nope and qk_norm_nope.
MATRIX = [
    (case, attention_type)
    for case in CASES
    for attention_type in (
        (None, "nope", "qk_norm_nope", "q_norm_nope", "k_norm_nope")
        if case in ("qwen2", "qwen2-sliding", "mistral-sliding") else (None, "nope", "qk_norm_nope")
    )
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: one thread is as fast as two on an idle machine, and on a shared,
    oversubscribed one a two-thread forward was measured 100x slower (0.5 s against 5 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def family_checkpoint(tmp_path_factory):
    """factory(case, attention_type=None, softmax_scale=None) -> (directory, HF reference), cached."""
    cache: dict = {}

    def make(case: str, attention_type=None, softmax_scale=None):
        key = (case, attention_type, softmax_scale)
        if key not in cache:
            ref = family_reference(CASES[case], attention_type=attention_type, softmax_scale=softmax_scale)
            directory = tmp_path_factory.mktemp(f"{case}-{attention_type or 'rope'}")
            save_family_checkpoint(ref, CASES[case], directory, attention_type=attention_type,
                                   softmax_scale=softmax_scale)
            cache[key] = (directory, ref)
        return cache[key]

    return make


def _hf_forward(ref, tokens):
    """HF logits and the q/k/v projection outputs (after upstream's q/k norm where it applies)."""
    captured, handles = {}, []
    for layer, block in enumerate(ref.model.layers):
        for name in ("q_proj", "k_proj", "v_proj"):
            def hook(mod, inp, out, key=(layer, name[0])):
                captured[key] = out.detach().clone()

            handles.append(getattr(block.self_attn, name).register_forward_hook(hook))
    with torch.no_grad():
        logits = ref(tokens).logits
    for handle in handles:
        handle.remove()
    return logits, captured


def _logits(model, tokens=TOKENS):
    with torch.no_grad():
        return model(tokens)


@pytest.mark.parametrize("case,attention_type", MATRIX)
def test_family_matches_transformers(family_checkpoint, case, attention_type):
    path, ref = family_checkpoint(case, attention_type)
    model = dl.load_model(path)
    family = FAMILIES[FAMILY_OF[case]]
    assert model.lens.family == family.name
    assert model.lens.variant == ("drope" if attention_type else "rope")
    assert model.lens.attention_type == (attention_type or "rope")
    assert model.lens.architecture == (family.drope_architecture if attention_type else family.architecture)
    ref_logits, projections = _hf_forward(ref, TOKENS)
    assert relative_error(_logits(model), ref_logits) <= BOUND  # SDPA path
    logits, cache = model.run_with_cache(TOKENS)  # explicit path: scores and pattern materialised
    assert relative_error(logits, ref_logits) <= BOUND
    for (layer, kind), hf_out in projections.items():
        name = f"blocks.{layer}.attn.hook_{kind}" + ("_normed" if kind in "qk" else "")
        assert relative_error(cache[name].flatten(-2), hf_out) <= BOUND, (layer, kind)


@pytest.mark.parametrize("case", ["qwen2", "llama3-tied", "mistral-sliding"])
def test_drope_softmax_scale_as_upstream(family_checkpoint, case):
    """Upstream sets every DroPE attention's ``scaling`` (the q.k multiplier) to config.softmax_scale."""
    path, ref = family_checkpoint(case, "qk_norm_nope", 0.07)
    model = dl.load_model(path)
    assert model.lens.softmax_scale == 0.07 and model.blocks[0].attn.settings.scale == 0.07
    assert relative_error(_logits(model), _hf_forward(ref, TOKENS)[0]) <= BOUND


def test_hook_names_are_llamas(family_checkpoint):
    """The same hook points, by name, for every family (GQA layouts of the same size)."""
    for attention_type in (None, "qk_norm_nope"):
        names = {case: set(dl.load_model(family_checkpoint(case, attention_type)[0]).hook_dict)
                 for case in ("smollm2", "llama3-untied", "qwen2", "mistral-sliding")}
        assert len({frozenset(n) for n in names.values()}) == 1, attention_type
        assert {"blocks.1.attn.hook_q", "blocks.1.attn.hook_rot_k", "blocks.1.attn.hook_pattern",
                "blocks.1.attn.hook_q_normed", "blocks.1.hook_mlp_out"} <= names["qwen2"]


# -- Llama-3 RoPE ----------------------------------------------------------------------------
def test_llama3_inverse_frequencies_equal_transformers(family_checkpoint):
    _, ref = family_checkpoint("llama3-untied")
    spec = dl.load_model(family_checkpoint("llama3-untied")[0]).lens
    assert spec.rope_theta == 500000.0 and spec.rope_scaling.factor == 8.0
    ours = rope_inv_freq(16, spec.rope_theta, spec.rope_scaling)
    assert torch.equal(ours, ref.model.rotary_emb.inv_freq)
    plain = rope_inv_freq(16, spec.rope_theta)
    # one pair kept, one interpolated, the rest divided by factor: the adjustment is exercised
    assert ours[0] == plain[0] and plain[1] / 8 < ours[1] < plain[1]
    assert torch.allclose(ours[2:], plain[2:] / 8)


def test_llama3_scaling_changes_the_logits_and_the_table_cache_tells_them_apart(family_checkpoint, tmp_path):
    path, ref = family_checkpoint("llama3-untied")
    scaled = dl.load_model(path)
    plain_path = tmp_path / "plain"
    import shutil

    shutil.copytree(path, plain_path)
    edit_config(plain_path, rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    plain = dl.load_model(plain_path)  # same d_head and theta: must not reuse the llama3 table
    plain_ref = family_reference(CASES["llama3-untied"], rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    long = torch.arange(3, 96)[None]  # 93 positions: past the original context of 64
    with torch.no_grad():
        ref_scaled, ref_plain = ref(long).logits, plain_ref(long).logits
    assert relative_error(ref_plain, ref_scaled) > 1e-3  # the test can tell llama3 from default
    assert relative_error(_logits(scaled, long), ref_scaled) <= BOUND
    assert relative_error(_logits(plain, long), ref_plain) <= BOUND
    assert relative_error(_logits(scaled, long), ref_scaled) <= BOUND  # again, after the plain table


def test_llama3_old_config_convention(family_checkpoint, tmp_path):
    """transformers < 5 wrote rope_theta at the top and rope_scaling {"rope_type"/"type": "llama3"}."""
    import shutil

    path, ref = family_checkpoint("llama3-tied")
    old = tmp_path / "old"
    shutil.copytree(path, old)
    scaling = {k: v for k, v in LLAMA3_ROPE.items() if k not in ("rope_theta", "rope_type")}
    edit_config(old, rope_parameters=..., rope_theta=500000.0, rope_scaling={"type": "llama3", **scaling})
    model = dl.load_model(old)
    assert model.lens.rope_scaling == dl.load_model(path).lens.rope_scaling
    assert relative_error(_logits(model), _hf_forward(ref, TOKENS)[0]) <= BOUND


def test_rope_theta_in_either_convention(family_checkpoint, tmp_path):
    import shutil

    path, ref = family_checkpoint("qwen2")
    assert dl.load_model(path).lens.rope_theta == 1e6  # rope_parameters (transformers >= 5)
    old = tmp_path / "old"
    shutil.copytree(path, old)
    edit_config(old, rope_parameters=..., rope_theta=1e6)  # older: top-level rope_theta
    model = dl.load_model(old)
    assert model.lens.rope_theta == 1e6
    assert relative_error(_logits(model), _hf_forward(ref, TOKENS)[0]) <= BOUND
    edit_config(old, rope_theta=...)
    assert dl.load_model(old).lens.rope_theta == 10000.0  # neither: transformers' default


@pytest.mark.parametrize("rope,match", [
    ({"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}, r"rope_type='yarn'.*'default'.*'llama3'"),
    ({"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}, r"lacks \['low_freq_factor', 'high_freq_factor'\]"),
    ({"full_attention": {"rope_type": "default"}, "sliding_attention": {"rope_type": "default"}}, "per-layer"),
    ({"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}, "partial_rotary_factor"),
])
def test_unsupported_rope_is_refused(rope, match):
    config = CASES["llama3-untied"].make_config().to_dict()
    config["rope_parameters"] = rope
    with pytest.raises(CheckpointError, match=match):
        parse_config(config, source="x")


# -- Qwen2 -----------------------------------------------------------------------------------
def test_qwen2_biases_are_loaded_into_b_qkv(family_checkpoint):
    path, ref = family_checkpoint("qwen2")
    model = dl.load_model(path, requires_grad=True)
    hf = ref.model.layers[1].self_attn
    attn = model.blocks[1].attn
    assert tensors_equal(attn.b_Q, hf.q_proj.bias.view(4, 16))
    assert tensors_equal(attn._b_K, hf.k_proj.bias.view(2, 16))
    assert tensors_equal(attn._b_V, hf.v_proj.bias.view(2, 16))
    assert attn.b_Q.requires_grad and not attn.b_O.requires_grad and not attn.b_O.any()
    assert model.tokenizer.bos_token is None and not model.cfg.default_prepend_bos


@pytest.mark.parametrize("attention_type", [None, "qk_norm_nope"])
def test_llama_with_attention_bias(tmp_path, attention_type):
    """Llama's attention_bias=true: q/k/v and o_proj biases, loaded, matched and saved back."""
    case = CASES["smollm2"]
    ref = family_reference(case, attention_type=attention_type, attention_bias=True)
    path = save_family_checkpoint(ref, case, tmp_path / "ckpt", attention_type=attention_type)
    model = dl.load_model(path)
    assert model.lens.qkv_bias and model.lens.o_bias
    assert tensors_equal(model.blocks[0].attn.b_O, ref.model.layers[0].self_attn.o_proj.bias)
    assert relative_error(_logits(model), _hf_forward(ref, TOKENS)[0]) <= BOUND
    again = dl.load_model(dl.save_model(model, tmp_path / "saved"))
    assert torch.equal(_logits(again), _logits(model))


# -- sliding window --------------------------------------------------------------------------
@pytest.mark.parametrize("case,windows", [
    ("mistral", [None, None]), ("mistral-sliding", [5, 5]), ("qwen2", [None, None]), ("qwen2-sliding", [None, 5]),
    ("llama3-tied", [None, None]),
])
def test_sliding_window_setting_per_layer(family_checkpoint, case, windows):
    for attention_type in (None, "nope"):
        model = dl.load_model(family_checkpoint(case, attention_type)[0])
        assert [block.attn.settings.sliding_window for block in model.blocks] == windows
    converted = dl.to_drope(dl.load_model(family_checkpoint(case)[0]))  # to_drope keeps each layer's window
    assert [block.attn.settings.sliding_window for block in converted.blocks] == windows
    assert not converted.blocks[0].attn.settings.rotary


@pytest.mark.parametrize("attention_type", [None, "nope"])
def test_sliding_window_is_what_the_reference_computes(family_checkpoint, attention_type):
    """The window changes the logits, for DroPE too (it limits visible keys, rotary or not)."""
    path, ref = family_checkpoint("mistral-sliding", attention_type)
    unwindowed = family_reference(CASES["mistral-sliding"], attention_type=attention_type, sliding_window=None)
    with torch.no_grad():
        windowed_logits, full_logits = ref(TOKENS).logits, unwindowed(TOKENS).logits
    assert relative_error(full_logits[:, :5], windowed_logits[:, :5]) <= BOUND  # inside the window: same
    assert relative_error(full_logits, windowed_logits) > 1e-2  # beyond it: the window matters
    model = dl.load_model(path)
    assert relative_error(_logits(model), windowed_logits) <= BOUND


def test_sliding_window_generation_with_cache_matches_transformers(family_checkpoint):
    path, ref = family_checkpoint("mistral-sliding")
    model = dl.load_model(path)
    prompt = TOKENS[:, :9]
    with torch.no_grad():
        expected = ref.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                                pad_token_id=2, eos_token_id=None)
        got = model.generate(prompt, max_new_tokens=8, do_sample=False, use_past_kv_cache=True, verbose=False,
                             stop_at_eos=False)
    assert tensors_equal(got, expected)


@pytest.mark.parametrize("case", ["mistral-sliding", "qwen2-sliding"])
@pytest.mark.parametrize("attention_type", [None, "nope"])
def test_sliding_window_with_left_padding(family_checkpoint, case, attention_type):
    """Rows of a left-padded batch equal the rows alone and transformers' forward of each row."""
    path, ref = family_checkpoint(case, attention_type)
    model = dl.load_model(path)
    rows = [[1, 5, 9, 17, 33, 40, 61, 70, 12], [1, 44, 45, 46], [1, 7, 8, 20, 21, 22, 23]]
    length = max(map(len, rows))
    tokens = torch.tensor([[0] * (length - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    for backend in ("sdpa", "explicit"):
        model.set_attention_backend(backend)
        with torch.no_grad():
            batch = model(tokens, attention_mask=mask)
        for i, row in enumerate(rows):
            with torch.no_grad():
                expected = ref(torch.tensor([row])).logits[0]
            assert relative_error(batch[i, length - len(row):], expected) <= BOUND, (backend, i)


# -- upstream checkpoint variants -------------------------------------------------------------
@pytest.mark.parametrize("case", ["qwen2", "smollm2"])
@pytest.mark.parametrize("attention_type,unused", [("q_norm_nope", "k_norm"), ("k_norm_nope", "q_norm")])
def test_single_norm_checkpoint_with_or_without_the_unused_norm(family_checkpoint, tmp_path, case, attention_type, unused):
    import shutil

    path, ref = family_checkpoint(case, attention_type)
    assert any(unused in name for name in load_file(path / "model.safetensors"))  # upstream saves both
    ref_logits = _hf_forward(ref, TOKENS)[0]
    assert relative_error(_logits(dl.load_model(path)), ref_logits) <= BOUND
    stripped = tmp_path / "stripped"
    shutil.copytree(path, stripped)
    tensors = load_file(stripped / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if f".{unused}." not in k}, stripped / "model.safetensors",
              metadata={"format": "pt"})
    model = dl.load_model(stripped)
    assert relative_error(_logits(model), ref_logits) <= BOUND
    assert tensors_equal(getattr(model.blocks[0].attn, unused).w, torch.ones(getattr(model.blocks[0].attn, unused).length))
    used = "q_norm" if unused == "k_norm" else "k_norm"
    save_file({k: v for k, v in tensors.items() if f".{used}." not in k}, stripped / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=f"missing weight.*{used}"):
        dl.load_model(stripped)


def test_softmax_scale_of_a_rope_config_is_ignored_as_transformers_does(family_checkpoint, tmp_path):
    import shutil

    path, ref = family_checkpoint("qwen2")
    copy = tmp_path / "scaled"
    shutil.copytree(path, copy)
    edit_config(copy, softmax_scale=0.07)
    model = dl.load_model(copy)
    assert model.lens.softmax_scale is None
    assert relative_error(_logits(model), _hf_forward(ref, TOKENS)[0]) <= BOUND


@pytest.mark.parametrize("config,expected", [
    ({"model_type": "qwen2_drope"}, "drope"),
    ({"architectures": ["DroPEQwen2ForCausalLM"], "model_type": "qwen2"}, "drope"),
    ({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}, "rope"),
    ({"architectures": ["MistralForCausalLM"], "model_type": "mistral", "attention_type": "nope"}, "drope"),
])
def test_detect_variant_reads_upstream_names(config, expected):
    assert detect_variant(config) == expected


def test_qwen2_drope_without_attention_type_is_nope(family_checkpoint, tmp_path):
    """Upstream's DroPE config class defaults attention_type to 'nope'."""
    import shutil

    path, ref = family_checkpoint("qwen2", "nope")
    copy = tmp_path / "noattn"
    shutil.copytree(path, copy)
    edit_config(copy, attention_type=...)
    model = dl.load_model(copy)
    assert model.lens.attention_type == "nope" and model.lens.architecture == "DroPEQwen2ForCausalLM"
    assert relative_error(_logits(model), _hf_forward(ref, TOKENS)[0]) <= BOUND


def test_unsupported_architecture_lists_the_supported_ones():
    config = CASES["qwen2"].make_config().to_dict()
    config.update(architectures=["GemmaForCausalLM"], model_type="gemma")
    with pytest.raises(CheckpointError, match="unsupported architecture") as info:
        parse_config(config, source="x")
    for name in SUPPORTED_ARCHITECTURES:
        assert name in str(info.value)
    assert len(SUPPORTED_ARCHITECTURES) == 6


# -- saving ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case,attention_type", [
    ("qwen2-sliding", None), ("llama3-tied", None), ("mistral-sliding", None), ("qwen2", "qk_norm_nope"),
])
def test_save_model_round_trips_every_family(family_checkpoint, tmp_path, case, attention_type):
    path, ref = family_checkpoint(case, attention_type)
    model = dl.load_model(path)
    out = dl.save_model(model, tmp_path / "saved")
    again = dl.load_model(out)
    for field in ("family", "variant", "attention_type", "rope_theta", "rope_scaling", "sliding_window",
                  "sliding_layers", "qkv_bias", "tie_word_embeddings"):
        assert getattr(again.lens, field) == getattr(model.lens, field), field
    assert torch.equal(_logits(again), _logits(model))
    config = json.loads((out / "config.json").read_text())
    if attention_type is None:  # a saved RoPE model loads in its transformers class
        cls = type(ref)
        reloaded = cls.from_pretrained(out, attn_implementation="eager").eval()
        assert relative_error(_logits(model), _hf_forward(reloaded, TOKENS)[0]) <= BOUND
    else:
        assert config["model_type"] == "qwen2_drope" and config["architectures"] == ["DroPEQwen2ForCausalLM"]


# -- registry --------------------------------------------------------------------------------
def test_registry_has_every_upstream_pair_with_its_provenance():
    from drope_lens.model.registry import pairs

    raw = json.loads((__import__("importlib").resources.files("drope_lens") / "data" / "registry.json").read_text())
    expected_rope = {
        "llama2-7b": "meta-llama/Llama-2-7b-hf", "smollm-360m": "HuggingFaceTB/SmolLM-360M",
        "smollm-1.7b": "HuggingFaceTB/SmolLM-1.7B", "smollm2-360m-instruct": "HuggingFaceTB/SmolLM2-360M-Instruct",
        "smollm2-1.7b": "HuggingFaceTB/SmolLM2-1.7B", "smollm2-1.7b-instruct": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
    }
    known = pairs()
    for name, rope in expected_rope.items():
        assert known[name].rope == rope
        assert known[name].drope.count("/") == 1
        rope_note, drope_note = raw[name]["verified"].split("; drope: ")
        assert rope_note.startswith("rope: cfgs/model_cfg/")
        assert drope_note.startswith(("README.md", "unverified: "))


# -- the first three notebook lines, on every family -------------------------------------------
@pytest.mark.parametrize("case", ["llama3-tied", "smollm2", "qwen2", "mistral-sliding"])
def test_notebook_first_lines_on_every_family(family_checkpoint, case):
    from drope_lens.experiments import disruption, massive_values

    rope_path, _ = family_checkpoint(case)
    drope_path, _ = family_checkpoint(case, "qk_norm_nope")
    dl.register_pair(f"tiny-{case}", rope=str(rope_path), drope=str(drope_path))
    rope, drope = dl.load_pair(f"tiny-{case}")
    texts = [" ".join(WORDS[:12]), " ".join(WORDS[12:30])]
    others = [" ".join(WORDS[30:44]), " ".join(WORDS[44:60])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tokenizers without BOS warn that position 0 is a word
        for model in (rope, drope):
            df = massive_values.run(model, texts, max_tokens=16, show_progress=False)
            assert len(df) == 2 * 2 * 3 and set(df["sample"]) == {0, 1}
            assert not massive_values.per_layer(df).empty
            ppl = disruption.run(model, texts, others, seeds=1, max_tokens=16, show_progress=False)
            base = ppl[ppl.condition == "baseline"]
            assert len(base) == 2 and base["ppl"].gt(0).all()
            assert not disruption.summary(ppl).empty
