"""What a new user meets first (issue 18): startup time, one-line errors, defaults of the Python API."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from drope_lens.cli import main

HEAVY = ("torch", "transformers", "transformer_lens", "pandas")


def _seconds(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def test_the_cli_parser_and_the_package_import_nothing_heavy():
    """`import drope_lens` and building every command's parser (what --help and argument errors
    do) load none of torch, transformers, TransformerLens or pandas; `dl.load_model` still works."""
    code = ("import sys, drope_lens as dl; from drope_lens.cli import build_parser; build_parser(); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
    import drope_lens as dl
    import drope_lens.model.loading
    import drope_lens.model.registry

    assert dl.load_model is drope_lens.model.loading.load_model and dl.load_pair is drope_lens.model.registry.load_pair
    assert "load_model" in dir(dl) and dl.figures.__name__ == "drope_lens.outputs.figures"
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        dl.nothing_here


def test_help_and_argument_errors_under_a_second_and_import_no_slower_than_transformer_lens():
    help_s = min(_seconds("from drope_lens.cli import main; import sys; sys.argv = ['drope-lens', '--help']\n"
                          "try:\n    main()\nexcept SystemExit:\n    pass") for _ in range(2))
    error_s = _seconds("from drope_lens.cli import main\ntry:\n    main(['run', 'disruption', '--bogus'])\n"
                       "except SystemExit:\n    pass")
    ours = _seconds("import drope_lens")
    theirs = _seconds("import transformer_lens")
    print(f"--help {help_s:.2f} s, argument error {error_s:.2f} s; import drope_lens {ours:.2f} s vs "
          f"import transformer_lens {theirs:.2f} s (ratio {ours / theirs:.3f})")
    assert help_s < 1.0 and error_s < 1.0
    assert ours / theirs <= 1.0


def _one_line_error(capsys, argv) -> str:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    return lines[0]


def test_a_device_that_does_not_exist_is_one_line_naming_it(capsys, tmp_path):
    line = _one_line_error(capsys, ["run", "massive-values", "--device", "banana", "--out", str(tmp_path)])
    assert "--device" in line and "'banana'" in line and "cpu, cuda, cuda:N" in line


@pytest.mark.skipif(torch.version.cuda is not None, reason="needs a torch built without CUDA")
@pytest.mark.parametrize("command", [["info"], ["run", "massive-values"]])
def test_cuda_on_a_cpu_only_torch_is_one_line(capsys, tmp_path, command):
    line = _one_line_error(capsys, [*command, "--device", "cuda", *(["--out", str(tmp_path)] if len(command) > 1 else [])])
    assert line.startswith("drope-lens: error: --device cuda:") and "without CUDA" in line and "--device cpu" in line


def test_a_texts_file_that_is_not_utf8_is_named(capsys, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Stra\u00dfe ab\u00dc".encode("latin-1"))
    line = _one_line_error(capsys, ["run", "massive-values", "--texts", str(bad), "--out", str(tmp_path / "r"),
                                    "--device", "cpu"])
    assert str(bad) in line and "not UTF-8" in line and "0xdf" in line


# ------------------------------------------------------------------------------------------
# Point 1: the Python API picks what suits the model, and says when the texts do not.
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_pair():
    import drope_lens as dl

    return dl.load_pair("toy")


def test_massive_values_defaults_suit_the_toy_pair(toy_pair):
    import warnings

    from drope_lens.experiments import massive_values
    from drope_lens.measurement.tokens import OutOfDistributionWarning

    rope, _ = toy_pair
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfDistributionWarning)
        df = massive_values.run(rope, show_progress=False)
    assert df["text"].str.startswith("toy-heldout-").all() and df["sample"].nunique() == 10
    assert df["n_tokens"].max() == rope.lens.max_position_embeddings == 256  # capped at the trained context
    with pytest.warns(OutOfDistributionWarning, match=r"max_tokens=300 is past .*trained context of 256"):
        massive_values.run(rope, max_tokens=300, show_progress=False)


def test_dim_locations_takes_d_head_from_the_results(toy_pair):
    """low_freq_share by hand (f = dim mod d/2 >= d/4 with the model's own d) against the summary;
    a caller's wrong d_head is refused instead of silently moving every dim."""
    import numpy as np

    from drope_lens.experiments import massive_values

    rope, _ = toy_pair
    df = massive_values.run(rope, max_tokens=64, show_progress=False)
    where = massive_values.dim_locations(df).set_index("tensor")
    d = rope.cfg.d_head
    for tensor, group in df.groupby("tensor"):
        dims = np.array([x for ds in group["dims"] for x in ds])
        if dims.size:
            assert where.loc[tensor, "low_freq_share"] == pytest.approx(((dims % (d // 2)) >= d // 4).mean())
    with pytest.raises(ValueError, match=rf"d_head=128 given, but .* has d_head={d}"):
        massive_values.dim_locations(df, d_head=128)
    old = df.drop(columns="d_head")  # results written before the column existed
    with pytest.raises(ValueError, match="no d_head column"):
        massive_values.dim_locations(old)
    assert massive_values.dim_locations(old, d_head=d).equals(massive_values.dim_locations(df))


def test_disruption_defaults_and_the_out_of_distribution_warning(toy_pair):
    import warnings

    from drope_lens.experiments import disruption
    from drope_lens.measurement.tokens import OutOfDistributionWarning
    from drope_lens.measurement.texts import builtin_texts

    rope, _ = toy_pair
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfDistributionWarning)
        df = disruption.run(rope, seeds=1, max_tokens=64, show_progress=False)  # the toy's own text
    base = df[df.condition == "baseline"]
    assert len(base) == 9 and base["text"].str.startswith("toy-heldout-").all()
    assert base["ppl"].median() < 20  # its own kind of text: a few nats at most
    english = builtin_texts()
    with pytest.warns(OutOfDistributionWarning, match=r"median perplexity [\d,]+ over 2 texts is above its "
                                                      rf"vocabulary size {rope.cfg.d_vocab:,}"):
        disruption.run(rope, english[:1], english[1:3], seeds=1, max_tokens=64, show_progress=False)
    with pytest.raises(ValueError, match="give both identification_texts and evaluation_texts"):
        disruption.run(rope, english[:1], seeds=1)


# ------------------------------------------------------------------------------------------
# Point 2: the Exp 10 figure and tables.
# ------------------------------------------------------------------------------------------
def _passkey_results():
    """RoPE always exact; DroPE's answers spread over near_miss and wrong_digits at 512; RULER
    not run at 128 (its template is longer), as on the toy pair."""
    import pandas as pd

    rows = []
    for variant in ("rope", "drope"):
        for fmt in ("simple", "ruler"):
            for length in (128, 256, 512):
                if fmt == "ruler" and length == 128:
                    continue
                for trial in range(4):
                    category = "exact"
                    if variant == "drope" and length == 512:
                        category = ("near_miss", "wrong_digits", "exact", "near_miss")[trial]
                    rows.append({"model": f"m-{variant}", "variant": variant, "length": length, "format": fmt,
                                 "trial": trial, "category": category, "correct": category == "exact"})
    return pd.DataFrame(rows)


def test_exp10_legend_has_every_category_that_appears_and_ticks_at_the_lengths():
    from drope_lens.outputs import figures as F

    df = _passkey_results()
    errors = F.context_errors(df)
    shown = [t.name for t in errors.data if t.showlegend is not False]
    assert sorted(shown) == sorted(set(df["category"])) == ["exact", "near_miss", "wrong_digits"]
    for trace in errors.data:
        assert len(trace.x) > 0  # no empty trace holds a legend entry
    drope = {t.name: dict(zip(t.x, t.y)) for t in errors.data if t.xaxis == "x2"}
    assert drope["near_miss"]["512"] == 50.0 and drope["wrong_digits"]["512"] == 25.0
    assert list(errors.layout.xaxis.categoryarray) == ["128", "256", "512"]
    accuracy = F.context_length(df)
    assert list(accuracy.layout.xaxis.tickvals) == [128, 256, 512]
    assert list(accuracy.layout.xaxis.ticktext) == ["128", "256", "512"]


def test_exp10_tables_one_per_format_never_averaged():
    from drope_lens.outputs import report
    from drope_lens.outputs.reproduction import headline_context_length

    df = _passkey_results()
    tables = report._context_tables(df, {})
    assert [title.split(", ")[1].split(" (")[0] for title, _ in tables] == ["simple format", "ruler format"]
    ruler = tables[1][1].set_index("length")
    assert ruler.loc[128, "rope"].startswith("not run") and ruler.loc[256, "rope"].startswith("100%")
    rows = headline_context_length(df).set_index(["key", "variant"])["value"]
    assert rows[("accuracy_128", "rope")] == 100.0 and rows[("ruler_accuracy_512", "drope")] == 25.0
    assert ("ruler_accuracy_128", "rope") not in rows.index


# ------------------------------------------------------------------------------------------
# Point 7: figures that cannot be misread.
# ------------------------------------------------------------------------------------------
def test_exp1_error_bars_are_a_ci_over_texts_never_below_zero():
    """Counts 0, 0, 0, 9 over four texts: mean 2.25, std 4.5 (mean - std = -2.25). The percentile
    bootstrap of the mean over texts, worked out by hand: P(all four draws 0) = (3/4)^4 = 0.32 >
    2.5%, so the low end is 0; P(>= 3 nines) = 0.051 > 2.5% > P(4 nines) = 0.004, so the high end
    is 27/4 = 6.75."""
    import pandas as pd

    from drope_lens.outputs import figures as F

    rows = [{"model": f"m-{v}", "variant": v, "sample": s, "layer": 0, "tensor": "q", "count": c,
             "heads": [], "dims": []} for v in ("rope", "drope") for s, c in enumerate((0, 0, 0, 9))]
    fig = F.massive_counts(pd.DataFrame(rows))
    for trace in fig.data:
        assert trace.y[0] == 2.25
        assert trace.y[0] - trace.error_y.arrayminus[0] == 0.0
        assert trace.y[0] + trace.error_y.array[0] == pytest.approx(6.75)
        assert "bootstrap 95% CI over texts" in trace.hovertemplate
    assert "bootstrap 95% CI over texts" in fig.layout.title.text and "std" not in fig.layout.title.text


def test_exp2_figure_says_which_interval_is_which():
    import numpy as np
    import pandas as pd

    from drope_lens.outputs import figures as F

    rng = np.random.default_rng(0)
    rows = []
    for v in ("rope", "drope"):
        for condition, seeds in (("baseline", [-1]), ("massive", [-1]), ("random", [0, 1, 2])):
            for seed in seeds:
                for sample in range(5):
                    nll = float(rng.uniform(1, 3))
                    rows.append({"model": f"m-{v}", "variant": v, "condition": condition, "seed": seed,
                                 "sample": sample, "nll": nll, "ppl": float(np.exp(nll)),
                                 "n_zeroed_q": 3, "n_zeroed_k": 3})
    fig = F.disruption(pd.DataFrame(rows), n_bootstrap=200)
    notes = " ".join(a.text for a in fig.layout.annotations)
    assert "baseline and massive zeroed: bootstrap 95% CI of the mean over 5 evaluation texts" in notes
    assert "random zeroed: ± std over 3 seeds" in notes and "Right: bootstrap 95% CI over texts" in notes


def test_wilson_bounds_are_exactly_0_and_1_at_the_ends():
    import numpy as np
    from scipy.stats import binomtest

    from drope_lens.outputs import figures as F
    from drope_lens.measurement.passkey import wilson_interval

    for n in (1, 5, 20, 37):
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
        low, high = F.wilson(np.array([0, n]), np.array([n, n]))
        assert low[0] == 0.0 and high[1] == 1.0
        for k in (0, n // 2, n):  # elsewhere: scipy's Wilson interval
            ref = binomtest(k, n).proportion_ci(method="wilson")
            assert wilson_interval(k, n) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert repr(wilson_interval(0, 20)[0]) == "0.0"


def test_run_metadata_records_the_softmax_scale_the_model_uses(toy_pair):
    import math

    from drope_lens.engine.results import model_identity

    for model in toy_pair:
        identity = model_identity(model)
        assert model.lens.softmax_scale is None  # the toy checkpoints set none: 1/sqrt(d_head) applies
        assert identity["softmax_scale"] == pytest.approx(1 / math.sqrt(model.cfg.d_head)) == 1 / math.sqrt(32)
        assert identity["softmax_scale"] == pytest.approx(1 / model.cfg.attn_scale)  # what TransformerLens divides by
        assert identity["softmax_scale_from"] == "1/sqrt(d_head=32)"


# ------------------------------------------------------------------------------------------
# Point 6: the reproduction table cites what a reader can open; other models get no ratio.
# ------------------------------------------------------------------------------------------
SHARED = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared"


def test_shipped_study_sources_match_their_provenance():
    import hashlib
    import json

    from drope_lens.outputs import reproduction

    files = reproduction.provenance()
    cited = {s["file"] for s in reproduction.study_numbers()["source"] if "file" in s} | {"METHODS.md"}
    assert cited <= set(files)
    for name, entry in files.items():
        shipped = reproduction.shipped_source(name).read_bytes()
        if entry["kind"] == "copy":
            assert hashlib.sha256(shipped).hexdigest() == entry["sha256"] and len(shipped) == entry["bytes"]
        original = SHARED / entry["original"]
        if not original.is_file():
            continue  # the study's folder is not beside this checkout: the copies are checked by hash above
        raw = original.read_bytes()
        assert hashlib.sha256(raw).hexdigest() == entry["sha256"], name
        if entry["kind"] == "extract":  # every value of the extract is the original's, at the same path
            full, part = json.loads(raw), json.loads(shipped)

            def check(sub, ref):
                for key, value in sub.items():
                    if isinstance(value, dict):
                        check(value, ref[key])
                    else:
                        assert ref[key] == value

            check(part, full)


def test_a_toy_pair_run_is_shown_as_a_different_model_without_ratios():
    import pandas as pd

    from drope_lens.outputs import reproduction

    ours = {"massive_values": pd.DataFrame([{"key": "total_q", "variant": "rope", "value": 0.23}])}
    toy = reproduction.reproduction_table(ours, models={"massive_values": ["bundled:toy/rope", "bundled:toy/drope"]})
    row = toy[(toy.key == "total_q") & (toy.variant == "rope")].iloc[0]
    assert row.ours == 0.23 and row.study == 1475.5 and row.ratio != row.ratio and row.models == "different model"
    study = reproduction.study_models()
    same = reproduction.reproduction_table(ours, models={"massive_values": [study["rope"], study["drope"]]})
    row = same[(same.key == "total_q") & (same.variant == "rope")].iloc[0]
    assert row.ratio == pytest.approx(0.23 / 1475.5) and row.models == "the study's"


def test_report_of_other_models_says_different_model(tmp_path):
    import synthetic_results as S

    from drope_lens.outputs import report

    S.write_run(tmp_path, "layer_balance", S.layer_balance())
    page = report.build_report(tmp_path, tmp_path / "r.html").read_text()
    table = page.split("id='reproduction'", 1)[1]
    assert "These are not the study&#x27;s models" in table or "These are not the study's models" in table
    assert ">different model<" in table and "drope_lens/data/study/METHODS.md" in table
    assert "reference/seed-study" not in table  # a folder the reader does not have


# ------------------------------------------------------------------------------------------
# Point 8: the attention view's note says one true thing.
# ------------------------------------------------------------------------------------------
def test_truncated_attention_view_says_what_the_models_ran_on(toy_pair):
    from drope_lens.measurement.texts import toy_texts
    from drope_lens.outputs.views import attention_heads

    rope, drope = toy_pair
    text = " ".join(t.text for t in toy_texts(2))
    n = int(rope.to_tokens(text, truncate=False).shape[1])
    assert n > rope.cfg.n_ctx == 256
    for window in (None, (10, 50)):
        note = attention_heads(rope, drope, text, 1, truncate=True, window=window).note
        assert f"The text has {n} tokens, more than n_ctx=256: the models ran on its first 256 only" in note
        assert "whole text" not in note and "the models ran on those 256 tokens" in note
    short = attention_heads(rope, drope, text[:200], 1).note
    assert "cut" not in short and "more than n_ctx" not in short


def test_static_svg_draws_the_figure_data():
    """drope_lens.outputs.static.to_svg (what the notebook's HTML export shows): tick labels at the lengths
    run, every legend name, one cell per heatmap value coloured by plotly's own colour scale."""
    import re

    import plotly.colors as pc
    import plotly.graph_objects as go

    from drope_lens.outputs import figures as F
    from drope_lens.outputs.static import to_svg

    df = _passkey_results()
    svg = to_svg(F.context_length(df))
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    for tick in ("128", "256", "512"):
        assert f">{tick}</text>" in svg
    assert "RoPE (simple)" in svg and "DroPE (ruler)" in svg
    errors = to_svg(F.context_errors(df))
    assert all(f">{name}</text>" in errors for name in ("exact", "near_miss", "wrong_digits"))
    heat = go.Figure(go.Heatmap(z=[[-1.0, 0.0, 1.0], [0.5, -0.5, 1.0]], colorscale="RdBu", zmid=0))
    svg = to_svg(heat)
    cells = re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="[\d.]+" height="[\d.]+" fill="(rgb\([^)]*\))"/>', svg)
    scale = pc.get_colorscale("RdBu")
    assert cells[0] == scale[0][1].replace(" ", "") and cells[2] == scale[-1][1].replace(" ", "")
    assert len(cells) == 6 + 40  # the six cells, then the colour bar's 40 steps
