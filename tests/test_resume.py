"""Resume never mixes configurations (issue 17, section 1), for every experiment that takes a store.

Planted bugs these tests catch (each was the toolkit's behaviour, or is one line away from it):

* parts found by unit name only: a run asked for another configuration (any config field, an
  edited text with an unchanged name, other weights at the same checkpoint path) reads the
  first run's parts back; caught by ``test_each_field_is_in_the_fingerprint`` (the reuse is
  refused, naming the field and both values, before any forward) and by
  ``test_interrupted_run_resumes_bit_exact`` (parts of another configuration, planted under the
  same unit names, must not be read: the resumed data equals an uninterrupted run's);
* an experiment that forgets a field when it binds its store (the list of fields each
  experiment must pass is checked against its config dataclass);
* ``overwrite`` that keeps old parts, and ``meta.json`` that describes another configuration
  than ``data.parquet`` holds (the issue's ``meta.json`` said n=8, seed 7 over n=4 rows);
* a CLI run id derived from text names (an edited text with the same name got the old results).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import drope_lens as dl
from drope_lens.engine import ablation as ablation_sweep
from drope_lens.experiments import (
    attention_structure,
    bos_write,
    context_length,
    disruption,
    knowledge,
    layer_balance,
    massive_values,
    sinks,
)
from drope_lens.engine.results import RunMismatchError, RunStore, canonical, load_run, texts_fingerprint
from drope_lens.measurement.texts import Text

sys.path.insert(0, str(Path(__file__).parent))
from builders import WORDS  # noqa: E402


def _texts(n: int, words: int = 24, seed: int = 0) -> list[Text]:
    g = torch.Generator().manual_seed(seed)
    vocab = [w for w in WORDS if w.isalpha()]
    return [Text(f"t{i}", "synthetic", " ".join(vocab[j] for j in torch.randint(0, len(vocab), (words,), generator=g)))
            for i in range(n)]


TEXTS = _texts(6)


def _edited(texts: list[Text], index: int = 0) -> list[Text]:
    """The same texts and names, one text's content changed."""
    out = list(texts)
    out[index] = dataclasses.replace(out[index], text=out[index].text + " the end")
    return out


# ------------------------------------------------------------------------------------------
# Every experiment that takes a store: how to call it, its base settings and, per field, another
# value. ``config`` is its config dataclass: every field of it must have an alternative here.
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Spec:
    call: object  # (model, store, **settings) -> DataFrame
    base: dict
    alternatives: dict
    config: type
    extra: tuple = ()  # run arguments beyond the config dataclass that determine the rows
    texts: tuple = ()  # arguments that are texts (an edited text must be refused)


def _run_knowledge(model, store, **kw):
    return knowledge.run(model, store=store, show_progress=False, **kw)


def _run_sweep(model, store, *, reference_texts, evaluation_texts, **kw):
    return ablation_sweep.run_sweep(model, reference_texts, evaluation_texts, ablation_sweep.AblationConfig(**kw),
                                    store=store, show_progress=False)


def _run_context(model, store, **kw):
    return context_length.run(model, store=store, show_progress=False, **kw)


def _run_disruption(model, store, *, identification_texts, evaluation_texts, **kw):
    return disruption.run(model, identification_texts, evaluation_texts, store=store, show_progress=False, **kw)


def _texts_run(module):
    def call(model, store, *, texts, **kw):
        return module.run(model, texts, store=store, show_progress=False, **kw)

    return call


MEASURE = dict(max_tokens=16, batch_size=2, bos="checkpoint")
MEASURE_ALT = dict(max_tokens=17, batch_size=3, bos="always")

