"""Experiments 1 and 2 against independent computations with HF transformers."""

from __future__ import annotations

import math

import pytest
import torch

import drope_lens as dl
from builders import plant_massive_dims, reference_model, save_checkpoint, tiny_config
from drope_lens.experiments import disruption, massive_values
from drope_lens.measurement.tokens import tokenize
from drope_lens.engine.results import RunStore, load_run
from drope_lens.measurement.texts import REGISTERS, Text, builtin_texts, load_texts, split_texts

PLANTED = {(0, "q"): [(1, 3), (2, 11)], (1, "q"): [(0, 7)], (1, "k"): [(3, 2), (0, 5)], (0, "v"): [(2, 0)]}


def _texts(n: int, words: int = 40) -> list[Text]:
    vocab = "the city of paris is in france rome italy secret passkey remember this number grass green".split()
    g = torch.Generator().manual_seed(7)
    return [Text(f"t{i}", "synthetic", " ".join(vocab[j] for j in torch.randint(0, len(vocab), (words,), generator=g)))
            for i in range(n)]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """RoPE and DroPE checkpoints whose planted (layer, tensor, head, dim) entries are massive."""
    out = {}
    for attention_type in (None, "nope"):
        ref = reference_model(tiny_config(), attention_type=attention_type, init_std=0.05, seed=1)
        plant_massive_dims(ref, PLANTED)
        path = save_checkpoint(ref, tmp_path_factory.mktemp("planted"), attention_type=attention_type)
        out[attention_type or "rope"] = (path, ref)
    return out


def _hf_counts(ref, tokens: torch.Tensor, threshold: float) -> dict:
    """The study's way: HF forward hooks on q_proj/k_proj/v_proj, M over the sequence axis."""
    captured, handles = {}, []
    n_heads = ref.config.num_attention_heads
    for layer, block in enumerate(ref.model.layers):
        for tensor in "qkv":
            proj = getattr(block.self_attn, f"{tensor}_proj")
            heads = n_heads if tensor == "q" else ref.config.num_key_value_heads

            def hook(mod, inp, out, key=(layer, tensor), heads=heads):
                captured[key] = out[0].detach().reshape(out.shape[1], heads, -1)

            handles.append(proj.register_forward_hook(hook))
    with torch.no_grad():
        ref(tokens[None])
    for handle in handles:
        handle.remove()
    counts = {}
    for key, x in captured.items():
        m = x.norm(dim=0) / math.sqrt(x.shape[0])
        mask = m > threshold * m.mean()
        counts[key] = (int(mask.sum()), sorted(map(tuple, torch.nonzero(mask).tolist())))
    return counts


@pytest.mark.parametrize("variant", ["rope", "nope"])
def test_massive_value_counts_match_hf_forward_hooks(planted, variant):
    path, ref = planted[variant]
    model = dl.load_model(path)
    texts = _texts(3)
    df = massive_values.run(model, texts, threshold=5.0, max_tokens=32, show_progress=False)
    assert len(df) == 3 * 2 * 3  # texts x layers x tensors
    tokens = tokenize(model, texts, 32)
    total_planted = 0
    for sample, seq in enumerate(tokens):
        expected = _hf_counts(ref, seq, 5.0)
        for (layer, tensor), (count, where) in expected.items():
            row = df[(df["sample"] == sample) & (df.layer == layer) & (df.tensor == tensor)].iloc[0]
            assert row["count"] == count, (sample, layer, tensor)
            assert sorted(zip(row["heads"], row["dims"])) == where
            total_planted += count
    assert total_planted >= 3 * 6  # the planted entries are found
    totals = massive_values.totals(df)
    assert set(totals.tensor) == {"q", "k", "v"}


