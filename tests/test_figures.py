"""Figures carry the saved results' values (not re-measured), one colour per variant, titled axes,
exact hover text; HTML export works offline; bad inputs give named errors. Also the attention
views: real hook_pattern attention, checked against Hugging Face's eager attention."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

import synthetic_results as S
from drope_lens.outputs import figures as F
from drope_lens.experiments.disruption import summary
from drope_lens.experiments.massive_values import per_layer


def _traces(fig: go.Figure, name: str) -> list:
    return [t for t in fig.data if t.name == name]


def _check_style(fig: go.Figure) -> None:
    """RoPE/DroPE colours, hover text with exact values, a title on every axis that holds a trace."""
    for trace in fig.data:
        for variant, label in F.LABELS.items():
            if trace.type != "heatmap" and (trace.name == label or str(trace.name).startswith(label + " ")):
                colours = {trace.marker.color, trace.marker.line.color}
                if trace.type == "scatter":
                    colours.add(trace.line.color)
                assert F.COLORS[variant] in colours, (trace.name, colours)
                assert not colours & (set(F.COLORS.values()) - {F.COLORS[variant]}), (trace.name, colours)
        if trace.type != "heatmap":
            assert trace.hovertemplate and "%{y" in trace.hovertemplate, trace.name
    used = {(t.xaxis or "x", t.yaxis or "y") for t in fig.data}
    for xa, ya in used:
        for axis in (fig.layout[xa.replace("x", "xaxis", 1)], fig.layout[ya.replace("y", "yaxis", 1)]):
            assert axis.title.text, f"untitled axis in {fig.layout.title.text}"


def test_massive_counts_draw_the_saved_means(toy_results):
    run = toy_results / "massive_values" / "massive_values-toy"
    df = pd.read_parquet(run / "data.parquet")
    fig = F.massive_counts(run)
    expected = per_layer(df)
    for variant, label in (("rope", "RoPE"), ("drope", "DroPE")):
        traces = _traces(fig, label)
        assert len(traces) == 3  # Q, K, V panels
        for trace, tensor in zip(traces, ("q", "k", "v")):
            rows = expected[(expected.variant == variant) & (expected.tensor == tensor)].sort_values("layer")
            np.testing.assert_allclose(trace.y, rows["mean"].to_numpy())
            per_text = df[(df.variant == variant) & (df.tensor == tensor)].pivot_table(
                index="layer", columns="sample", values="count", aggfunc="sum")
            low = np.asarray(trace.y) - np.asarray(trace.error_y.arrayminus)
            high = np.asarray(trace.y) + np.asarray(trace.error_y.array)
            # a bootstrap interval of the mean stays within the observed per-text counts
            assert (low >= per_text.min(axis=1).to_numpy() - 1e-9).all() and (low <= np.asarray(trace.y) + 1e-9).all()
            assert (high <= per_text.max(axis=1).to_numpy() + 1e-9).all() and (high >= np.asarray(trace.y) - 1e-9).all()
            assert trace.line.color == F.COLORS[variant]
    _check_style(fig)


def test_massive_dims_grid_counts_each_massive_entry(toy_results):
    run = toy_results / "massive_values" / "massive_values-toy"
    df = pd.read_parquet(run / "data.parquet")
    fig = F.massive_dims(run, d_head=32, n_heads=8)
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == 4  # (RoPE, DroPE) x (Q, K)
    for trace, (variant, tensor) in zip(heat, [(v, t) for v in ("rope", "drope") for t in ("q", "k")]):
        part = df[(df.variant == variant) & (df.tensor == tensor)]
        z = np.asarray(trace.z)
        assert z.shape == (8, 32)
        assert z.sum() * part["sample"].nunique() == pytest.approx(part["count"].sum())
        for heads, dims in zip(part["heads"], part["dims"]):
            for h, d in zip(heads, dims):
                assert z[h, d] > 0
        assert "rotary frequency index" in trace.hovertemplate
    _check_style(fig)


def test_disruption_bars_are_the_summary(toy_results):
    run = toy_results / "disruption" / "disruption-toy"
    df = pd.read_parquet(run / "data.parquet")
    fig = F.disruption(run, n_bootstrap=200)
    table = summary(df).set_index("variant")
    for variant, label in (("rope", "RoPE"), ("drope", "DroPE")):
        bars = [t for t in _traces(fig, label) if t.type == "bar"]
        s = table.loc[variant]
        np.testing.assert_allclose(bars[0].y, [s.baseline_ppl, s.massive_ppl, s.random_ppl])
        np.testing.assert_allclose(bars[1].y, [s.massive_pct, s.m_minus_r])
        seeds = [t for t in fig.data if t.name == f"{label} random seeds"][0]
        per_seed = df[(df.variant == variant) & (df.condition == "random")].groupby("seed")["ppl"].mean()
        np.testing.assert_allclose(seeds.y, per_seed.to_numpy())
        lo, hi = bars[0].error_y.arrayminus, bars[0].error_y.array
        assert all(x >= 0 for x in lo) and all(x >= 0 for x in hi)
    assert fig.layout.yaxis.type == "log"
    _check_style(fig)


def test_knowledge_accuracy_and_wilson_interval():
    df = S.knowledge()
    fig = F.knowledge(df)
    trace = [t for t in fig.data if t.name == "RoPE baseline"][0]  # first panel: logit scoring
    part = df[(df.variant == "rope") & (df.condition == "baseline") & df["correct_logit"].notna()]
    expected = part.assign(correct_logit=part["correct_logit"].astype(float)).groupby("task", sort=False)["correct_logit"].mean() * 100
    np.testing.assert_allclose(trace.y, expected.to_numpy())
    assert list(trace.x) == list(expected.index)
    low, high = F.wilson(np.array([9.0]), np.array([10.0]))
    assert low[0] == pytest.approx(0.5958, abs=1e-3) and high[0] == pytest.approx(0.9821, abs=1e-3)
    _check_style(fig)


@pytest.mark.parametrize("name", ["bos_ablation", "layer1_ablation"])
def test_ablation_bars_are_mean_perplexities(name):
    df = S.BUILDERS[name]()
    fig = F.ablation(df, name, name, n_bootstrap=100)
    for variant, label in (("rope", "RoPE"), ("drope", "DroPE")):
        trace = _traces(fig, label)[0]
        means = df[df.variant == variant].groupby("condition", sort=False)["ppl"].mean()
        np.testing.assert_allclose(trace.y, means.to_numpy())
    _check_style(fig)


def test_per_layer_figures_carry_sample_means():
    df = S.layer_balance()
    fig = F.layer_balance(df)
    trace = _traces(fig, "DroPE")[0]  # first panel: attention share in %
    per = df[df.variant == "drope"].groupby("layer")["attn_fraction"]
    np.testing.assert_allclose(trace.y, 100 * per.mean().to_numpy())
    np.testing.assert_allclose(trace.error_y.array, 100 * per.std().to_numpy())
    _check_style(fig)

    sinks = S.sinks()
    fig = F.sinks(sinks)
    heads = sinks[sinks["sink_score"].notna()]
    rope_heads = heads[heads.variant == "rope"]
    rope_rate = ((rope_heads["sink_score"] >= 0.3) * 100.0).groupby([rope_heads["sample"], rope_heads["layer"]]).mean()
    np.testing.assert_allclose(_traces(fig, "RoPE")[0].y, rope_rate.groupby(level="layer").mean().to_numpy())
    bos = sinks[sinks["bos_norm"].notna() & (sinks.variant == "rope")].groupby("layer")["bos_norm"].mean()
    np.testing.assert_allclose(_traces(fig, "RoPE")[1].y, bos.to_numpy())
    assert len(bos) == 4
    _check_style(fig)

    for builder, function in ((S.attention_structure, F.attention_structure), (S.bos_write, F.bos_write)):
        frame = builder()
        fig = function(frame)
        first = frame.columns[5] if function is F.attention_structure else "v_norm_bos"
        expected = frame[frame.variant == "rope"].groupby(["sample", "layer"])[first].mean().groupby(level="layer").mean()
        np.testing.assert_allclose(_traces(fig, "RoPE")[0].y, expected.to_numpy())
        _check_style(fig)


def test_head_classes_and_context_length():
    df = S.attention_structure()
    classes = F.head_classes(df)
    rope = df[df.variant == "rope"]
    sink = (rope["sink_score"] >= 0.3).mean() * 100
    assert classes.set_index(["variant", "head_class"]).loc[("rope", "sink"), "percent"] == pytest.approx(sink)

    ctx = S.context_length()
    fig = F.context_length(ctx)
    trace = [t for t in fig.data if t.name == "DroPE (ruler)"][0]
    expected = ctx[(ctx.variant == "drope") & (ctx.format == "ruler")].groupby("length")["correct"].mean() * 100
    np.testing.assert_allclose(trace.y, expected.to_numpy())
    assert trace.line.dash == "dash"
    _check_style(fig)
    errors = F.context_errors(ctx)
    total = sum(np.asarray(t.y).sum() for t in errors.data if t.xaxis in (None, "x"))
    assert total == pytest.approx(100 * ctx["length"].nunique())  # each length's categories add to 100%


def test_save_writes_offline_html(tmp_path, monkeypatch):
    fig = F.layer_balance(S.layer_balance())
    import builtins

    real_import = builtins.__import__

    def no_kaleido(name, *args, **kwargs):
        if name == "kaleido":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_kaleido)
    written = F.save(fig, tmp_path / "balance")
    assert written == [tmp_path / "balance.html"]
    text = written[0].read_text()
    external = re.findall(r"<script[^>]*\bsrc=", text)
    assert external == [] and len(text) > 1_000_000  # plotly.js is inlined, nothing is fetched
    with pytest.raises(ImportError, match="kaleido"):
        F.save(fig, tmp_path / "balance", png=True)


def test_named_errors(tmp_path):
    with pytest.raises(F.SchemaError, match=r"lack columns \['dims'\]"):
        F.massive_counts(pd.DataFrame({c: [1] for c in F.MASSIVE_COLUMNS if c != "dims"}))
    with pytest.raises(F.ResultsError, match="no such run directory"):
        F.massive_counts(tmp_path / "nope")
    (tmp_path / "run" / "parts").mkdir(parents=True)
    with pytest.raises(F.ResultsError, match="unfinished run"):
        F.disruption(tmp_path / "run")
    with pytest.raises(F.ResultsError, match="no rows"):
        F.layer_balance(S.layer_balance().iloc[0:0])
    with pytest.raises(F.ResultsError, match="empty list"):
        F.as_frame([])


# ------------------------------------------------------------------------------------------
# Attention views
# ------------------------------------------------------------------------------------------
def test_attention_pattern_is_the_real_attention(checkpoint_factory):
    """Our hook_pattern equals HF's eager attention probabilities, for RoPE (rotary applied) and DroPE."""
    import drope_lens as dl
    from drope_lens.outputs.views import attention_pattern

    for attention_type in (None, "nope"):
        path, ref = checkpoint_factory(attention_type=attention_type)
        model = dl.load_model(path)
        tokens = torch.tensor([[1, 5, 9, 2, 7, 3, 8, 4, 6, 10]])
        with torch.no_grad():
            expected = ref(tokens, output_attentions=True).attentions
        for layer in range(model.cfg.n_layers):
            ours = attention_pattern(model, tokens, layer)
            assert ours.dtype == torch.float32
            torch.testing.assert_close(ours, expected[layer][0].float(), atol=1e-5, rtol=1e-4)


