"""The study report: built from whatever runs a folder holds, says which are missing, reads the
study's numbers from its data file, and names what is wrong with bad folders."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

import synthetic_results as S
from drope_lens.outputs import report as R
from drope_lens.outputs import reproduction
from drope_lens.cli import main
from drope_lens.outputs.figures import SchemaError

SHARED = Path("/work/shared")
PLOTLY_MARKER = "plotly.js v"  # the banner at the top of the inlined plotly.js bundle


def _sections(page: str) -> list[str]:
    return re.findall(r"<h2 id='([a-z0-9_]+)'>", page)


def test_report_of_a_partial_folder_says_what_is_missing(toy_results, tmp_path):
    out = R.build_report(toy_results, tmp_path / "report.html")
    page = out.read_text()
    assert _sections(page) == ["massive_values", "disruption", "reproduction"]
    assert page.count(PLOTLY_MARKER) == 1  # plotly.js inlined once
    assert re.findall(r"<script[^>]*\bsrc=", page) == []  # nothing fetched: works offline
    assert page.count("class=\"plotly-graph-div\"") == 3  # Exp 1: two figures, Exp 2: one
    assert "2 of 10 experiments present, 8 missing." in page
    for name, section in R.SECTIONS.items():
        if name not in ("massive_values", "disruption"):
            assert f"missing: {section.title.replace('&', '&amp;')}" in page
            assert f"drope-lens run {section.command}" in page
    # run metadata: models, fingerprints, dtype, package versions
    assert "bundled:toy/rope" in page and "bundled:toy/drope" in page and "float32" in page
    assert "transformer-lens" in page
    # the reproduction table holds our Exp 1 numbers next to the study's
    table = _reproduction(toy_results)
    q = table[(table.key == "total_q") & (table.variant == "rope")].iloc[0]
    data = pd.read_parquet(toy_results / "massive_values" / "massive_values-toy" / "data.parquet")
    rope_q = data[(data.variant == "rope") & (data.tensor == "q")].groupby("sample")["count"].sum().mean()
    assert q.ours == pytest.approx(rope_q) and q.study == 1475.5 and q.ratio == pytest.approx(rope_q / 1475.5)
    assert set(table[table.experiment == "knowledge"].status) == {"not run"}
    assert "fp16" in q.flaw


@pytest.fixture(autouse=True)
def _fewer_bootstrap_draws(monkeypatch):
    monkeypatch.setattr(R, "BOOTSTRAP", 1000)


def _reproduction(root: Path) -> pd.DataFrame:
    inventory = R.scan(root)
    ours = {name: R.SECTIONS[name].headline(runs[0].data) for name, runs in inventory.runs.items()}
    return reproduction.reproduction_table(ours)


def test_report_with_every_experiment(toy_results, tmp_path):
    root = tmp_path / "results"
    shutil.copytree(toy_results, root)
    for name, build in S.BUILDERS.items():
        S.write_run(root, name, build())
    (root / "knowledge" / "knowledge-unfinished" / "parts").mkdir(parents=True)
    S.write_run(root, "not_an_experiment", S.layer_balance())
    page = R.build_report(root, tmp_path / "report.html").read_text()
    assert _sections(page) == list(R.SECTIONS) + ["reproduction"]
    assert "10 of 10 experiments present, 0 missing." in page
    assert "not shown (no report section for it)" in page and "not_an_experiment" in page
    assert "The study&#x27;s headline per category" in page or "The study's headline per category" in page
    assert "24.5% vs 94.3%, 3.8x" in page  # the study's category numbers next to ours
    assert page.count("Layers are categories: mode (distribution over texts") == 2  # sinks and bos_write
    table = _reproduction(root)
    knowledge = S.BUILDERS["knowledge"]()
    expected = 100 * knowledge[(knowledge.variant == "drope") & (knowledge.task == "cities")
                               & (knowledge.condition == "baseline")]["correct_generation"].mean()
    row = table[(table.key == "cities_baseline") & (table.variant == "drope")].iloc[0]
    assert row.ours == pytest.approx(expected) and row.study == pytest.approx(79.0)
    disrupted = table[(table.key == "passkey_disrupted") & (table.variant == "rope")].iloc[0]  # topk_mean_q_k
    assert disrupted.status == "measured" and disrupted.study == pytest.approx(0.0)
    # the package's written reviews are not IMDB: the study's IMDB row stays unmeasured (a planted
    # mapping reviews -> imdb would fill it), and the reviews never take another task's key
    imdb = table[table.key.str.startswith("imdb_")]
    assert len(imdb) == 4 and set(imdb.status) == {"not measured"} and imdb.ours.isna().all()
    ours = reproduction.headline_knowledge(knowledge)
    assert {"reviews_baseline", "reviews_disrupted"} <= set(ours.key) and not ours.key.str.startswith("imdb").any()
    assert not ours.duplicated(["key", "variant"]).any()
    imdb_run = knowledge[knowledge.task == "reviews"].assign(task="imdb")  # a real IMDB run
    with_imdb = reproduction.headline_knowledge(pd.concat([knowledge, imdb_run]))
    want = 100 * imdb_run[(imdb_run.variant == "rope") & (imdb_run.condition == "baseline")]["correct_generation"].mean()
    got = with_imdb[(with_imdb.key == "imdb_baseline") & (with_imdb.variant == "rope")]["value"]
    assert got.tolist() == [pytest.approx(want)]
    layer1 = table[(table.experiment == "layer1_ablation") & (table.key == "ppl_l1_mlp")]
    assert set(layer1.status) == {"measured"}
    sink_rows = S.BUILDERS["sinks"]()
    profile = sink_rows[sink_rows["bos_ratio"].notna() & (sink_rows.variant == "rope")].groupby("layer")["bos_ratio"].mean()
    spike = table[(table.key == "spike_layer") & (table.variant == "rope")].iloc[0]
    assert spike.ours == profile.idxmax() and spike.study == 1  # the study's rule (argmax), not a mean layer


def test_study_numbers_come_from_their_sources():
    """Every study number is read back from the source it cites, in the copy shipped with the
    package (drope_lens/data/study/, which tests/test_first_contact.py checks against the originals)."""
    study = reproduction.study_numbers()
    assert len(study) > 50 and set(study.experiment) == set(R.SECTIONS)
    assert not study.duplicated(["experiment", "key", "variant"]).any()
    assert study["source"].map(lambda s: "file" in s or s.get("document") == "METHODS.md").all()
    methods = reproduction.shipped_source("METHODS.md")
    sections = {line[3:].strip() for line in methods.read_text().splitlines() if line.startswith("## ")}
    files: dict[str, object] = {}
    for entry in study.itertuples():
        source = entry.source
        if "file" in source:
            if source["file"] not in files:
                files[source["file"]] = json.loads(reproduction.shipped_source(source["file"]).read_text())
            value = files[source["file"]]
            for key in source["path"]:
                value = value[key]
            assert entry.value == pytest.approx(value * source.get("scale", 1)), entry
            assert entry.source_text.startswith("drope_lens/data/study/"), entry.source_text
        else:
            assert source["section"] in sections, source
            assert entry.source_text.startswith("drope_lens/data/study/METHODS.md, section"), entry.source_text
            # a number typed from the write-up appears there in one of its usual spellings
            body = methods.read_text().split(f"## {source['section']}", 1)[1].split("\n## ", 1)[0]
            spellings = {f"{entry.value:g}", f"{entry.value:,.0f}", f"{entry.value:.1f}", f"{entry.value:.2f}",
                         f"{entry.value:.3f}"}
            assert any(s in body for s in spellings), (entry.key, entry.variant, entry.value)


def test_study_numbers_file_schema(tmp_path):
    bad = tmp_path / "numbers.json"
    bad.write_text(json.dumps({"schema": 99, "numbers": []}))
    with pytest.raises(ValueError, match="schema 99"):
        reproduction.study_numbers(bad)


def test_bad_folders_give_named_errors(toy_results, tmp_path):
    with pytest.raises(R.ReportError, match="no such results folder"):
        R.scan(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(R.ReportError, match="no finished result runs.*found nothing"):
        R.scan(empty)
    foreign = tmp_path / "foreign"
    (foreign / "photos").mkdir(parents=True)
    (foreign / "notes.txt").write_text("hello")
    with pytest.raises(R.ReportError, match=r"found \['notes.txt', 'photos'\]"):
        R.scan(foreign)
    with pytest.raises(R.ReportError, match="one run's directory"):
        R.scan(toy_results / "massive_values" / "massive_values-toy")
    old = tmp_path / "old"
    frame = pd.read_parquet(toy_results / "massive_values" / "massive_values-toy" / "data.parquet")
    S.write_run(old, "massive_values", frame.drop(columns=["heads", "dims"]))  # an older schema
    with pytest.raises(SchemaError, match=r"massive_values results lack columns \['heads', 'dims'\]"):
        R.build_report(old, tmp_path / "r.html")
    moved = tmp_path / "moved"
    run = S.write_run(moved, "sinks", S.sinks())
    meta = json.loads((run / "meta.json").read_text())
    (run / "meta.json").write_text(json.dumps(meta | {"experiment": "layer_balance"}))
    with pytest.raises(R.ReportError, match="says experiment 'layer_balance'"):
        R.scan(moved)


def test_a_new_experiment_plugs_in_with_one_entry(tmp_path, monkeypatch):
    import plotly.graph_objects as go

    monkeypatch.setattr(R, "SECTIONS", dict(R.SECTIONS))
    R.register(R.Section("new_probe", "Exp 11 — a new probe", "new-probe",
                         (lambda df, meta: go.Figure(go.Bar(x=df["layer"], y=df["value"])),),
                         headline=lambda df: pd.DataFrame({"key": ["peak"], "variant": ["rope"],
                                                           "value": [df["value"].max()]})))
    frame = pd.DataFrame({"model": "m", "variant": "rope", "layer": [0, 1], "value": [0.25, 0.75]})
    S.write_run(tmp_path / "results", "new_probe", frame)
    page = R.build_report(tmp_path / "results", tmp_path / "r.html").read_text()
    assert _sections(page) == ["new_probe", "reproduction"]
    assert "Headline numbers" in page and "0.75" in page
    assert "1 of 11 experiments present, 10 missing." in page


def test_report_command(toy_results, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(toy_results), "--out", str(out)]) == 0
    assert out.is_file() and f"report: {out}" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "no such results folder" in capsys.readouterr().err


def test_study_command_runs_every_cli_experiment_then_the_report(tmp_path, monkeypatch, capsys):
    """`study` runs whatever CLI_EXPERIMENTS lists, then reports: an experiment that lands later (here a
    stand-in module registered the way a real one is) is run and reported with no change to `study`."""
    import sys
    import types

    import plotly.graph_objects as go

    import drope_lens.experiments as experiments

    probe = types.ModuleType("drope_lens.experiments.stand_in_probe")
    probe.CLI_TAKES_TEXTS = False
    probe.add_cli_arguments = lambda parser: parser.add_argument("--width", type=int, default=3)

    def run_cli(ctx) -> int:
        store = ctx.store("stand_in_probe", {"width": ctx.args.width}, {})
        frame = pd.DataFrame({"model": ctx.sources[0], "variant": "rope", "layer": range(ctx.args.width),
                              "value": [0.5] * ctx.args.width})
        ctx.finalize(store, [frame], {"config": {"width": ctx.args.width}}, [{"source": s} for s in ctx.sources])
        return 0

    probe.run_cli = run_cli
    monkeypatch.setitem(sys.modules, probe.__name__, probe)
    monkeypatch.setattr(experiments, "CLI_EXPERIMENTS", {"stand-in-probe": ("stand_in_probe", "a stand-in")})
    monkeypatch.setattr(R, "SECTIONS", dict(R.SECTIONS))
    R.register(R.Section("stand_in_probe", "Exp 99 — stand-in", "stand-in-probe",
                         (lambda df, meta: go.Figure(go.Bar(x=df["layer"], y=df["value"])),)))
    results, out = tmp_path / "results", tmp_path / "study.html"
    assert main(["study", "--out", str(results), "--report", str(out), "--device", "cpu"]) == 0
    assert "== drope-lens run stand-in-probe" in capsys.readouterr().out
    page = out.read_text()
    assert _sections(page) == ["stand_in_probe", "reproduction"]
    assert "bundled:toy/rope" in page  # the toy pair is the default
    assert len(list((results / "stand_in_probe").iterdir())) == 1