def test_massive_values_summaries(planted):
    frames = [massive_values.run(dl.load_model(planted[v][0]), _texts(3), max_tokens=32, show_progress=False)
              for v in ("rope", "nope")]
    import pandas as pd

    df = pd.concat(frames)
    compared = massive_values.compare(df)
    assert {"mean_rope", "mean_drope", "change_pct"} <= set(compared.columns)
    where = massive_values.dim_locations(df, d_head=16)
    q = where[(where.variant == "rope") & (where.tensor == "q")].iloc[0]
    assert q.n_massive >= 9 and 0 <= q.low_freq_share <= 1
    curve = massive_values.per_layer(df)
    assert len(curve) == 2 * 3 * 2  # models x tensors x layers


def test_random_control_draws_same_count_per_layer_and_tensor():
    g = torch.Generator().manual_seed(0)
    massive = {"q": {0: torch.rand(4, 16, generator=g) > 0.9, 1: torch.rand(4, 16, generator=g) > 0.8},
               "k": {0: torch.rand(2, 16, generator=g) > 0.7, 1: torch.zeros(2, 16, dtype=torch.bool)}}
    a = disruption.random_masks(massive, seed=3)
    b = disruption.random_masks(massive, seed=3)
    c = disruption.random_masks(massive, seed=4)
    for tensor in massive:
        for layer, mask in massive[tensor].items():
            assert int(a[tensor][layer].sum()) == int(mask.sum())
            assert not (a[tensor][layer] & mask).any()  # drawn from non-massive entries
            assert torch.equal(a[tensor][layer], b[tensor][layer])  # deterministic per seed
    assert any(not torch.equal(a[t][l], c[t][l]) for t in massive for l in massive[t] if massive[t][l].any())


def test_baseline_perplexity_equals_hf_loss(planted):
    path, ref = planted["rope"]
    model = dl.load_model(path)
    texts = _texts(5)
    df = disruption.run(model, texts[:2], texts[2:], seeds=2, max_tokens=24, show_progress=False)
    tokens = tokenize(model, texts[2:], 24)
    base = df[df.condition == "baseline"].sort_values("sample")
    for sample, seq in enumerate(tokens):
        with torch.no_grad():
            loss = ref(seq[None], labels=seq[None]).loss
        assert base.iloc[sample]["ppl"] == pytest.approx(math.exp(float(loss)), rel=1e-5)


def test_disruption_conditions_and_summary(planted):
    model = dl.load_model(planted["nope"][0])
    texts = _texts(6)
    df = disruption.run(model, texts[:2], texts[2:], seeds=3, max_tokens=24, show_progress=False)
    assert sorted(df.condition.unique()) == ["baseline", "massive", "random"]
    assert sorted(df[df.condition == "random"].seed.unique()) == [0, 1, 2]
    massive_rows = df[df.condition == "massive"]
    random_rows = df[df.condition == "random"]
    assert (massive_rows.n_zeroed_q > 0).all()
    assert set(random_rows.n_zeroed_q) == set(massive_rows.n_zeroed_q)  # same count per seed
    summary = disruption.summary(df)
    assert summary.iloc[0]["n_texts"] == 4 and summary.iloc[0]["n_seeds"] == 3
    assert summary.iloc[0]["massive_ppl"] != summary.iloc[0]["baseline_ppl"]
    statistics = disruption.statistics(df, n_bootstrap=200)
    assert statistics.iloc[0]["massive_pct_ci_low"] <= summary.iloc[0]["massive_pct"] <= statistics.iloc[0]["massive_pct_ci_high"]
    with pytest.raises(ValueError, match="also identification texts"):
        disruption.run(model, texts[:2], texts[1:], seeds=1, max_tokens=24, show_progress=False)


def test_batched_conditions_equal_one_at_a_time(planted):
    model = dl.load_model(planted["rope"][0])
    texts = _texts(6)
    batched = disruption.run(model, texts[:2], texts[2:], seeds=4, max_tokens=24, batch_size=32, show_progress=False)
    alone = disruption.run(model, texts[:2], texts[2:], seeds=4, max_tokens=24, batch_size=1, batched=False,
                           show_progress=False)
    assert len(batched) == len(alone) == 4 * (2 + 4)
    # same rows; fp32 GEMMs are not bitwise batch-invariant, hence a rounding-level tolerance
    torch.testing.assert_close(torch.tensor(batched.nll.values), torch.tensor(alone.nll.values), rtol=1e-6, atol=0)


