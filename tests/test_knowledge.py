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
from drope_lens.experiments.ablation_setup import bos_norm_ratios, prepare_conditions, spike_layer
from drope_lens.experiments.task_eval import TASK_COLUMNS, degradation, task_rows
from drope_lens.results import RunStore
from drope_lens.scoring import answer_token_ids
from drope_lens.tasks import TaskItem

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
    :func:`drope_lens.tasks.load_task`); ``correct_logit`` not the sign of the margin; (2) parts
    found by task name only: the issue's run (baseline, n=4) then (baseline + topk_mean_q_k, n=3,
    seed 7) in one directory silently reused the first run's baseline rows (now refused before any
    forward, naming conditions, n and seed with both values); (3) a part of another configuration
    planted under a task's name read back on resume, or a finished task recomputed (the resumed
    rows must equal a store-less run exactly, with one task recomputed)."""
    from drope_lens.results import RunMismatchError
    from drope_lens.tasks import load_task

    model = dl.load_model("bundled:toy/drope")  # its tokenizer has " Yes"/" Positive" (the tiny one has not)
    kwargs = dict(tasks=("cities", "sentiment"), conditions=("baseline", "topk_mean_q_k"), n=4, new_tokens=4,
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
    (sentiment,) = [p.name for p in fixed_parts.iterdir() if p.name.endswith("-sentiment.parquet")]
    cut = RunStore(tmp_path, "knowledge", "cut")
    assert not (cut.parts / sentiment).exists()
    shutil.copy(fixed_parts / sentiment, cut.parts / sentiment)  # baseline-only rows under the same task name
    calls.clear()
    again = knowledge.run(model, store=cut, **kwargs)
    assert calls == ["sentiment"]  # cities read back; the foreign sentiment part recomputed
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


def test_bos_ablation_uses_and_records_the_spike_layer(checkpoint_factory):
    path, _ = checkpoint_factory(num_hidden_layers=3)
    model = dl.load_model(path)
    df = bos_ablation.run(model, TEXTS[:2], TEXTS[2:], tasks=("passkey",), n=2, max_tokens=64, show_progress=False)
    expected, _ = spike_layer(bos_norm_ratios(model, TEXTS[:2], max_tokens=64))
    ppl = df[df.measure == "perplexity"]
    assert set(ppl.condition) == set(bos_ablation.DEFAULT_CONDITIONS)
    assert set(ppl[ppl.condition.isin(["bos_mlp", "bos_v_spike"])].condition_layer) == {expected}
    table = bos_ablation.perplexity_summary(df)
    assert table.set_index("condition").loc["baseline", "ppl_ratio"] == 1.0
    assert (df[df.measure == "task"].groupby("condition").size() == 2).all()
    with pytest.raises(ValueError, match="also reference texts"):
        bos_ablation.run(model, TEXTS[:2], TEXTS[1:], tasks=(), show_progress=False)


def test_layer1_ablation_cli(checkpoint_factory, tmp_path, capsys):
    from drope_lens.cli import main

    rope, _ = checkpoint_factory(num_hidden_layers=3)
    drope, _ = checkpoint_factory(attention_type="nope", num_hidden_layers=3)
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t, "name": f"t{i}"}) + "\n" for i, t in enumerate(TEXTS)))
    args = ["run", "layer1-ablation", "--rope", str(rope), "--drope", str(drope), "--texts", str(texts),
            "--max-tokens", "48", "--out", str(tmp_path / "results"), "--device", "cpu", "--n-reference", "1",
            "--n-evaluation", "3", "--tasks", "passkey", "--n", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Exp 6 layer-1 ablation" in out and "l1_both_bos" in out
    (run_dir,) = (tmp_path / "results" / "layer1-ablation").iterdir()
    data = pd.read_parquet(run_dir / "data.parquet")
    assert set(data.condition) == set(layer1_ablation.DEFAULT_CONDITIONS) and set(data.variant) == {"rope", "drope"}
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["config"]["conditions"] == list(layer1_ablation.DEFAULT_CONDITIONS)
    assert main(args + ["--conditions", "baseline,l9_mlp"]) == 2
    assert "condition 'l9_mlp' is unknown" in capsys.readouterr().err
    assert math.isfinite(data[data.measure == "perplexity"].ppl.max())