SPECS = {
    "knowledge": Spec(
        _run_knowledge,
        dict(tasks=("cities", "reviews"), conditions=("baseline",), n=2, seed=42, source="toy", rotary="pre",
             new_tokens=2, batch_size=4, max_tokens=64, bos="checkpoint", spike_rule="argmax", reference_tokens=512,
             imdb_file=None, reference_texts=TEXTS[:2]),
        dict(tasks=("cities",), conditions=("baseline", "l1_mlp"), n=3, seed=7, source="study", rotary="post",
             new_tokens=3, batch_size=3, max_tokens=65, bos="always", spike_rule="jump", reference_tokens=64,
             imdb_file="imdb_test.jsonl", reference_texts=_edited(TEXTS[:2])),
        knowledge.KnowledgeConfig, texts=("reference_texts",)),
    "ablation_sweep": Spec(
        _run_sweep,
        dict(conditions=("baseline", "l1_mlp"), tasks=(), n=2, seed=42, source="toy", max_tokens=16, new_tokens=2,
             batch_size=4, bos="checkpoint", spike_rule="argmax", reference_texts=TEXTS[:2],
             evaluation_texts=TEXTS[2:4]),
        dict(conditions=("baseline",), tasks=("cities",), n=3, seed=7, source="study", max_tokens=17, new_tokens=3,
             batch_size=3, bos="always", spike_rule="jump", reference_texts=_edited(TEXTS[:2]),
             evaluation_texts=_edited(TEXTS[2:4])),
        ablation_sweep.AblationConfig, texts=("reference_texts", "evaluation_texts")),
    "context_length": Spec(
        _run_context,
        dict(lengths=(300,), formats=("simple",), n=1, depths=None, seed=0, max_new_tokens=2, verify=False,
             key_divisor=None, batch_tokens=1000, scaling=0.0, scaling_layers=None, bos="checkpoint",
             skip_too_short=False),
        dict(lengths=(300, 400), formats=("simple", "ruler"), n=2, depths=(0.5,), seed=1, max_new_tokens=3,
             verify=True, key_divisor=7, batch_tokens=999, scaling=0.5, scaling_layers=(0,), bos="always",
             skip_too_short=True),
        context_length.ContextLengthConfig, extra=("skip_too_short",)),
    "disruption": Spec(
        _run_disruption,
        dict(threshold=5.0, seeds=2, max_tokens=16, rotary="pre", seed=0, batch_size=4, random_pool="non_massive",
             bos="checkpoint", batched=True, identification_texts=TEXTS[:2], evaluation_texts=TEXTS[2:4]),
        dict(threshold=4.0, seeds=3, max_tokens=17, rotary="post", seed=1, batch_size=3, random_pool="all",
             bos="always", batched=False, identification_texts=_edited(TEXTS[:2]),
             evaluation_texts=_edited(TEXTS[2:4])),
        disruption.DisruptionConfig, extra=("batched",), texts=("identification_texts", "evaluation_texts")),
    "massive_values": Spec(
        _texts_run(massive_values),
        dict(threshold=5.0, max_tokens=16, rotary="pre", tensors=("q", "k", "v"), batch_size=2, bos="checkpoint",
             texts=TEXTS[:3]),
        dict(threshold=4.0, max_tokens=17, rotary="post", tensors=("q", "k"), batch_size=3, bos="always",
             texts=_edited(TEXTS[:3])),
        massive_values.MassiveValuesConfig, texts=("texts",)),
    "sinks": Spec(
        _texts_run(sinks), dict(tau=0.3, spike_ratio=2.0, **MEASURE, texts=TEXTS[:3]),
        dict(tau=0.4, spike_ratio=3.0, **MEASURE_ALT, texts=_edited(TEXTS[:3])), sinks.SinksConfig, texts=("texts",)),
    "layer_balance": Spec(
        _texts_run(layer_balance), dict(**MEASURE, texts=TEXTS[:3]), dict(**MEASURE_ALT, texts=_edited(TEXTS[:3])),
        layer_balance.LayerBalanceConfig, texts=("texts",)),
    "bos_write": Spec(
        _texts_run(bos_write), dict(**MEASURE, texts=TEXTS[:3]), dict(**MEASURE_ALT, texts=_edited(TEXTS[:3])),
        bos_write.BosWriteConfig, texts=("texts",)),
    "attention_structure": Spec(
        _texts_run(attention_structure),
        dict(window=5, max_distance=8, sink_tau=0.3, local_tau=0.3, local_counts_bos=False, **MEASURE, texts=TEXTS[:3]),
        dict(window=4, max_distance=7, sink_tau=0.4, local_tau=0.4, local_counts_bos=True, **MEASURE_ALT,
             texts=_edited(TEXTS[:3])),
        attention_structure.AttentionStructureConfig, texts=("texts",)),
}
CASES = [(name, key) for name, spec in SPECS.items() for key in spec.alternatives]