def test_determinism_and_resume(planted, tmp_path, monkeypatch):
    model = dl.load_model(planted["rope"][0])
    texts = _texts(5)
    kwargs = dict(seeds=3, max_tokens=24, show_progress=False)
    store = RunStore(tmp_path, "disruption", "run1")
    first = disruption.run(model, texts[:2], texts[2:], store=store, **kwargs)
    again = disruption.run(model, texts[:2], texts[2:], **kwargs)
    assert first.equals(again)  # deterministic given the seed
    parts = sorted(store.parts.iterdir())
    assert len(parts) == 2 + 3
    parts[-1].unlink()  # "interrupted": one random seed never finished
    forwards = []
    original = model.run_with_hooks
    monkeypatch.setattr(model, "run_with_hooks", lambda *a, **k: forwards.append(1) or original(*a, **k))
    resumed = disruption.run(model, texts[:2], texts[2:], store=store, **kwargs)
    assert resumed.equals(first)
    # identification (1 forward) + the one planned batch (all 15 rows) that holds the missing rows
    assert len(forwards) == 2
    from drope_lens.engine.results import model_identity

    meta = disruption.meta_for(disruption.DisruptionConfig(seeds=3, max_tokens=24), texts[:2], texts[2:])
    store.finalize(resumed, meta | {"models": [model_identity(model)]})
    data, meta = load_run(store.directory)
    assert data.equals(resumed)
    assert meta["config"]["seeds"] == 3 and meta["models"][0]["variant"] == "rope"
    assert meta["models"][0]["fingerprint"] and meta["packages"]["torch"]


def _part(store, suffix: str):
    (part,) = [p for p in store.parts.iterdir() if p.stem.endswith(suffix)]
    return part


def test_resumed_sweep_equals_uninterrupted_when_numbers_depend_on_batch_shape(planted, tmp_path, monkeypatch):
    """On a GPU, GEMMs may round differently for different batch shapes. A rerun recomputes every
    missing row in the batch it was planned in (with its batch mates), so a resumed sweep equals
    an uninterrupted one bit for bit. Simulated here by outputs that depend on the batch size."""
    from drope_lens.experiments import massive_values as mv

    model = dl.load_model(planted["rope"][0])
    original = model.run_with_hooks

    def batch_shape_dependent(tokens, *args, **kwargs):
        out = original(tokens, *args, **kwargs)
        return None if out is None else out * (1 + 1e-3 * tokens.shape[0])

    monkeypatch.setattr(model, "run_with_hooks", batch_shape_dependent)
    texts = _texts(5)
    kwargs = dict(seeds=3, max_tokens=24, batch_size=4, show_progress=False)
    store = RunStore(tmp_path, "disruption", "d")
    first = disruption.run(model, texts[:2], texts[2:], store=store, **kwargs)
    # 15 rows in batches of 4, 4, 4, 3: random seed 0's rows 6, 7, 8 straddle two batches
    _part(store, "random-0").unlink()
    forwards = []
    monkeypatch.setattr(model, "run_with_hooks", lambda *a, **k: forwards.append(1) or batch_shape_dependent(*a, **k))
    assert disruption.run(model, texts[:2], texts[2:], store=store, **kwargs).equals(first)
    assert len(forwards) == 1 + 2  # identification + the two batches that hold seed 0's rows

    original_norms = mv.sequence_norms

    def norms_depending_on_batch_shape(model, tokens, *args):
        return {k: v * (1 + 1e-3 * tokens.shape[0]) for k, v in original_norms(model, tokens, *args).items()}

    monkeypatch.setattr(mv, "sequence_norms", norms_depending_on_batch_shape)
    store = RunStore(tmp_path, "massive_values", "m")
    first = mv.run(model, texts, max_tokens=24, batch_size=2, store=store, show_progress=False)
    _part(store, "sample-2").unlink()  # in the batch [2, 3]
    assert mv.run(model, texts, max_tokens=24, batch_size=2, store=store, show_progress=False).equals(first)


