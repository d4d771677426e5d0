"""Exp 3-6 experiments: logit scoring against Hugging Face, columns, resume, spike layer, CLI."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import drope_lens as dl
from drope_lens.experiments import bos_ablation, knowledge, layer1_ablation
from drope_lens.measurement.analysis import prepare_conditions
from drope_lens.engine.tasks import TASK_COLUMNS, task_rows
from drope_lens.measurement.summaries import degradation
from drope_lens.engine.results import RunStore
from drope_lens.measurement.scoring import answer_token_ids
from drope_lens.measurement.tasks import TaskItem

PROMPTS = ["the city of paris is in france ? answer", "is rome in germany ? answer", "the sky is blue", "was it a movie"]
TEXTS = ["the city of paris is in france and rome is in italy . the sky is blue and the grass is green . " * 3,
         "what was the secret passkey ? remember this number 1 2 3 4 5 . the sun is yellow . " * 3,
         "a movie review was positive and the answer is yes . berlin is in germany . " * 3,
         "question : is the sun green ? answer no . what is the number ? 7 8 9 . " * 3]


def _items(choices=("yes", "no")):
    return [TaskItem("cities", i, p, choices[i % 2], choices) for i, p in enumerate(PROMPTS)]


def test_logit_scoring_matches_hugging_face(checkpoint_factory):
    """correct_logit and logit_margin equal an HF computation at each prompt's last position,
    at baseline and under l1_mlp (an HF hook zeroing layers[1].mlp's output), batched together."""
    path, ref = checkpoint_factory(attention_type="qk_norm_nope")
    model = dl.load_model(path)
    prepared = prepare_conditions(model, ["baseline", "l1_mlp"], TEXTS)
    df = task_rows(model, _items(), prepared.conditions, new_tokens=3, batch_size=8, show_progress=False)
    assert list(df.columns) == list(TASK_COLUMNS) and len(df) == 8
    yes, no = answer_token_ids(model.tokenizer, ("yes", "no"))
    for condition in ("baseline", "l1_mlp"):
        handle = (ref.model.layers[1].mlp.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
                  if condition == "l1_mlp" else None)
        try:
            for item in _items():
                ids = model.tokenizer(item.prompt)["input_ids"]
                with torch.no_grad():
                    logits = ref(torch.tensor([ids])).logits[0, -1]
                margin = float(logits[yes] - logits[no]) * (1 if item.label == "yes" else -1)
                row = df[(df.condition == condition) & (df["sample"] == item.sample)].iloc[0]
                assert row.logit_margin == pytest.approx(margin, abs=1e-4)
                assert row.correct_logit == float(margin > 0) == row.correct
        finally:
            if handle is not None:
                handle.remove()
    assert not np.allclose(df[df.condition == "baseline"].logit_margin, df[df.condition == "l1_mlp"].logit_margin)
    with pytest.raises(ValueError, match=r"prompt cities\[0\] has 10 tokens, more than max_tokens=5"):
        task_rows(model, _items(), prepared.conditions, max_tokens=5, show_progress=False)


def test_knowledge_run_columns_and_resume(checkpoint_factory, tmp_path, monkeypatch):
    """Rows against the task data read on its own, and a resume that never mixes configurations.

    Planted bugs this catches: (1) prompts or labels of other items or another seed (compared with
    :func:`drope_lens.measurement.tasks.load_task`); ``correct_logit`` not the sign of the margin; (2) parts
    found by task name only: the issue's run (baseline, n=4) then (baseline + topk_mean_q_k, n=3,
    seed 7) in one directory silently reused the first run's baseline rows (now refused before any
    forward, naming conditions, n and seed with both values); (3) a part of another configuration
    planted under a task's name read back on resume, or a finished task recomputed (the resumed
    rows must equal a store-less run exactly, with one task recomputed)."""
    from drope_lens.engine.results import RunMismatchError
    from drope_lens.measurement.tasks import load_task

    model = dl.load_model("bundled:toy/drope")  # its tokenizer has " Yes"/" Positive" (the tiny one has not)
    kwargs = dict(tasks=("cities", "reviews"), conditions=("baseline", "topk_mean_q_k"), n=4, new_tokens=4,
                  source="toy", show_progress=False)
    df = knowledge.run(model, **kwargs)  # no store: the reference of the resumed runs below
    assert len(df) == 2 * 4 * 2 and set(df.kind) == {"parametric", "contextual"}
    for (task, condition), rows in df.groupby(["task", "condition"]):
        items = load_task(task, 4, 42, "toy")
        rows = rows.sort_values("sample")
        assert list(rows["sample"]) == [i.sample for i in items]
        assert list(rows.prompt) == [i.prompt for i in items] and list(rows.label) == [i.label for i in items]
        assert (rows.correct_logit == (rows.logit_margin > 0).astype(float)).all()
    for column in ("correct_generation", "unparseable", "answer"):
        assert column in df.columns
    tiny = dl.load_model(checkpoint_factory(attention_type="nope")[0])
    with pytest.raises(ValueError, match=r"answers \['Yes', 'No'\] share their first token"):
        knowledge.run(tiny, tasks=("sports",), n=2, show_progress=False)  # " Yes" and " No" are both <unk> there

    calls = []
    original = knowledge.task_rows
    monkeypatch.setattr(knowledge, "task_rows", lambda model, items, *a, **k: calls.append(items[0].task)
                        or original(model, items, *a, **k))
    knowledge.run(model, store=RunStore(tmp_path, "knowledge", "fixed"), **(kwargs | {"conditions": ("baseline",)}))
    calls.clear()
    with pytest.raises(RunMismatchError) as info:
        knowledge.run(model, store=RunStore(tmp_path, "knowledge", "fixed"), **(kwargs | {"n": 3, "seed": 7}))
    message = str(info.value)
    assert calls == [] and 'config.conditions: ["baseline"] in the directory, ["baseline", "topk_mean_q_k"] asked' in message
    assert "config.n: 4 in the directory, 3 asked" in message and "config.seed: 42 in the directory, 7 asked" in message

    class Interrupted(Exception):
        pass

    save_part = RunStore.save_part

    def stop_after_first(self, unit, frame):
        save_part(self, unit, frame)
        raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(RunStore, "save_part", stop_after_first)
        with pytest.raises(Interrupted):
            knowledge.run(model, store=RunStore(tmp_path, "knowledge", "cut"), **kwargs)
    fixed_parts = RunStore(tmp_path, "knowledge", "fixed").parts
    (reviews,) = [p.name for p in fixed_parts.iterdir() if p.name.endswith("-reviews.parquet")]
    cut = RunStore(tmp_path, "knowledge", "cut")
    assert not (cut.parts / reviews).exists()
    shutil.copy(fixed_parts / reviews, cut.parts / reviews)  # baseline-only rows under the same task name
    calls.clear()
    again = knowledge.run(model, store=cut, **kwargs)
    assert calls == ["reviews"]  # cities read back; the foreign reviews part recomputed
    pd.testing.assert_frame_equal(again, df, check_exact=True)
    stats_frame = knowledge.statistics(df, n_bootstrap=200)
    assert set(stats_frame.condition) == {"topk_mean_q_k"} and {"ci_low", "ci_high", "mcnemar_p"} <= set(stats_frame)
    with pytest.raises(ValueError, match="condition 'zero_all' is unknown"):
        knowledge.run(model, conditions=("baseline", "zero_all"))
    with pytest.raises(ValueError, match="task 'maths' is unknown"):
        knowledge.run(model, tasks=("maths",))


def test_degradation_statistics():
    rows = []
    for sample in range(10):
        rows.append({"variant": "rope", "task": "cities", "kind": "parametric", "condition": "baseline",
                     "sample": sample, "correct": 1.0 if sample < 8 else 0.0})
        rows.append({"variant": "rope", "task": "cities", "kind": "parametric", "condition": "topk_mean_q_k",
                     "sample": sample, "correct": 1.0 if sample < 4 else 0.0})
    out = degradation(pd.DataFrame(rows), n_bootstrap=500).iloc[0]
    assert out.baseline_accuracy == 0.8 and out.condition_accuracy == 0.4
    assert out.degradation == pytest.approx(0.5)
    assert out.ci_low <= 0.5 <= out.ci_high
    assert out.mcnemar_p == pytest.approx(0.125)  # 4 discordant pairs, all one way: 2 * 0.5**4


def _hf_bos_profile(ref, ids):
    """float64 BOS ratio per layer and BOS norms (embedding, then each layer's output) from HF."""
    post = []
    handles = [layer.register_forward_hook(lambda m, i, o: post.append(o[0] if isinstance(o, tuple) else o))
               for layer in ref.model.layers]
    with torch.no_grad():
        embed = ref.model.embed_tokens(torch.tensor([ids]))[0, 0].double().norm()
        ref(torch.tensor([ids]))
    for h in handles:
        h.remove()
    post = [p[0].double() for p in post]
    ratios = np.array([float(p[0].norm() / p[1:].norm(dim=-1).mean()) for p in post])
    return ratios, np.array([float(embed)] + [float(p[0].norm()) for p in post])


def _hf_ppl(ref, ids, modules=()):
    """Perplexity (exp of the mean next-token NLL, nats) of one text in HF, with the outputs of
    ``modules`` zeroed at position 0."""
    def zero_first(module, inputs, output):
        out = output.clone()
        out[:, 0] = 0
        return out

    handles = [m.register_forward_hook(zero_first) for m in modules]
    try:
        with torch.no_grad():
            logits = ref(torch.tensor([ids])).logits[0].double()
    finally:
        for h in handles:
            h.remove()
    nll = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]))
    return float(torch.exp(nll))


