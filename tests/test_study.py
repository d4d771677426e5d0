"""`drope-lens study`: every experiment on the bundled pair, then the report with all ten; and the
CPU thread policy of a `drope-lens` process."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from drope_lens.cli import main


def test_a_drope_lens_process_lets_idle_openmp_workers_sleep():
    """libgomp itself reports its spin count (OMP_DISPLAY_ENV): 20,000 (spin about 0.2 ms, then
    sleep) once the CLI module is imported before torch; a policy or spin count the user set is kept
    (ACTIVE: libgomp's own long spin)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    env["OMP_DISPLAY_ENV"] = "VERBOSE"

    def spincount(code: str, **extra: str) -> str:
        out = subprocess.run([sys.executable, "-c", code + "; import torch; torch.ones(4).sum()"],
                             env={**env, **extra}, capture_output=True, text=True, check=True)
        found = re.search(r"GOMP_SPINCOUNT = '(\d+)'", out.stderr)
        if not found:
            pytest.skip("this torch does not run on libgomp (no OMP_DISPLAY_ENV report)")
        return found.group(1)

    assert spincount("import drope_lens.cli") == "20000"
    assert spincount("pass") != "20000"  # without the CLI module: libgomp's own default
    assert spincount("import drope_lens.cli", OMP_WAIT_POLICY="ACTIVE") not in ("0", "20000")
    assert spincount("import drope_lens.cli", OMP_WAIT_POLICY="PASSIVE") == "0"
    assert spincount("import drope_lens.cli", GOMP_SPINCOUNT="5") == "5"


def test_study_runs_all_ten_experiments_on_the_toy_pair_and_reports_them(tmp_path, monkeypatch, capsys):
    """`drope-lens study --sizes smoke`: every experiment command runs on the bundled pair (each
    checkpoint loaded once for all of them) and the report has every experiment, none missing."""
    import drope_lens.model.loading as loading
    from drope_lens.experiments import CLI_EXPERIMENTS
    from drope_lens.outputs.report import SECTIONS

    loads = []
    original = loading.load_model

    def counting_load(source, *args, **kwargs):
        loads.append(source)
        return original(source, *args, **kwargs)

    monkeypatch.setattr(loading, "load_model", counting_load)
    results, out = tmp_path / "results", tmp_path / "report.html"
    assert main(["study", "--sizes", "smoke", "--device", "cpu", "--out", str(results), "--report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert [line.split()[3] for line in printed.splitlines() if line.startswith("== drope-lens run ")] == list(CLI_EXPERIMENTS)
    assert sorted(loads) == ["bundled:toy/drope", "bundled:toy/rope"]
    table = printed[printed.index("study time, seconds"):].splitlines()[1:]
    assert [line.split()[0] for line in table] == [*CLI_EXPERIMENTS, "report", "total"]
    page = out.read_text()
    assert f"{len(SECTIONS)} of {len(SECTIONS)} experiments present, 0 missing." in page and len(SECTIONS) == 10
    assert re.findall(r"<h2 id='([a-z0-9_]+)'>", page) == [*SECTIONS, "reproduction"]
    assert len([p for p in results.iterdir() if any(p.glob("*/data.parquet"))]) == 10