def test_massive_values_resume(planted, tmp_path):
    model = dl.load_model(planted["nope"][0])
    store = RunStore(tmp_path, "massive_values", "r")
    first = massive_values.run(model, _texts(4), max_tokens=32, store=store, show_progress=False)
    sorted(store.parts.iterdir())[0].unlink()
    assert massive_values.run(model, _texts(4), max_tokens=32, store=store, show_progress=False).equals(first)


def test_builtin_texts():
    texts = builtin_texts()
    assert len(texts) >= 10 and all(t.words >= 600 for t in texts)
    assert {t.register for t in texts} >= set(REGISTERS)
    ident, evaluation = split_texts(texts, 3, 9)
    assert len(ident) == 3 and len(evaluation) == 9
    assert not {t.text for t in ident} & {t.text for t in evaluation}
    assert split_texts(texts, 3, 9) == (ident, evaluation)
    with pytest.raises(ValueError, match="cannot draw"):
        split_texts(texts, 10, 10)


def test_load_texts_from_folder_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("first text")
    (tmp_path / "b.jsonl").write_text('{"text": "second", "name": "s"}\n{"text": "third"}\n')
    texts = load_texts(tmp_path)
    assert [t.text for t in texts] == ["first text", "second", "third"]
    with pytest.raises(FileNotFoundError, match="no such text file"):
        load_texts(tmp_path / "missing")