def test_attention_view_policy_and_offline_html(tmp_path):
    import drope_lens as dl
    from drope_lens.measurement.texts import toy_texts
    from drope_lens.outputs.views import attention_heads

    rope, drope = dl.load_pair("toy")
    text = toy_texts(1)[0].text
    with pytest.raises(ValueError, match="n_ctx=256"):
        attention_heads(rope, drope, text, layer=1)
    short = " ".join(text.split()[:40])
    view = attention_heads(rope, drope, short, layer=1, max_tokens=20)
    assert view.window == (0, 20) and len(view.tokens) == 20 and "tokens 0..19 of" in view.note
    view = attention_heads(rope, drope, short, layer=1, window=(5, 25), heads=[0, 3])
    assert set(view.patterns) == {"rope", "drope"}
    assert view.patterns["rope"].shape[1:] == (20, 20)
    assert 0 < view.outside_mass["drope"] <= 1 and "before the window" in view.note
    with pytest.raises(ValueError, match="more than max_tokens"):
        attention_heads(rope, drope, short, layer=1, window=(0, 30), max_tokens=20)
    with pytest.raises(ValueError, match="layers 0..3"):
        attention_heads(rope, drope, short, layer=7)
    page = view.save(tmp_path / "attn.html").read_text()
    assert "var CircuitsVis=" in page and "unpkg.com" not in page
    assert re.findall(r"<script[^>]*\bsrc=", page) == []
    assert page.count("CircuitsVis.render(") == 2
    props = json.loads(page.split("CircuitsVis.AttentionHeads, ", 1)[1].split(");", 1)[0])
    assert props["attentionHeadNames"] == ["L1H0", "L1H3"] and props["tokens"] == view.tokens
    np.testing.assert_allclose(props["attention"], np.round(view.patterns["rope"][[0, 3]], 5), atol=1e-6)
    assert Path(tmp_path / "attn.html").stat().st_size < 3_000_000