def test_bos_ablation_uses_and_records_the_spike_layer(checkpoint_factory):
    """The spike layer (argmax of the BOS ratio, by hand from HF hidden states, float64) is the one
    ablated and recorded (rows: condition_layer, spike_rule); the perplexity ratios of bos_mlp and
    bos_v_all equal HF forwards with layers[L].mlp / every v_proj zeroed at position 0.
    Planted bugs this catches: the layer chosen by 'first ratio > 2' instead of the argmax; the
    MLP of layer L + 1 ablated; position 1 zeroed instead of the BOS token; a baseline ratio that
    is not measured."""
    path, ref = checkpoint_factory(num_hidden_layers=3)
    model = dl.load_model(path)
    reference, evaluation = TEXTS[:2], TEXTS[2:]
    df = bos_ablation.run(model, reference, evaluation, tasks=("passkey",), n=2, max_tokens=64, show_progress=False)
    profiles = [_hf_bos_profile(ref, model.tokenizer(t)["input_ids"][:64]) for t in reference]
    ratios = np.mean([p[0] for p in profiles], axis=0)
    norms = np.mean([p[1] for p in profiles], axis=0)
    expected = int(np.argmax(ratios))
    ppl = df[df.measure == "perplexity"]
    assert set(ppl.condition) == set(bos_ablation.DEFAULT_CONDITIONS)
    spiked = df[df.condition.isin(["bos_mlp", "bos_v_spike"])]
    assert set(spiked.condition_layer) == {expected} and set(spiked.spike_rule) == {"argmax"}
    assert set(df[df.condition == "bos_v_all"].spike_rule) == {""}
    ids = [model.tokenizer(t)["input_ids"][:64] for t in evaluation]
    base = np.mean([_hf_ppl(ref, i) for i in ids])
    mlp = np.mean([_hf_ppl(ref, i, [ref.model.layers[expected].mlp]) for i in ids])
    v_all = np.mean([_hf_ppl(ref, i, [layer.self_attn.v_proj for layer in ref.model.layers]) for i in ids])
    table = bos_ablation.perplexity_summary(df).set_index("condition")
    assert table.loc["baseline", "ppl"] == pytest.approx(base, rel=1e-4)
    assert table.loc["bos_mlp", "ppl_ratio"] == pytest.approx(mlp / base, rel=1e-4)
    assert table.loc["bos_v_all", "ppl_ratio"] == pytest.approx(v_all / base, rel=1e-4)
    assert abs(mlp / base - 1) > 1e-3  # the ablation does change the perplexity
    assert (df[df.measure == "task"].groupby("condition").size() == 2).all()
    # the jump rule: the block that raises ||resid[0]|| most, by hand
    jump = bos_ablation.run(model, reference, evaluation, conditions=("baseline", "bos_mlp"), tasks=(),
                            max_tokens=64, spike_rule="jump", show_progress=False)
    row = jump[jump.condition == "bos_mlp"].iloc[0]
    assert row.condition_layer == int(np.argmax(np.diff(norms))) and row.spike_rule == "jump"
    with pytest.raises(ValueError, match="also reference texts"):
        bos_ablation.run(model, TEXTS[:2], TEXTS[1:], tasks=(), show_progress=False)
    with pytest.raises(ValueError, match=r"spike rule 'first' is unknown"):
        bos_ablation.run(model, reference, evaluation, tasks=(), spike_rule="first", show_progress=False)


