"""drope_lens.measurement.analysis: the spike layer under each named rule, on the study's own numbers and on a
model against Hugging Face hidden states; layers summarised as categories, never means."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import drope_lens as dl
from drope_lens.measurement import analysis
from drope_lens.measurement.analysis import spike_layer

SHARED = Path(__file__).resolve().parents[2] / "shared"
PHASE_METRICS = SHARED / "reference" / "seed-study" / "rope_vs_drope_phase_metrics.json"

# The study's own per-layer BOS numbers for Llama-2-7B, copied (rounded) from
# ../shared/reference/seed-study/rope_vs_drope_phase_metrics.json: <model>.baseline.bos_ratio.mean
# (||resid_post[0]|| / mean_{t>=1} ||resid_post[t]||) and <model>.baseline.bos_norm.mean
# (||resid_post[0]||). The study reported spike layer 1 (RoPE) and 2 (DroPE): the argmax of the ratio.
STUDY_RATIO = {
    "RoPE": [2.4503, 107.8676, 98.8068, 88.1782, 68.0141, 61.916, 52.002, 45.3236, 38.1047, 33.8703, 33.367,
             28.9526, 28.5623, 25.5559, 24.7408, 23.6171, 22.9154, 21.2696, 13.9862, 13.1102, 12.5434, 11.9766,
             11.2957, 10.9993, 10.6355, 10.5352, 10.2709, 9.9263, 9.407, 8.878, 2.694, 1.168],
    "DroPE": [0.5048, 44.794, 53.0679, 49.676, 45.132, 38.9496, 34.8822, 30.65, 27.3857, 24.6026, 22.1078, 20.7777,
              19.0331, 17.006, 15.449, 13.4891, 11.6352, 10.5753, 9.4085, 8.4671, 7.5577, 6.8801, 6.2495, 5.8237,
              5.3439, 5.0623, 4.7035, 4.4342, 4.1209, 3.8126, 1.5616, 1.0705],
}
STUDY_NORM = {
    "RoPE": [5.705, 967.283, 971.992, 971.988, 979.249, 979.223, 979.207, 979.162, 979.143, 979.07, 979.028,
             978.916, 979.216, 979.51, 979.413, 979.274, 981.776, 981.654, 981.451, 981.016, 980.967, 981.317, 981.71,
             982.096, 982.065, 981.605, 981.609, 980.883, 979.906, 973.625, 384.702, 107.377],
    "DroPE": [44.228, 499.111, 504.317, 504.362, 510.201, 510.175, 509.943, 510.11, 510.298, 510.519, 510.77,
              510.907, 511.112, 511.535, 511.764, 511.916, 514.866, 514.941, 515.358, 515.356, 515.363, 515.756,
              517.407, 518.021, 518.426, 518.362, 518.867, 518.498, 518.792, 515.906, 230.747, 92.836],
}
STUDY_SPIKE = {"RoPE": 1, "DroPE": 2}  # the layers the study reported and ablated


def _study_norms(model: str) -> list[float]:
    # the study did not publish ||resid_pre_0[0]|| (the embedding); 0 is a lower bound for it
    return [0.0, *STUDY_NORM[model]]


@pytest.mark.parametrize("model", ["RoPE", "DroPE"])
def test_the_default_rule_gives_the_studys_layers(model):
    """Planted bug this catches: the default rule being 'first ratio > 2' (METHODS.md's old wording),
    which gives RoPE 0 / DroPE 1 on these numbers instead of the study's 1 / 2."""
    assert spike_layer(STUDY_RATIO[model]) == STUDY_SPIKE[model]
    assert spike_layer(STUDY_RATIO[model], "argmax") == STUDY_SPIKE[model]
    # the other rules, as METHODS.md describes them: first above 2 -> 0 / 1; the jump of the BOS norm
    # (where the spike is written) is at layer 1 for both
    assert spike_layer(STUDY_RATIO[model], "first_above") == {"RoPE": 0, "DroPE": 1}[model]
    assert spike_layer(STUDY_RATIO[model], "jump", resid_norms=_study_norms(model)) == 1


def test_the_studys_file_gives_its_layers():
    """The same on the study's file itself (skipped without ../shared): the default rule reproduces
    the spike layer the file records (``bos_spike_layer``)."""
    if not PHASE_METRICS.is_file():
        pytest.skip(f"{PHASE_METRICS} is not on this machine")
    metrics = json.loads(PHASE_METRICS.read_text())
    for model in ("RoPE", "DroPE"):
        ratios = metrics[model]["baseline"]["bos_ratio"]["mean"]
        np.testing.assert_allclose(ratios, STUDY_RATIO[model], atol=1e-4)  # the fixture is the file's numbers
        assert spike_layer(ratios) == metrics[model]["bos_spike_layer"] == STUDY_SPIKE[model]


def test_no_spike_is_none_and_rules_are_named():
    """Planted bugs: 'no spike' coded as -1 or as a fallback layer; a jump that only decreases the
    norm counted as a spike."""
    assert spike_layer([0.5, 1.9, 1.2], "first_above") is None
    assert spike_layer([0.5, 1.9, 1.2], "first_above", threshold=1.5) == 1
    assert spike_layer([1.0, 2.0], "jump", resid_norms=[5.0, 4.0, 3.0]) is None  # norms only fall
    assert spike_layer([float("nan")] * 3) is None
    with pytest.raises(ValueError, match=r"spike rule 'first' is unknown; allowed values are \['argmax', "):
        spike_layer([1.0], "first")
    with pytest.raises(ValueError, match="needs resid_norms"):
        spike_layer([1.0, 2.0], "jump")
    with pytest.raises(ValueError, match=r"need n_layers \+ 1 = 3 BOS norms"):
        spike_layer([1.0, 2.0], "jump", resid_norms=[1.0, 2.0])


def test_layers_are_categories_not_means():
    """Planted bug: averaging layer indices (with none as -1), e.g. [1, 1, 2, none] -> 0.75."""
    out = analysis.layer_distribution([1, 1, 2, None])
    assert out == {"mode": "1", "mode_share": 0.5, "distribution": "1: 2/4, 2: 1/4, none: 1/4", "n_texts": 4}
    assert analysis.layer_distribution([None, None, 3])["mode"] == "none"
    assert analysis.layer_distribution([2, 1])["mode"] == "1"  # ties: the lower layer
    table = pd.DataFrame({"model": "m", "variant": ["rope"] * 3, "layer_a": pd.array([0, 0, pd.NA], dtype="Int64")})
    summary = analysis.layer_summary(table, ["layer_a"])
    assert summary.iloc[0]["distribution"] == "0: 2/3, none: 1/3"
    assert not any(np.issubdtype(type(v), np.floating) for v in summary.iloc[0][["mode", "distribution"]])


def _hf_profile(ref, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """float64 BOS ratios (n_layers) and norms (embedding, then each layer) from HF hidden states."""
    with torch.no_grad():
        hidden = ref(torch.tensor([ids]), output_hidden_states=True).hidden_states
    # hidden[0] = embeddings, hidden[l + 1] = output of layer l (the last one after the final norm)
    with torch.no_grad():
        post = []
        handles = [layer.register_forward_hook(lambda m, i, o: post.append(o[0] if isinstance(o, tuple) else o))
                   for layer in ref.model.layers]
        ref(torch.tensor([ids]))
        for h in handles:
            h.remove()
    post = [p[0].double() for p in post]
    ratios = np.array([float(p[0].norm() / p[1:].norm(dim=-1).mean()) for p in post])
    norms = np.array([float(hidden[0][0, 0].double().norm())] + [float(p[0].norm()) for p in post])
    return ratios, norms


def _by_hand(ratios: np.ndarray, norms: np.ndarray, threshold: float = 2.0) -> dict:
    above = [layer for layer, r in enumerate(ratios) if r > threshold]
    jumps = norms[1:] - norms[:-1]
    return {"argmax": int(np.argmax(ratios)), "first_above": above[0] if above else None,
            "jump": int(np.argmax(jumps)) if jumps.max() > 0 else None}


def test_sinks_spike_layers_match_hugging_face(checkpoint_factory):
    """Per text, sinks.spike_layers under every rule equals the rule applied by hand to float64 HF
    hidden states; the model profile equals the ablation's choice. Planted bugs: the jump rule
    without the embedding's norm (bos_norm_pre of layer 0 taken as 0), or first_above coding
    'none' as -1."""
    from drope_lens.experiments import sinks
    from drope_lens.measurement.analysis import prepare_conditions

    path, ref = checkpoint_factory(num_hidden_layers=3)
    model = dl.load_model(path)
    texts = ["the city of paris is in france . rome is in italy and the sky is blue",
             "what is the secret passkey ? 1 2 3 4 5 remember this number"]
    df = sinks.run(model, texts, max_tokens=32, show_progress=False)
    threshold = 1.0  # this random model's BOS ratios are ~1 (none above 2): 1 makes first_above find one
    profiles = []
    for sample, text in enumerate(texts):
        ratios, norms = _hf_profile(ref, model.tokenizer(text)["input_ids"][:32])
        profiles.append((ratios, norms))
        rows = sinks.layer_rows(df)
        rows = rows[rows["sample"] == sample].sort_values("layer")
        np.testing.assert_allclose(rows["bos_norm_pre"], norms[:-1], rtol=1e-5)  # what enters each block
        np.testing.assert_allclose(rows["bos_norm"], norms[1:], rtol=1e-5)
        np.testing.assert_allclose(rows["bos_ratio"], ratios, rtol=1e-5)
        for cut in (2.0, threshold):
            spikes = sinks.spike_layers(df, spike_ratio=cut).set_index("sample")
            for rule, layer in _by_hand(ratios, norms, cut).items():
                got = spikes.loc[sample, f"spike_layer_{rule}"]
                assert (pd.isna(got) and layer is None) or got == layer, (sample, rule, cut)
        # no spike: nobody's ratio is above 1e6 -> <NA>, never a number
        assert pd.isna(sinks.spike_layers(df, spike_ratio=1e6).set_index("sample").loc[sample,
                                                                                         "spike_layer_first_above"])
    mean_ratios = np.mean([p[0] for p in profiles], axis=0)
    mean_norms = np.mean([p[1] for p in profiles], axis=0)
    expected = _by_hand(mean_ratios, mean_norms, threshold)
    profile = sinks.profile_spike_layers(df, spike_ratio=threshold).iloc[0]
    for rule in analysis.SPIKE_RULES:
        assert expected[rule] is not None, rule
        prepared = prepare_conditions(model, ["bos_mlp"], texts, max_tokens=32, spike_rule=rule,
                                      spike_threshold=threshold)
        assert prepared.spike_layer == expected[rule] == profile[f"spike_layer_{rule}"], rule
        assert prepared.conditions["bos_mlp"].hooks[0][0] == f"blocks.{expected[rule]}.hook_mlp_out"
        assert prepared.info("bos_mlp")["spike_rule"] == rule
    # "no spike" means the same in the ablation: it refuses instead of choosing another layer
    with pytest.raises(ValueError, match="under spike rule 'first_above' the model has none"):
        prepare_conditions(model, ["bos_mlp"], texts, max_tokens=32, spike_rule="first_above", spike_threshold=1e6)
    table = sinks.compare_layers(df)
    assert set(table.quantity) >= {f"spike_layer_{r}" for r in analysis.SPIKE_RULES}
    assert all(isinstance(cell, str) and "/" in cell for cell in table["rope"])
    # issue 18.3: no summary with means and CIs holds a layer (the old "spike_layer -0.3 [-0.6, -0.1]")
    assert not any("layer" in q for q in sinks.compare(df)["quantity"])


def test_bos_write_layers_are_categories(checkpoint_factory):
    """Exp 5: the max-write layer and the spike layers are summarised by mode and distribution only.
    Planted bug: max_write_layer averaged over texts in ``compare`` (the old "max_write_layer 2.8")."""
    from drope_lens.experiments import bos_write

    model = dl.load_model(checkpoint_factory(num_hidden_layers=3)[0])
    df = bos_write.run(model, ["the city of paris is in france . rome is in italy and the sky is blue",
                               "what is the secret passkey ? 1 2 3 4 5 remember this number"],
                       max_tokens=32, show_progress=False)
    assert not any("layer" in q for q in bos_write.compare(df)["quantity"])
    layers = bos_write.compare_layers(df).set_index("quantity")["rope"]
    best = df.groupby(["sample", "layer"])["write"].mean().unstack().idxmax(axis=1)
    counts = best.value_counts()
    mode = min(counts[counts == counts.max()].index)
    assert layers["max_write_layer"].startswith(f"{mode} (") and f"{mode}: {counts[mode]}/2" in layers["max_write_layer"]
    assert {f"spike_layer_{r}" for r in analysis.SPIKE_RULES} <= set(layers.index)


def test_cli_spike_rules_are_the_analysis_rules():
    """Planted bug: a rule added to drope_lens.measurement.analysis but not to the CLI's choices (options.py
    repeats them so that --help imports no numpy)."""
    from drope_lens.measurement import analysis
    from drope_lens.engine import options

    assert tuple(options.SPIKE_RULES) == tuple(analysis.SPIKE_RULES)
    assert options.DEFAULT_SPIKE_RULE == analysis.DEFAULT_SPIKE_RULE