class _Stop(Exception):
    """Raised right after a successful bind: the fingerprint is recorded, no work is done."""


@pytest.fixture
def stop_after_bind(monkeypatch):
    original = RunStore.bind

    def bind(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise _Stop

    monkeypatch.setattr(RunStore, "bind", bind)


@pytest.fixture(scope="module")
def model(checkpoint_factory):
    return dl.load_model(checkpoint_factory()[0])


def _count_forwards(model) -> list:
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls, handle


def test_every_config_field_has_an_alternative():
    """A field added to an experiment's config must be listed here, so that the refusal test covers it."""
    for name, spec in SPECS.items():
        fields = {f.name for f in dataclasses.fields(spec.config)}
        missing = fields - set(spec.alternatives)
        assert not missing, f"{name}: config fields {sorted(missing)} have no alternative value in SPECS"
        assert set(spec.base) == set(spec.alternatives)


@pytest.mark.parametrize("experiment, key", CASES, ids=[f"{e}-{k}" for e, k in CASES])
def test_each_field_is_in_the_fingerprint(experiment, key, model, tmp_path, stop_after_bind):
    """Changing one setting refuses the run directory before any forward, naming the field and both
    values; the unchanged settings are accepted. Planted bug: the experiment leaves ``key`` out of
    the fingerprint it binds (or parts found by unit name only) -> no refusal."""
    spec = SPECS[experiment]
    with pytest.raises(_Stop):
        spec.call(model, RunStore(tmp_path, experiment, "r"), **spec.base)
    recorded = (tmp_path / experiment / "r" / "fingerprint.json").read_bytes()
    with pytest.raises(_Stop):  # the same settings again: accepted
        spec.call(model, RunStore(tmp_path, experiment, "r"), **spec.base)
    calls, handle = _count_forwards(model)
    try:
        with pytest.raises(RunMismatchError) as info:
            spec.call(model, RunStore(tmp_path, experiment, "r"), **(spec.base | {key: spec.alternatives[key]}))
    finally:
        handle.remove()
    assert calls == []  # refused before any forward
    assert (tmp_path / experiment / "r" / "fingerprint.json").read_bytes() == recorded
    message = str(info.value)
    if key in spec.texts:
        old, new = (json.dumps(texts_fingerprint(v)["sha256"]) for v in (spec.base[key], spec.alternatives[key]))
        path = rf"{key}\.sha256"
        edited = spec.alternatives[key][0].name
        assert re.search(rf"(?m)^  {key}\.by_name\.{edited}: ", str(info.value))  # the edited text is named
    else:
        old, new = (json.dumps(canonical(v), sort_keys=True) for v in (spec.base[key], spec.alternatives[key]))
        path = key if key in spec.extra else rf"config\.(\w+\.config\.)?{key}"
    assert re.search(rf"^  {path}: {re.escape(old)} in the directory, {re.escape(new)} asked$", message, re.M), message
    assert "overwrite=True" in message and "--overwrite" in message


def test_other_weights_at_the_same_path_are_refused(checkpoint_factory, tmp_path, stop_after_bind):
    """A checkpoint directory rewritten with other weights (same path, same source name) is another model."""
    directory = tmp_path / "ckpt"
    shutil.copytree(checkpoint_factory()[0], directory)
    spec = SPECS["massive_values"]
    with pytest.raises(_Stop):
        spec.call(dl.load_model(directory), RunStore(tmp_path, "mv", "r"), **spec.base)
    shutil.rmtree(directory)
    shutil.copytree(checkpoint_factory(seed=1, max_position_embeddings=96)[0], directory)
    with pytest.raises(RunMismatchError, match=r"(?m)^  model\.fingerprint: "):
        spec.call(dl.load_model(directory), RunStore(tmp_path, "mv", "r"), **spec.base)


def test_in_memory_model_is_fingerprinted_by_its_weights(model, tmp_path, stop_after_bind):
    """A model with no checkpoint directory is identified by a hash of its weights."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=32, d_head=4, n_heads=4, d_vocab=96, act_fn="gelu",
                                  tokenizer_name=None)
    torch.manual_seed(0)
    plain = HookedTransformer(cfg)
    plain.tokenizer = model.tokenizer
    spec = SPECS["layer_balance"]
    with pytest.raises(_Stop):
        spec.call(plain, RunStore(tmp_path, "lb", "r"), **spec.base)
    with torch.no_grad():
        plain.blocks[0].attn.W_Q[0, 0, 0] += 1.0
    with pytest.raises(RunMismatchError, match=r"(?m)^  model\.weights_sha256: "):
        spec.call(plain, RunStore(tmp_path, "lb", "r"), **spec.base)


# ------------------------------------------------------------------------------------------
# Interrupted runs resume bit for bit; parts of another configuration are never read
# ------------------------------------------------------------------------------------------
class _Interrupted(Exception):
    pass


def _interrupt_after(monkeypatch, count: int):
    written = [0]
    original = RunStore.save_part

    def save_part(self, *args, **kwargs):
        original(self, *args, **kwargs)
        written[0] += 1
        if written[0] >= count:
            raise _Interrupted

    monkeypatch.setattr(RunStore, "save_part", save_part)


RESUMED = ["ablation_sweep", "disruption", "massive_values", "sinks", "layer_balance", "bos_write",
           "attention_structure"]
#: the ablation sweep's task part needs " Yes"/" No" as distinct tokens: the toy model has them
RESUME_SETTINGS = {"ablation_sweep": dict(tasks=("cities",), max_tokens=24)}


@pytest.fixture(scope="module")
def toy():
    return dl.load_model("bundled:toy/drope")


@pytest.mark.parametrize("experiment", RESUMED)
def test_interrupted_run_resumes_bit_exact(experiment, model, toy, tmp_path, monkeypatch):
    """Stopped after one part, the run resumes to a data.parquet equal (exactly) to an uninterrupted
    run's, reading the finished part. Parts of another configuration (max_tokens changed: other rows,
    same unit names) planted in the directory are not read. Planted bugs: parts read by name only
    (the foreign rows appear), a resume that recomputes the finished part with other batch mates,
    meta.json written from another configuration than the data."""
    spec = SPECS[experiment]
    base = spec.base | RESUME_SETTINGS.get(experiment, {})
    model = toy if experiment in RESUME_SETTINGS else model
    full = RunStore(tmp_path, experiment, "full")
    expected = spec.call(model, full, **base)
    full.finalize(expected, {})
    pd.testing.assert_frame_equal(expected, spec.call(model, None, **base), check_exact=True)
    n_parts = len(list(full.parts.iterdir()))
    assert n_parts >= 2

    foreign = RunStore(tmp_path, experiment, "foreign")
    other = spec.call(model, foreign, **(base | {"max_tokens": 12}))
    assert not other.equals(expected)  # the planted parts hold other rows

    with monkeypatch.context() as patch:
        _interrupt_after(patch, 1)
        with pytest.raises(_Interrupted):
            spec.call(model, RunStore(tmp_path, experiment, "cut"), **base)
    cut = RunStore(tmp_path, experiment, "cut")
    finished = {p.name for p in cut.parts.iterdir()}
    assert len(finished) == 1
    for part in foreign.parts.iterdir():  # every unit not finished gets a foreign part of the same name
        if part.name not in finished:
            shutil.copy(part, cut.parts / part.name)

    saved = []
    original = RunStore.save_part
    monkeypatch.setattr(RunStore, "save_part", lambda self, unit, frame: saved.append(unit) or original(self, unit, frame))
    resumed = spec.call(model, cut, **base)
    assert len(saved) == n_parts - 1  # the finished part was read, every foreign one recomputed
    cut.finalize(resumed, {})
    data_full, meta_full = load_run(full.directory)
    data_cut, meta_cut = load_run(cut.directory)
    pd.testing.assert_frame_equal(data_cut, data_full, check_exact=True)
    assert meta_cut["fingerprint"] == meta_full["fingerprint"]
    (scope,) = meta_cut["fingerprint"]["scopes"].values()
    assert scope["texts" if "texts" in scope else "evaluation_texts"]["names"]  # the texts, by content
    assert scope["model"]["fingerprint"] and scope["schema_version"] >= 1


def test_overwrite_starts_afresh_and_meta_describes_the_data(model, tmp_path):
    """overwrite=True deletes the old parts and fingerprint; meta.json then describes the new rows.
    Planted bugs: overwrite that keeps old parts (the n_tokens of the old run come back), meta.json
    from the first configuration."""
    spec = SPECS["massive_values"]
    store = RunStore(tmp_path, "mv", "r")
    first = spec.call(model, store, **spec.base)
    store.finalize(first, {})
    old_data = (store.directory / "data.parquet").read_bytes()
    changed = spec.base | {"max_tokens": 12}
    with pytest.raises(RunMismatchError):
        spec.call(model, RunStore(tmp_path, "mv", "r"), **changed)
    fresh = RunStore(tmp_path, "mv", "r", overwrite=True)
    second = spec.call(model, fresh, **changed)
    fresh.finalize(second, {})
    pd.testing.assert_frame_equal(second, spec.call(model, None, **changed), check_exact=True)
    data, meta = load_run(fresh.directory)
    assert set(data["n_tokens"]) == {12} and set(first["n_tokens"]) == {16}
    (scope,) = meta["fingerprint"]["scopes"].values()
    assert scope["config"]["max_tokens"] == 12
    # data.parquet of the first configuration under the second's meta.json: load_run refuses it
    (fresh.directory / "data.parquet").write_bytes(old_data)
    with pytest.raises(RunMismatchError, match="meta.json describes fingerprint"):
        load_run(fresh.directory)


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------
def test_cli_refuses_another_configuration_and_overwrite_runs_it(tmp_path, capsys):
    """The issue's case: ``--run-id fixed`` baseline n=2, then baseline+topk n=3 seed 7: refused
    (exit 2, the differing fields named), nothing rewritten; with --overwrite the new run's rows
    and meta.json. Planted bug: parts found by unit name (the baseline rows of the first run reused)."""
    from drope_lens.cli import main

    common = ["run", "knowledge", "--run-id", "fixed", "--out", str(tmp_path), "--tasks", "cities",
              "--new-tokens", "2", "--device", "cpu"]
    assert main([*common, "--conditions", "baseline", "--prompts", "2"]) == 0
    directory = tmp_path / "knowledge" / "fixed"
    meta_before = (directory / "meta.json").read_text()
    capsys.readouterr()
    asked = [*common, "--conditions", "baseline,topk_mean_q_k", "--prompts", "3", "--seed", "7"]
    assert main(asked) == 2
    err = capsys.readouterr().err
    assert "config.n: 2 in the directory, 3 asked" in err and "config.seed: 42 in the directory, 7 asked" in err
    assert 'config.conditions: ["baseline"] in the directory, ["baseline", "topk_mean_q_k"] asked' in err
    assert "--overwrite" in err and (directory / "meta.json").read_text() == meta_before
    assert main([*asked, "--overwrite"]) == 0
    data, meta = load_run(directory)
    assert meta["config"]["n"] == 3 and meta["config"]["seed"] == 7
    assert meta["fingerprint"]["scopes"]["run"]["config"] == meta["config"]
    assert len(data) == 2 * 3 * 2 and set(data["sample"]) == {0, 1, 2}  # two models, 3 prompts, 2 conditions


def test_cli_run_id_hashes_text_content(tmp_path, capsys):
    """An edited text with the same name gets another default run id (and is refused under a fixed one).
    Planted bug: the run id built from text names returns the old results."""
    from drope_lens.cli import main

    source = tmp_path / "texts.jsonl"

    def write(texts):
        source.write_text("".join(json.dumps({"name": t.name, "text": t.text}) + "\n" for t in texts))

    common = ["run", "layer-balance", "--texts", str(source), "--n-texts", "2", "--max-tokens", "12",
              "--out", str(tmp_path / "out"), "--device", "cpu"]
    write(TEXTS[:2])
    assert main(common) == 0
    write(_edited(TEXTS[:2], 1))
    assert main(common) == 0
    assert len(list((tmp_path / "out" / "layer_balance").iterdir())) == 2
    assert main([*common, "--run-id", "fixed"]) == 0
    write(TEXTS[:2])
    capsys.readouterr()
    assert main([*common, "--run-id", "fixed"]) == 2
    assert re.search(r"(?m)^  texts\.by_name\.t1: \S+ in the directory, \S+ asked$", capsys.readouterr().err)