def test_cli_runs_save_results_and_print_summaries(planted, tmp_path):
    import json
    import subprocess
    import sys

    rope, drope = str(planted["rope"][0]), str(planted["nope"][0])
    common = ["--rope", rope, "--drope", drope, "--max-tokens", "48", "--out", str(tmp_path), "--device", "cpu"]
    mv = subprocess.run([sys.executable, "-m", "drope_lens.cli", "run", "massive-values", *common, "--n-texts", "4"],
                        capture_output=True, text=True)
    assert mv.returncode == 0, mv.stderr
    assert "RoPE vs DroPE" in mv.stdout and "change_pct" in mv.stdout
    dr = subprocess.run([sys.executable, "-m", "drope_lens.cli", "run", "disruption", *common, "--seeds", "2"],
                        capture_output=True, text=True)
    assert dr.returncode == 0, dr.stderr
    assert "reliance ratio" in dr.stdout and "wilcoxon" in dr.stdout
    (run_dir,) = (tmp_path / "disruption").iterdir()
    meta = json.loads((run_dir / "meta.json").read_text())
    assert [m["variant"] for m in meta["models"]] == ["rope", "drope"]
    assert len(meta["identification_texts"]) == 3 and len(meta["evaluation_texts"]) == 9
    assert not set(meta["identification_texts"]) & set(meta["evaluation_texts"])
    assert (run_dir / "data.parquet").is_file() and list(run_dir.glob("identification-*.parquet"))
    bad = subprocess.run([sys.executable, "-m", "drope_lens.cli", "run", "disruption", "--pair", "toy", "--rope", rope,
                          "--out", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "not both" in bad.stderr


def test_wikitext_articles_from_a_cached_dataset(monkeypatch):
    """wikitext-2 rows are grouped into articles at top-level ' = Title = ' headings (no download)."""
    import sys
    import types

    body = " ".join(["word"] * 700)
    rows = [" = Alpha = \n", f" {body} \n", " = = Section = = \n", " more words \n", " = Beta = \n", " too short \n"]
    fake = types.SimpleNamespace(load_dataset=lambda *a, **k: {"text": rows})
    monkeypatch.setitem(sys.modules, "datasets", fake)
    texts = load_texts("wikitext")
    assert len(texts) == 1 and texts[0].register == "wikitext"
    assert texts[0].words == 700 + 5 + 2  # body, the "= = Section = =" heading, its line; no title


def test_reliance_ratio_is_undefined_not_huge_when_drope_difference_is_zero():
    import math

    import pandas as pd

    from drope_lens.experiments import disruption

    frame = pd.DataFrame({"variant": ["rope", "drope"], "m_minus_r": [17.6, 2.2e-14]})
    assert math.isnan(disruption.reliance_ratio(frame))
    frame = pd.DataFrame({"variant": ["rope", "drope"], "m_minus_r": [17.6, 4.4]})
    assert disruption.reliance_ratio(frame) == pytest.approx(4.0)


def test_massive_values_early_stop_leaves_the_model_clean(planted):
    from drope_lens.experiments import massive_values
    from drope_lens.measurement.texts import builtin_texts

    model = dl.load_model(planted["rope"][0])
    tokens = torch.tensor([[1, 5, 9, 13, 17, 21]])
    before = model(tokens)
    massive_values.run(model, builtin_texts()[:3], max_tokens=32, show_progress=False)
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())  # the stopped forward removed its hooks
    torch.testing.assert_close(model(tokens), before, rtol=0, atol=0)


@pytest.mark.parametrize("max_tokens", [16, 100, 512])
def test_prefix_tokenisation_equals_whole_text_tokenisation(planted, max_tokens):
    """tokenize() reads only a prefix of each text; the tokens kept are those of the whole text: on
    the first call (6 characters per token), on later calls (prefixes sized from the characters per
    token seen), and when that size is far too short (every prefix tokenised whole again)."""
    from drope_lens.measurement import tokens as token_module
    from drope_lens.measurement.tokens import tokenize
    from drope_lens.measurement.texts import Text, builtin_texts, toy_texts

    texts = builtin_texts() + toy_texts()[:4] + [Text("short", "x", "a few words only")]
    for source in (planted["rope"][0], "bundled:toy/rope"):
        model = dl.load_model(source)
        token_module._CHARS_PER_TOKEN.pop(model.tokenizer, None)
        wholes = [model.tokenizer(text.text, add_special_tokens=True)["input_ids"][:max_tokens] for text in texts]
        first = tokenize(model, texts, max_tokens)
        if max_tokens == 512 and str(source).startswith("bundled"):  # a BPE: about 2.5 characters per token
            assert token_module._prefix_chars(model.tokenizer, max_tokens) < 4 * max_tokens
        second = tokenize(model, texts, max_tokens)
        token_module._CHARS_PER_TOKEN[model.tokenizer] = 0.5  # prefixes of a quarter of the tokens needed
        short = tokenize(model, texts, max_tokens)
        for got in (first, second, short):
            assert [t.tolist() for t in got] == wholes


@pytest.mark.parametrize("attention_type", [None, "nope"])
def test_grouped_query_models_run_both_experiments(checkpoint_factory, attention_type):
    """k and v have fewer heads than q under GQA; both experiments handle the two shapes."""
    model = dl.load_model(checkpoint_factory(attention_type=attention_type, n_kv_heads=2)[0])
    texts = builtin_texts()
    mv = massive_values.run(model, texts[:2], threshold=2.0, max_tokens=24, show_progress=False)
    assert set(mv.tensor) == {"q", "k", "v"}
    assert all(h < 2 for tensor, heads in zip(mv.tensor, mv.heads) if tensor != "q" for h in heads)
    ident, evaluation = split_texts(texts, 2, 3)
    masks = disruption.identify_massive(model, ident, threshold=2.0, max_tokens=24)
    assert masks["q"][0].shape == (4, 16) and masks["k"][0].shape == (2, 16)
    df = disruption.run(model, ident, evaluation, threshold=2.0, seeds=2, max_tokens=24, show_progress=False)
    assert len(df) == (2 + 2) * 3 and df.ppl.notna().all()