def test_layer1_ablation_cli(checkpoint_factory, tmp_path, capsys):
    from drope_lens.cli import main

    rope, _ = checkpoint_factory(num_hidden_layers=3)
    drope, _ = checkpoint_factory(attention_type="nope", num_hidden_layers=3)
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t, "name": f"t{i}"}) + "\n" for i, t in enumerate(TEXTS)))
    args = ["run", "layer1-ablation", "--rope", str(rope), "--drope", str(drope), "--texts", str(texts),
            "--max-tokens", "48", "--out", str(tmp_path / "results"), "--device", "cpu", "--n-reference", "1",
            "--n-evaluation", "3", "--tasks", "passkey", "--prompts", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Exp 6 layer-1 ablation" in out and "l1_both_bos" in out
    (run_dir,) = (tmp_path / "results" / "layer1-ablation").iterdir()
    data = pd.read_parquet(run_dir / "data.parquet")
    assert set(data.condition) == set(layer1_ablation.DEFAULT_CONDITIONS) and set(data.variant) == {"rope", "drope"}
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["config"]["conditions"] == list(layer1_ablation.DEFAULT_CONDITIONS)
    assert meta["config"]["spike_rule"] == "argmax"  # recorded even where no condition needs it
    assert meta["condition_layers"]["drope"]["l1_mlp"] == {"layer": 1, "spike_rule": ""}
    assert main(args + ["--conditions", "baseline,l9_mlp"]) == 2
    assert "condition 'l9_mlp' is unknown" in capsys.readouterr().err
    assert math.isfinite(data[data.measure == "perplexity"].ppl.max())


# The study's Exp 3 accuracies (../shared/reference/seed-study/jin_tests_final_20260119_172709.json,
# <model>.<kind>.<task>.{baseline,disrupted}) and prompt counts (METHODS.md, Exp 3).
STUDY_EXP3 = {"rope": {"cities": (0.895, 0.575), "sports": (0.60, 0.52), "imdb": (0.44, 0.05), "passkey": (1.0, 0.0)},
              "drope": {"cities": (0.79, 0.885), "sports": (0.73, 0.67), "imdb": (0.30, 0.15), "passkey": (0.6, 0.6)}}
STUDY_N = {"cities": 200, "sports": 100, "imdb": 100, "passkey": 20}
STUDY_KIND = {"cities": "parametric", "sports": "parametric", "imdb": "contextual", "passkey": "contextual"}


def _items_with_accuracies() -> pd.DataFrame:
    """Per-item 0/1 rows with exactly the study's accuracies."""
    rows = []
    for variant, tasks in STUDY_EXP3.items():
        for task, accuracies in tasks.items():
            n = STUDY_N[task]
            for condition, accuracy in zip(("baseline", "topk_mean_q_k"), accuracies):
                hits = round(accuracy * n)
                for sample in range(n):
                    correct = float(sample < hits)
                    rows.append({"variant": variant, "task": task, "kind": STUDY_KIND[task], "condition": condition,
                                 "sample": sample, "correct": correct, "correct_generation": correct})
    return pd.DataFrame(rows)


def test_category_headline_reproduces_the_studys_numbers():
    """From per-item outcomes with the study's accuracies, the category headline is the study's
    published RoPE 94.3% contextual vs 24.5% parametric, 3.8x (METHODS.md / README), and the same
    numbers come from the package's copy of the study's per-task accuracies. Planted bugs this
    catches: pooling items across a category's tasks (cities' 200 items would outweigh sports'
    100: RoPE parametric 30.1%, not 24.5%); degradation computed as baseline - condition
    (percentage points) instead of relative to the baseline."""
    table = knowledge.categories(_items_with_accuracies(), n_bootstrap=400).set_index("variant")
    rope = table.loc["rope"]
    assert round(100 * rope.contextual, 1) == 94.3 and round(100 * rope.parametric, 1) == 24.5
    assert round(rope.ratio, 1) == 3.8
    assert rope.parametric_tasks == "cities,sports" and rope.contextual_tasks == "imdb,passkey"
    for name in ("parametric", "contextual", "ratio"):
        assert rope[f"{name}_low"] < rope[name] < rope[f"{name}_high"], name  # CIs over items, not degenerate
    drope = table.loc["drope"]
    assert drope.contextual == pytest.approx((0.5 + 0.0) / 2)
    assert drope.parametric == pytest.approx(((0.79 - 0.885) / 0.79 + (0.73 - 0.67) / 0.73) / 2)
    study = knowledge.study_categories().set_index("variant")
    for variant in ("rope", "drope"):
        for name in ("parametric", "contextual", "ratio"):
            assert study.loc[variant, name] == pytest.approx(table.loc[variant, name], rel=1e-9), (variant, name)
    shown = knowledge.category_table(_items_with_accuracies(), n_bootstrap=200)
    assert shown.iloc[0]["study"].startswith("24.5% vs 94.3%, 3.8x")


def test_category_ci_is_a_bootstrap_over_items():
    """The CI of a one-task category equals a float64 percentile bootstrap by hand (same draws):
    planted bug: resampling tasks instead of items, or one resample shared by baseline and
    condition rows of different prompts."""
    rng = np.random.default_rng(3)
    base = (rng.random(40) < 0.8).astype(float)
    other = np.where(rng.random(40) < 0.5, base, 0.0)
    rows = [{"variant": "rope", "task": "passkey", "kind": "contextual", "condition": c, "sample": i, "correct": v}
            for c, values in (("baseline", base), ("topk_mean_q_k", other)) for i, v in enumerate(values)]
    row = knowledge.categories(pd.DataFrame(rows), n_bootstrap=1000, seed=5).iloc[0]
    draws = np.random.default_rng(5).integers(0, 40, size=(1000, 40))
    b, o = base[draws].mean(1), other[draws].mean(1)
    boot = (b - o) / b
    assert row.contextual == pytest.approx((base.mean() - other.mean()) / base.mean())
    assert [row.contextual_low, row.contextual_high] == pytest.approx(np.percentile(boot, [2.5, 97.5]).tolist())
    assert np.isnan(row.parametric) and row.parametric_tasks == ""


def test_conditions_are_prepared_on_512_tokens_like_exp_4_to_6(checkpoint_factory, monkeypatch):
    """Exp 3 prepares the spike layer / massive dims on the same first 512 tokens as Exp 4-6
    (capped at the model's n_ctx). Planted bug: the old default of 256 tokens."""
    from drope_lens.measurement import analysis as ablation_setup

    seen = {}
    original = ablation_setup.bos_norm_profile

    def spy(model, texts, **kwargs):
        seen["max_tokens"] = kwargs["max_tokens"]
        return original(model, texts, **kwargs)

    monkeypatch.setattr(ablation_setup, "bos_norm_profile", spy)
    path, _ = checkpoint_factory(num_hidden_layers=3, max_position_embeddings=1024)
    model = dl.load_model(path)
    assert model.cfg.n_ctx >= 512
    knowledge.run(model, tasks=("passkey",), conditions=("baseline", "bos_mlp"), n=1, new_tokens=2,
                  reference_texts=TEXTS, show_progress=False)
    assert seen["max_tokens"] == min(512, model.cfg.n_ctx) and knowledge.REFERENCE_TOKENS == 512


def test_prompts_without_bos_are_warned_about(checkpoint_factory):
    """A tokenizer that adds no BOS: task prompts start with a text token, and position-0
    conditions would ablate it; the run says so (and bos='always' puts the BOS back). Planted bug:
    the warning tested on the tokenizer's BOS id only (this tokenizer has one, it just adds none)."""
    path, _ = checkpoint_factory(prepend_bos=False)
    model = dl.load_model(path)
    assert model.tokenizer.bos_token_id is not None
    assert model.tokenizer(PROMPTS[0])["input_ids"][0] != model.tokenizer.bos_token_id
    prepared = prepare_conditions(model, ["baseline"], TEXTS)
    with pytest.warns(UserWarning, match=r"not a special token for 4 task prompt\(s\) \('cities\[0\]'.*adds no BOS"):
        task_rows(model, _items(), prepared.conditions, new_tokens=1, show_progress=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = task_rows(model, _items(), prepared.conditions, new_tokens=1, bos="always", show_progress=False)
    assert (df["n_tokens"] == [len(model.tokenizer(p)["input_ids"]) + 1 for p in PROMPTS]).all()
