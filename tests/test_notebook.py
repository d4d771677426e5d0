"""The walk-through notebook runs top to bottom on a CPU; any cell error fails the suite."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "patching_rope_vs_drope.ipynb"


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    # One thread in the kernel: the toy model is small, and two-thread BLAS next to pytest's own
    # process oversubscribes a 2-core machine (measured: 8x slower forwards).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "commit the notebook without outputs"
    start = time.perf_counter()
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on any cell error
    elapsed = time.perf_counter() - start
    assert elapsed < 180, f"the notebook took {elapsed:.0f} s; it must run in under 3 minutes on a CPU"

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "DroPE next token" in text and "hook_q == hook_rot_q: True" in text  # DroPE: no rotary step
    assert "hook_q == hook_rot_q: False" in text  # RoPE: rotary applied
    plots = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(plots) == 4  # logit lens, residual patching, head patching, Exp 1
    # each also carries a static SVG: what an HTML export or GitHub shows (they cannot run plotly.js)
    assert all(o["data"].get("image/svg+xml", "").startswith("<svg") for o in plots)
    assert "it/s]" not in text and len(text.splitlines()) < 20  # no progress-bar lines
    residual, heads = (plots[1]["data"]["application/vnd.plotly.v1+json"]["layout"],
                       plots[2]["data"]["application/vnd.plotly.v1+json"]["layout"])
    assert residual["xaxis"].get("showticklabels", True) and residual["xaxis"]["tickangle"] == -90  # token labels
    assert all(heads[a]["dtick"] == 1 for a in ("xaxis", "yaxis", "xaxis2", "yaxis2"))  # integer layer/head ticks
    prose = [c.source for c in notebook.cells if c.cell_type == "markdown" and "What it shows" in c.source]
    assert len(prose) == 5  # logit lens, residual patching, head patching, hooks, Exp 1
    views = [o for o in outputs if "CircuitsVis.AttentionHeads" in o.get("data", {}).get("text/html", "")]
    assert len(views) == 1 and "var CircuitsVis=" in views[0]["data"]["text/html"]  # bundle inlined: offline