def test_sinks_read_per_layer_values_in_either_layout():
    """Per-layer values on their own rows (NaN on per-head rows) or repeated on every head row: same figure."""
    separate = S.sinks()
    per_layer = separate[separate["head"].isna()].drop(columns=["head", "sink_score"])
    heads = separate[separate["head"].notna()][["model", "variant", "sample", "layer", "head", "sink_score"]]
    repeated = heads.merge(per_layer, on=["model", "variant", "sample", "layer"])
    a, b = F.sinks(separate), F.sinks(repeated)
    assert len(a.data) == len(b.data) == 10  # 4 per-layer panels + the spike-layer categories, 2 variants
    for x, y in zip(a.data, b.data):
        np.testing.assert_allclose(x.y, y.y)


def test_layers_are_shown_as_categories_never_averaged():
    """Issue 18.3: the spike layer and the max-write layer are categories. The figures show the share
    of texts per layer (and "none" = no spike), counted here by hand; no trace holds a mean of layer
    indices. Planted bugs this catches: a mean layer (e.g. 1.33) or "none" plotted as -1."""
    df = S.sinks()
    ratios = df[df["bos_ratio"].notna()].copy()
    low = (ratios.variant == "drope") & (ratios["sample"] == 0)
    df.loc[ratios.index[low], "bos_ratio"] = 1.5  # DroPE text 0: no layer above 2 -> no spike
    fig = F.sinks(df)
    bars = {t.name: t for t in fig.data if t.type == "bar"}
    assert set(bars) == {"RoPE", "DroPE"}
    per_text = df[df["bos_ratio"].notna()].pivot_table(index=["variant", "sample"], columns="layer", values="bos_ratio")
    for variant, name in (("rope", "RoPE"), ("drope", "DroPE")):
        texts = per_text.loc[variant]
        want = {}
        for _, row in texts.iterrows():
            above = [layer for layer, r in row.items() if r > 2]
            for key in (f"argmax: L{int(row.idxmax())}", f"first_above: L{above[0]}" if above else "first_above: none"):
                want[key] = want.get(key, 0) + 100 / len(texts)
        got = dict(zip(bars[name].x, bars[name].y))
        assert {k: v for k, v in got.items() if not k.startswith("jump")} == pytest.approx(want), name
        assert all(isinstance(x, str) for x in bars[name].x) and not any("-1" in x for x in bars[name].x)
    assert "first_above: none" in bars["DroPE"].x
    frame = S.bos_write()
    fig = F.bos_write(frame)
    (bar,) = [t for t in fig.data if t.type == "bar" and t.name == "RoPE"]
    best = frame[frame.variant == "rope"].groupby(["sample", "layer"])["write"].mean().unstack().idxmax(axis=1)
    want = {f"max write: L{layer}": 100 * count / len(best) for layer, count in best.value_counts().items()}
    assert dict(zip(bar.x, bar.y)) == pytest.approx(want)
