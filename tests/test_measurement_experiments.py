"""Exp 4, 5, 7, 8-9 against values computed here: HF eager attention weights, run_with_cache
activations and numpy SVDs; resume, CLI and named errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import drope_lens as dl
from builders import plant_massive_qk, reference_model, save_checkpoint, tiny_config
from drope_lens.experiments import attention_structure, bos_write, layer_balance, sinks
from drope_lens.measurement.tokens import tokenize
from drope_lens.engine.measure import measure
from drope_lens.measurement.summaries import bootstrap_ci
from drope_lens.engine.results import RunStore
from drope_lens.measurement.texts import Text, TextInputError

VOCAB = "the city of paris is in france rome italy secret passkey remember this number grass green sky blue".split()
MAX_TOKENS = 24


def _texts(n: int = 4, words: int = 30) -> list[Text]:
    g = torch.Generator().manual_seed(11)
    return [Text(f"t{i}", "synthetic", " ".join(VOCAB[j] for j in torch.randint(0, len(VOCAB), (words,), generator=g)))
            for i in range(n)]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """RoPE and DroPE (grouped-query) checkpoints whose layer 1 makes BOS a sink (the planted sink
    does not survive DroPE's q/k norm, so the q/k-norm variant has none)."""
    out = {}
    for attention_type in (None, "nope", "qk_norm_nope"):
        config = tiny_config(num_key_value_heads=2)
        ref = reference_model(config, attention_type=attention_type, init_std=0.1, seed=2)
        plant_massive_qk(ref, layer=1, strength=5.0)
        path = save_checkpoint(ref, tmp_path_factory.mktemp("sinkpair"), attention_type=attention_type)
        out[attention_type or "rope"] = (path, ref, dl.load_model(path))
    return out


def _hf_attentions(ref, tokens: torch.Tensor) -> tuple:
    with torch.no_grad():
        return ref(tokens, output_attentions=True).attentions  # per layer [batch, head, T, T]


def _tokens(model):
    return torch.stack(tokenize(model, _texts(), MAX_TOKENS))


@pytest.mark.parametrize("variant", ["rope", "nope", "qk_norm_nope"])
def test_sinks_match_cache_svd_and_hf_attention(pair, variant):
    path, ref, model = pair[variant]
    df = sinks.run(model, _texts(), max_tokens=MAX_TOKENS, show_progress=False)
    assert {"sample", "layer", "head", "sink_score", "is_sink", "bos_norm", "bos_ratio", "repr_entropy",
            "repr_entropy_norm"} <= set(df.columns)
    tokens = _tokens(model)
    attentions = _hf_attentions(ref, tokens)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_post"))
    for (sample, layer), frame in df.groupby(["sample", "layer"]):
        want_sink = attentions[layer][sample, :, 1:, 0].mean(-1).numpy()
        np.testing.assert_allclose(frame.sort_values("head")["sink_score"], want_sink, atol=1e-5)
        resid = cache[f"blocks.{layer}.hook_resid_post"][sample].double().numpy()
        norms = np.linalg.norm(resid, axis=-1)
        s = np.linalg.svd(resid, compute_uv=False)
        p = s**2 / (s**2).sum()
        share = s / s.sum()
        rank = np.linalg.matrix_rank(resid)
        row = frame.iloc[0]
        np.testing.assert_allclose(row["bos_norm"], norms[0], rtol=1e-5)
        np.testing.assert_allclose(row["bos_ratio"], norms[0] / norms[1:].mean(), rtol=1e-5)
        np.testing.assert_allclose(row["repr_entropy"], -(p * np.log(p)).sum(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(row["repr_entropy_norm"], -(share * np.log(share)).sum() / np.log(rank), rtol=1e-4)
    assert (df["is_sink"] == (df["sink_score"] >= 0.3)).all()
    if variant != "qk_norm_nope":
        assert df.loc[df["layer"] == 1, "is_sink"].all()  # the planted sink layer
        rates = sinks.layer_rows(df)
        assert rates.loc[rates["layer"] == 1, "sink_rate"].eq(1.0).all()
    spikes = sinks.spike_layers(df)
    ratios = sinks.layer_rows(df).pivot_table(index="sample", columns="layer", values="bos_ratio")
    for _, row in spikes.iterrows():
        above = [layer for layer in ratios.columns if ratios.loc[row["sample"], layer] > 2.0]
        got = row["spike_layer_first_above"]
        assert (pd.isna(got) and not above) or got == above[0]  # no spike: <NA>, never -1
        assert row["spike_layer_argmax"] == ratios.loc[row["sample"]].idxmax()


def test_bos_write_matches_cache(pair):
    path, ref, model = pair["nope"]
    df = bos_write.run(model, _texts(), max_tokens=MAX_TOKENS, show_progress=False)
    tokens = _tokens(model)
    attentions = _hf_attentions(ref, tokens)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_v"))
    for (sample, layer), frame in df.groupby(["sample", "layer"]):
        frame = frame.sort_values("head")
        v = cache[f"blocks.{layer}.attn.hook_v"][sample, 0].norm(dim=-1).numpy()  # [kv_head]
        np.testing.assert_allclose(frame["v_norm_bos"], np.repeat(v, 2), rtol=1e-5)  # 4 heads read 2 kv heads
        mass = attentions[layer][sample, :, 1:, 0].mean(-1).numpy()
        np.testing.assert_allclose(frame["bos_mass"], mass, atol=1e-5)
        np.testing.assert_allclose(frame["write"], mass * np.repeat(v, 2), rtol=1e-4, atol=1e-6)
    best = bos_write.max_write_layers(df)
    layer_means = df.groupby(["sample", "layer"])["write"].mean().unstack()
    assert (best.set_index("sample")["max_write_layer"] == layer_means.idxmax(axis=1)).all()


def test_attention_structure_columns_classes_and_values(pair):
    """Entropy, local mass, distances, each head's class and the class shares against HF eager
    attention weights by hand (float64). Planted bugs this catches: BOS counted in
    ``local_mass_no_bos`` (the mass the class uses); a class share that is not the per-text share
    of a text's heads (e.g. counted within one layer), or that omits a class."""
    path, ref, model = pair["rope"]
    hand = []
    df = attention_structure.run(model, _texts(), max_tokens=MAX_TOKENS, window=3, max_distance=6,
                                 show_progress=False)
    assert {"sample", "layer", "head", "sink_score", "entropy", "local_mass", "head_class"} <= set(df.columns)
    tokens = _tokens(model)
    attentions = _hf_attentions(ref, tokens)
    for (sample, layer, head), row in df.set_index(["sample", "layer", "head"]).iterrows():
        p = attentions[layer][sample, head].double()
        rows = p[1:]
        entropy = -(torch.where(rows > 0, rows * rows.log(), torch.zeros_like(rows))).sum(-1).mean()
        np.testing.assert_allclose(row["entropy"], float(entropy), atol=1e-5)
        t = torch.arange(1, p.shape[0])
        local = sum(p[t[t - d >= 0], t[t - d >= 0] - d].sum() for d in range(3)) / len(t)
        np.testing.assert_allclose(row["local_mass"], float(local), atol=1e-5)
        np.testing.assert_allclose(row["distance"][2], float(p[t[t >= 2], t[t >= 2] - 2].sum() / len(t)), atol=1e-5)
        # the class from HF's pattern by hand: sink score, then local mass without BOS (keys t-2..t, not 0)
        sink = float(p[1:, 0].mean())
        local_no_bos = float(sum(p[t[t - d >= 1], t[t - d >= 1] - d].sum() for d in range(3)) / len(t))
        np.testing.assert_allclose(row["local_mass_no_bos"], local_no_bos, atol=1e-5)
        expected = "sink" if sink >= 0.3 else "local" if local_no_bos >= 0.3 else "distributed"
        hand.append({"sample": sample, "layer": layer, "head": head, "head_class": expected})
        if min(abs(sink - 0.3), abs(local_no_bos - 0.3)) > 1e-5:  # not on a threshold's edge
            assert row["head_class"] == expected, (sample, layer, head)
    assert (df.loc[df["layer"] == 1, "head_class"] == "sink").all()
    # class shares: per text, the share of its heads in each class, then the mean over texts
    by_hand = pd.DataFrame(hand)
    per_text = pd.crosstab(by_hand["sample"], by_hand["head_class"], normalize="index")
    shares = attention_structure.class_shares(df).set_index("quantity")
    for name in attention_structure.CLASSES:
        want = per_text[name].mean() if name in per_text else 0.0
        assert shares.loc[f"{name}_share", "mean"] == pytest.approx(want, abs=1e-12), name
    assert per_text.shape[1] >= 2  # more than one class present: the shares are not trivially 1 and 0


def _hf_token_mean_norms(ref, tokens: torch.Tensor) -> dict:
    """float64 token-mean L2 norms per (name, layer) from HF forward hooks: ``attn`` (self_attn
    output), ``mlp``, ``q``/``k`` (raw q_proj/k_proj outputs: a prepended hook runs before the
    q/k RMSNorm hook) and ``q_normed``/``k_normed`` (after it)."""
    out, handles = {}, []

    def keep(key):
        def hook(module, inputs, output):
            value = (output[0] if isinstance(output, tuple) else output).detach().double()
            out[key] = value.square().sum(-1).sqrt().mean(1)  # [batch]
        return hook

    for layer, block in enumerate(ref.model.layers):
        attn = block.self_attn
        handles += [attn.register_forward_hook(keep(("attn", layer))),
                    block.mlp.register_forward_hook(keep(("mlp", layer))),
                    attn.q_proj.register_forward_hook(keep(("q", layer)), prepend=True),
                    attn.k_proj.register_forward_hook(keep(("k", layer)), prepend=True),
                    attn.q_proj.register_forward_hook(keep(("q_normed", layer))),
                    attn.k_proj.register_forward_hook(keep(("k_normed", layer)))]
    with torch.no_grad():
        ref(tokens)
    for h in handles:
        h.remove()
    return out


@pytest.mark.parametrize("variant", ["rope", "qk_norm_nope"])
def test_layer_balance_matches_cache(pair, variant):
    """Every column against float64 norms from HF forward hooks (not the same TransformerLens cache
    and formula). Planted bugs this catches: attn_fraction = attn / mlp; the norm averaged over
    the batch axis; q_norm reading DroPE's normed q (or q_norm_normed the raw one)."""
    path, ref, model = pair[variant]
    df = layer_balance.run(model, _texts(), max_tokens=MAX_TOKENS, show_progress=False)
    assert {"sample", "layer", "attn_norm", "mlp_norm", "attn_fraction", "q_norm", "k_norm"} <= set(df.columns)
    hf = _hf_token_mean_norms(ref, _tokens(model))
    for _, row in df.iterrows():
        s, layer = int(row["sample"]), int(row["layer"])
        attn, mlp = float(hf[("attn", layer)][s]), float(hf[("mlp", layer)][s])
        np.testing.assert_allclose([row["attn_norm"], row["mlp_norm"], row["attn_fraction"]],
                                   [attn, mlp, attn / (attn + mlp)], rtol=1e-5)
        np.testing.assert_allclose([row["q_norm"], row["k_norm"], row["q_norm_normed"], row["k_norm_normed"]],
                                   [float(hf[(n, layer)][s]) for n in ("q", "k", "q_normed", "k_normed")], rtol=1e-5)
    if variant == "qk_norm_nope":  # the norm changes the size of q and k
        assert not np.allclose(df["q_norm"], df["q_norm_normed"])


def test_one_forward_serves_every_measurement_and_runs_resume(pair, tmp_path, monkeypatch):
    from drope_lens.engine import measure as engine

    path, ref, model = pair["qk_norm_nope"]
    texts = _texts(5)
    parts = [sinks.measurement(sinks.SinksConfig()), bos_write.measurement(bos_write.BosWriteConfig()),
             attention_structure.measurement(attention_structure.AttentionStructureConfig()),
             layer_balance.measurement(layer_balance.LayerBalanceConfig())]
    from drope_lens.hooks import attention_stats as stats_hooks

    calls = []
    original_compute = stats_hooks.compute_stats
    monkeypatch.setattr(stats_hooks, "compute_stats", lambda *a, **k: calls.append(k) or original_compute(*a, **k))
    together = measure(model, texts, parts, max_tokens=MAX_TOKENS, batch_size=5, show_progress=False)
    # one forward, one streamed attention computation per layer shared by Exp 4, 5 and 7
    assert len(calls) == model.cfg.n_layers and {(k["window"], k["max_distance"]) for k in calls} == {(5, 50)}
    monkeypatch.setattr(stats_hooks, "compute_stats", original_compute)
    alone = layer_balance.run(model, texts, max_tokens=MAX_TOKENS, batch_size=5, show_progress=False)
    assert together["layer_balance"].equals(alone)
    structure = attention_structure.run(model, texts, max_tokens=MAX_TOKENS, batch_size=5, show_progress=False)
    np.testing.assert_allclose(together["attention_structure"]["sink_score"], structure["sink_score"], atol=1e-6)
    np.testing.assert_allclose(together["sinks"]["sink_score"], structure["sink_score"], atol=1e-6)

    store = RunStore(tmp_path, "sinks", "run")
    first = sinks.run(model, texts, max_tokens=MAX_TOKENS, batch_size=2, store=store, show_progress=False)
    for part in sorted(store.parts.glob("*-sample-[234].parquet")):  # as if interrupted after texts 0 and 1
        part.unlink()
    forwards = []
    original = engine._forward
    monkeypatch.setattr(engine, "_forward", lambda *a: forwards.append(a[2]) or original(*a))
    second = sinks.run(model, texts, max_tokens=MAX_TOKENS, batch_size=2, store=RunStore(tmp_path, "sinks", "run"),
                       show_progress=False)
    assert forwards == [[2, 3], [4]]  # text 2 shares its planned batch with 3; 0 and 1 were saved
    assert second.equals(first)


@pytest.mark.parametrize("variant, norms_per_layer", [("nope", 7), ("qk_norm_nope", 9)])
def test_one_forward_computes_each_activation_norm_once(pair, monkeypatch, variant, norms_per_layer):
    """Exp 4 and 5 share the residual norms (resid_post per position, resid_pre at BOS); Exp 8-9's
    hook_q_normed / hook_k_normed norms are hook_q's / hook_k's when they are one tensor (no q/k
    norm). Per layer: resid_post, resid_pre[0], v[0], attn_out, mlp_out, q, k (+ q_normed, k_normed
    under q/k norms). The values are bit-identical to each experiment's own run."""
    path, ref, model = pair[variant]
    texts = _texts(3)
    parts = [sinks.measurement(sinks.SinksConfig()), bos_write.measurement(bos_write.BosWriteConfig()),
             attention_structure.measurement(attention_structure.AttentionStructureConfig()),
             layer_balance.measurement(layer_balance.LayerBalanceConfig())]
    calls = []
    original = torch.linalg.vector_norm
    monkeypatch.setattr(torch.linalg, "vector_norm", lambda x, *a, **k: calls.append(x.shape) or original(x, *a, **k))
    together = measure(model, texts, parts, max_tokens=MAX_TOKENS, batch_size=3, show_progress=False)
    assert len(calls) == norms_per_layer * model.cfg.n_layers
    monkeypatch.undo()
    norms = {sinks: ["bos_norm", "bos_norm_pre", "bos_ratio"], bos_write: ["v_norm_bos", "bos_norm", "bos_norm_pre",
             "bos_ratio"], layer_balance: list(layer_balance.VALUES)}
    for module, columns in norms.items():
        alone = module.run(model, texts, max_tokens=MAX_TOKENS, batch_size=3, show_progress=False)
        assert together[module.EXPERIMENT][columns].equals(alone[columns]), module.EXPERIMENT


def test_packed_host_copy_and_deferred_entropies_give_the_same_frames(pair, monkeypatch):
    """The GPU path of the engine, forced on the CPU: every capture packed into one copy (rows see
    only tensors of that one buffer), Exp 4's entropies solved by DeferredEntropies launched after
    the copy and read last. Frames equal those of the direct path (checked against independent
    references by the tests above)."""
    import dataclasses
    import functools

    from drope_lens.engine import host_transfer
    from drope_lens.engine import measure as engine
    from drope_lens.measurement import entropy

    path, ref, model = pair["nope"]
    texts = _texts(5)
    parts = [sinks.measurement(sinks.SinksConfig()), bos_write.measurement(bos_write.BosWriteConfig()),
             attention_structure.measurement(attention_structure.AttentionStructureConfig()),
             layer_balance.measurement(layer_balance.LayerBalanceConfig())]
    direct = measure(model, texts, parts, max_tokens=MAX_TOKENS, batch_size=3, show_progress=False)

    events, packs, seen = [], [], {}

    def pack(tree, **kwargs):
        events.append("pack")
        packs.append(host_transfer.pack_to_host(tree, include_cpu=True))
        return packs[-1]

    def spy(name, rows):
        def wrapped(model, batch):
            events.append(f"rows {name}")
            seen.setdefault(name, []).append((batch.captured, batch.attention))
            return rows(model, batch)
        return wrapped

    def traced(method, label):
        @functools.wraps(method)
        def wrapped(self, *a, **k):
            events.append(label)
            return method(self, *a, **k)
        return wrapped

    monkeypatch.setattr(engine, "pack_to_host", pack)
    monkeypatch.setattr(sinks, "_defer", lambda x, m, n_layers: True)
    monkeypatch.setattr(entropy.DeferredEntropies, "launch", traced(entropy.DeferredEntropies.launch, "launch"))
    monkeypatch.setattr(entropy.DeferredEntropies, "result", traced(entropy.DeferredEntropies.result, "result"))
    monkeypatch.setattr(entropy.DeferredEntropies, "table", traced(entropy.DeferredEntropies.table, "result"))
    spied = [dataclasses.replace(m, rows=spy(m.name, m.rows)) for m in parts]
    packed = measure(model, texts, spied, max_tokens=MAX_TOKENS, batch_size=3, show_progress=False)

    for name, frame in direct.items():
        pd.testing.assert_frame_equal(packed[name], frame, check_exact=True)
    # per forward (2 batches): pack, launch the spectra, then the frames, Exp 4's last, reading its
    # entropies at its end (the second forward runs before the first batch's frames are built)
    one = ["rows bos_write", "rows attention_structure", "rows layer_balance", "rows sinks", "result"]
    assert events == ["pack", "launch", "pack", "launch"] + one + one
    assert [p.n_copies for p in packs] == [1, 1]
    for pack_, k in zip(packs, range(2)):
        buffers = set()
        for name, batches in seen.items():
            captured, attention = batches[k]
            tensors = host_transfer._tensors({"c": captured, "a": attention})
            assert tensors and all(t.device.type == "cpu" for t in tensors)
            buffers |= {t.untyped_storage().data_ptr() for t in tensors}
            if name == "sinks":
                assert isinstance(captured[sinks.DEFERRED], entropy.DeferredEntropies)
                assert all("repr_entropy" not in captured[layer] for layer in range(model.cfg.n_layers))
        assert len(buffers) == 1  # everything the frames read came through the batch's one copy


def test_unsaved_frames_equal_saved_ones_with_chunks_of_unequal_lengths(pair, tmp_path, monkeypatch):
    """Without a store a forward's frames stay whole (no per-sample split and concatenation); they
    equal the saved path's, cell for cell, when a chunk holds texts of several lengths (several
    forwards per chunk, samples out of order within it), over two chunks, with Exp 4's entropies
    filled after the frames were built (the CUDA path, forced here)."""
    from drope_lens.engine import measure as engine

    path, ref, model = pair["nope"]
    texts = _texts(7)
    texts[1] = Text("short1", "synthetic", " ".join(texts[1].text.split()[:8]))
    texts[4] = Text("short4", "synthetic", " ".join(texts[4].text.split()[:10]))
    parts = [sinks.measurement(sinks.SinksConfig()), attention_structure.measurement(attention_structure.AttentionStructureConfig())]
    monkeypatch.setattr(sinks, "_defer", lambda x, m, n_layers: True)
    lengths = []
    original = engine._forward
    monkeypatch.setattr(engine, "_forward", lambda *a: lengths.append((a[2], a[3].shape[1])) or original(*a))
    unsaved = measure(model, texts, parts, max_tokens=MAX_TOKENS, batch_size=5, show_progress=False)
    first_chunk = [i for samples, _ in lengths[:3] for i in samples]
    assert len(lengths) == 4 and first_chunk != sorted(first_chunk)  # 3 forwards in chunk 0, out of order
    saved = measure(model, texts, parts, max_tokens=MAX_TOKENS, batch_size=5, store=RunStore(tmp_path, "s", "r"),
                    show_progress=False)
    for name in saved:
        pd.testing.assert_frame_equal(unsaved[name], saved[name], check_exact=True)
        assert unsaved[name]["sample"].is_monotonic_increasing
    assert not unsaved["sinks"]["repr_entropy"].isna().any()


def test_user_measurement_with_interleaved_rows_and_nested_captures(pair):
    """A user-defined Measurement (the public shape: name, hooks, rows) whose rows interleave samples,
    put ``sample`` last and carry their own index: each text gets its own rows in their order behind
    the head columns, and the captures (nested dict and list) arrive as host tensors equal to
    run_with_cache's activations."""
    from drope_lens.engine.measure import Batch, Measurement

    path, ref, model = pair["rope"]
    texts = _texts(5)

    def hooks(model, captured):
        def fn(x, hook):
            captured.setdefault("nested", {})["first"] = [x[:, 0, 0], x[:, 1, :2]]
            return None
        return [("blocks.0.hook_resid_post", fn)]

    def rows(model, batch: Batch) -> pd.DataFrame:
        first, second = batch.captured["nested"]["first"]
        assert first.device.type == "cpu" and second.shape == (len(batch.samples), 2)
        out = []
        for k in range(2):  # samples interleaved: (s0, k0), (s1, k0), ..., (s0, k1), ...
            for b, sample in enumerate(batch.samples):
                out.append({"value": float(first[b]) if k == 0 else float(second[b, 1]), "k": k, "sample": sample})
        return pd.DataFrame(out, index=np.arange(len(out))[::-1] + 100)

    got = measure(model, texts, [Measurement("custom", hooks, rows)], max_tokens=MAX_TOKENS, batch_size=2,
                  show_progress=False)["custom"]
    assert list(got.columns) == ["model", "variant", "sample", "text", "register", "n_tokens", "value", "k"]
    assert list(got.index) == list(range(len(texts) * 2))
    tokens = torch.stack(tokenize(model, texts, MAX_TOKENS))
    _, cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_resid_post")
    resid = cache["blocks.0.hook_resid_post"]
    for i, text in enumerate(texts):
        part = got.iloc[2 * i: 2 * i + 2]
        assert part["sample"].tolist() == [i, i] and part["k"].tolist() == [0, 1]
        assert part["text"].tolist() == [text.name] * 2 and part["register"].tolist() == [text.register] * 2
        assert part["n_tokens"].tolist() == [MAX_TOKENS] * 2 and part["variant"].tolist() == ["rope"] * 2
        np.testing.assert_allclose(part["value"].to_numpy(), [resid[i, 0, 0], resid[i, 1, 1]], rtol=1e-6, atol=1e-6)


def test_bootstrap_ci_covers_the_mean_and_needs_two_values():
    """The CI is the 2.5/97.5% quantiles of 2,000 resampled means (float64 by hand, same draws), and
    on normal data it covers the true mean about 95% of the time (400 simulated data sets of 30:
    a binomial band [0.91, 0.98]). Planted bugs this catches: quantiles of the resampled values
    instead of their means (far too wide: ~100% coverage); a 90% level; resamples of n - 1."""
    values = np.array([1.0, 2.0, 3.0, 4.0, 10.0, np.nan])
    low, high = bootstrap_ci(values)
    finite = values[np.isfinite(values)]  # NaN (a text without the quantity) is left out
    draws = np.random.default_rng(0).integers(0, finite.size, size=(2000, finite.size))
    assert [low, high] == pytest.approx(np.quantile(finite[draws].mean(axis=1), [0.025, 0.975]).tolist(), abs=1e-12)
    rng = np.random.default_rng(123)
    covered = [(lambda lo_hi: lo_hi[0] <= 5.0 <= lo_hi[1])(bootstrap_ci(rng.normal(5.0, 2.0, size=30), seed=k))
               for k in range(400)]
    assert 0.91 <= np.mean(covered) <= 0.98
    assert all(np.isnan(bootstrap_ci([1.0])))
    assert all(np.isnan(bootstrap_ci([1.0, np.nan])))


def test_bad_inputs_are_named(checkpoint_factory):
    with pytest.raises(ValueError, match="tau=0"):
        sinks.SinksConfig(tau=0)
    with pytest.raises(ValueError, match="tau=1.5"):
        sinks.run(None, ["x"], tau=1.5)
    with pytest.raises(ValueError, match="window=0"):
        attention_structure.AttentionStructureConfig(window=0)
    with pytest.raises(ValueError, match="sink_tau=-0.1"):
        attention_structure.AttentionStructureConfig(sink_tau=-0.1)
    path, _ = checkpoint_factory(prepend_bos=False)
    model = dl.load_model(path)
    for run in (sinks.run, bos_write.run, attention_structure.run, layer_balance.run):
        with pytest.raises(TextInputError, match="'short'.*1 token"):
            run(model, [Text("fine", "x", "the city of paris"), Text("short", "x", "paris")], show_progress=False)


def test_cli_commands_write_results(pair, tmp_path, capsys):
    from drope_lens.cli import main

    folder = tmp_path / "texts"
    folder.mkdir()
    for text in _texts(3):
        (folder / f"{text.name}.txt").write_text(text.text)
    common = ["--rope", str(pair["rope"][0]), "--drope", str(pair["nope"][0]), "--texts", str(folder),
              "--max-tokens", str(MAX_TOKENS), "--out", str(tmp_path / "results"), "--device", "cpu"]
    expected = {"sinks": "Sink rate per layer", "bos-write": "max_write_layer",
                "attention-structure": "Head classes: sink if", "layer-balance": "Attention fraction per layer"}
    for command, marker in expected.items():
        assert main(["run", command, *common]) == 0
        out = capsys.readouterr().out
        assert marker in out and "drope_minus_rope" in out, out
    for experiment in ("sinks", "bos_write", "attention_structure", "layer_balance"):
        (run_dir,) = (tmp_path / "results" / experiment).iterdir()
        meta = json.loads((run_dir / "meta.json").read_text())
        assert [m["variant"] for m in meta["models"]] == ["rope", "drope"] and len(meta["texts"]) == 3
        assert (run_dir / "data.parquet").is_file()


def _hooks_on(model) -> int:
    """Forward hooks on ``model``'s hook points: PyTorch's own (what a forward calls) and
    TransformerLens's books."""
    return sum(len(hp._forward_hooks) + len(hp.fwd_hooks) for hp in model.hook_dict.values())


def test_errors_leave_no_hooks_behind(pair, monkeypatch):
    """An error in the tokenizer, or in a forward's hooks, reaches the caller with no hooks left on
    the model (it measures normally afterwards)."""
    import dataclasses

    from drope_lens.engine import measure as engine

    path, ref, model = pair["nope"]
    parts = [layer_balance.measurement(layer_balance.LayerBalanceConfig())]
    original = engine.tokenize

    def failing(model, texts, *args, **kwargs):
        raise TextInputError(f"text {texts[-1].name!r} cannot be tokenised")

    monkeypatch.setattr(engine, "tokenize", failing)
    with pytest.raises(TextInputError, match="'tiny' cannot be tokenised"):
        measure(model, _texts(2) + [Text("tiny", "synthetic", "a b c")], parts, max_tokens=MAX_TOKENS,
                show_progress=False)
    assert _hooks_on(model) == 0
    monkeypatch.setattr(engine, "tokenize", original)

    def failing_hooks(model, captured):
        def fail(x, hook):
            raise RuntimeError(f"hook at {hook.name} failed")
        return [("blocks.0.hook_resid_post", fail)]

    broken = [*parts, dataclasses.replace(parts[0], name="broken", hooks=failing_hooks)]
    with pytest.raises(RuntimeError, match="hook at blocks.0.hook_resid_post failed"):
        measure(model, _texts(2), broken, max_tokens=MAX_TOKENS, show_progress=False)
    assert _hooks_on(model) == 0
    frames = measure(model, _texts(2), parts, max_tokens=MAX_TOKENS, show_progress=False)
    assert len(frames[layer_balance.EXPERIMENT]) > 0


@pytest.mark.parametrize("direct", [True, False])
def test_register_hooks_keeps_the_transformer_lens_contract(pair, monkeypatch, direct):
    """``engine.measure.register_hooks`` (the measurement forward's hooks): a hook gets the activation
    and its hook point, what it returns replaces the activation (the logits equal those under
    ``model.hooks``), names may be predicates, removal leaves no hook, and an unknown name raises a
    KeyError naming it before anything is registered. Also through ``model.hooks`` (``direct=False``)."""
    from drope_lens.engine import measure as engine

    monkeypatch.setattr(engine, "DIRECT_HOOKS", direct)
    _, _, model = pair["nope"]
    tokens = torch.tensor([[1, 5, 9, 13, 17, 21]])
    seen = []

    def double(x, hook):
        seen.append(hook.name)
        return 2 * x

    hooks = [("blocks.0.hook_resid_post", double), (lambda name: name.endswith("ln_final.hook_scale"),
                                                     lambda x, hook: seen.append(hook.name))]
    with torch.inference_mode():
        with model.hooks(fwd_hooks=hooks):
            expected = model(tokens)
        seen.clear()
        handles = engine.register_hooks(model, hooks)
        assert _hooks_on(model) == (2 if direct else 4)  # model.hooks: in both books
        got = model(tokens)
        for handle in handles:
            handle.remove()
        assert seen == ["blocks.0.hook_resid_post", "ln_final.hook_scale"]
        assert _hooks_on(model) == 0
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        assert not torch.equal(got, model(tokens))  # the hook's return value was used
        with pytest.raises(KeyError, match="no hook point 'blocks.0.hook_nothing'"):
            engine.register_hooks(model, [("blocks.0.hook_resid_post", double), ("blocks.0.hook_nothing", double)])
        assert _hooks_on(model) == 0
