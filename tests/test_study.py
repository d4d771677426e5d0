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
    """libgomp itself reports its spin count (OMP_DISPLAY_ENV): 0 (sleep at once) once the CLI module
    is imported before torch; a policy the user set is kept (ACTIVE: spin)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    env["OMP_DISPLAY_ENV"] = "VERBOSE"

    def spincount(code: str, **extra: str) -> str:
        out = subprocess.run([sys.executable, "-c", code + "; import torch; torch.ones(4).sum()"],
                             env={**env, **extra}, capture_output=True, text=True, check=True)
        found = re.search(r"GOMP_SPINCOUNT = '(\d+)'", out.stderr)
        if not found:
            pytest.skip("this torch does not run on libgomp (no OMP_DISPLAY_ENV report)")
        return found.group(1)

    assert spincount("import drope_lens.cli") == "0"
    assert spincount("import drope_lens.cli", OMP_WAIT_POLICY="ACTIVE") != "0"
