"""Every experiment under torchrun (2 CPU ranks, gloo) gives what one process gives (issue 21).

One process runs every ``drope-lens run`` command at tiny sizes (tests/dist_worker.py ALL_CLI) on
the bundled toy pair: the reference. It also runs each of them into a second directory and is
stopped (an exception) after its first saved part or batch checkpoint. Then two torchrun launches
of 2 ranks each:

1. every experiment into a fresh directory K, rank 1 killed (``os._exit``) after its first write
   in experiment :data:`KILLED` (the launch dies there: the experiments before it are finished by
   two ranks, that one is half done, the later ones are not started);
2. every experiment into K again (the killed run resumed, the rest run from scratch by two ranks)
   and into the directory the single process left unfinished.

Each experiment's ``data.parquet`` in both directories must equal the reference exactly. The
numbers depend on the batch shape in every process (dist_worker.batch_shape_dependent), so a row
computed with other batch mates than in the single process fails the comparison.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from pandas.testing import assert_frame_equal

import dist_worker as W
from drope_lens.engine.results import RunStore

WORKER = Path(__file__).parent / "dist_worker.py"
KILLED = "sinks"  # the experiment in which rank 1 is killed


_one_thread = W.like_a_worker


class _Stop(Exception):
    pass


def _stop_after_first_write(monkeypatch):
    """From now on, the process raises after its next part or batch checkpoint."""
    for name in ("save_part", "save_batch"):
        original = getattr(RunStore, name)

        def wrapper(self, *args, _original=original, **kwargs):
            _original(self, *args, **kwargs)
            raise _Stop

        monkeypatch.setattr(RunStore, name, wrapper)


def _torchrun(out: Path, jobs: list[str], *, die_in: str = None) -> subprocess.CompletedProcess:
    out.mkdir(parents=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--max-restarts", "0", "--monitor-interval", "0.1", str(WORKER), "--out", str(out)]
    for job in jobs:
        command += ["--job", job]
    if die_in:
        command += ["--die-in", die_in, "--die-exp", KILLED]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run(command, capture_output=True, text=True, timeout=400, env=env)


def _data(root: Path, command: str) -> Path:
    (path,) = [p for p in root.glob("*/t/data.parquet") if p.parent.parent.name in (command, command.replace("-", "_"))]
    return path


def _parts(root: Path, command: str) -> list[str]:
    """The parts and batch checkpoints an experiment has saved in ``root``."""
    return [p.name for p in root.glob("*/t/*/*.parquet") if p.parent.name in ("parts", "batches")
            and p.parent.parent.parent.name in (command, command.replace("-", "_"))]


def _log(run: subprocess.CompletedProcess) -> str:
    return f"rc={run.returncode}\n{run.stdout[-2000:]}\n{run.stderr[-6000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("all")
    with _one_thread():
        assert W.run_all(root / "R") == [0] * len(W.ALL_CLI)
        for command in W.ALL_CLI:  # each experiment stopped after its first write
            mp = pytest.MonkeyPatch()
            _stop_after_first_write(mp)
            try:
                with pytest.raises(_Stop):
                    W.run_all(root / "D", only=[command])
            finally:
                mp.undo()
    partial = {command: _parts(root / "D", command) for command in W.ALL_CLI}
    first = _torchrun(root / "out1", [f"all:{root}/K"], die_in=f"all:{root}/K")
    killed = _parts(root / "K", KILLED)
    killed_finished = any(p.parent.parent.name == KILLED for p in (root / "K").glob("*/t/data.parquet"))
    second = _torchrun(root / "out2", [f"all:{root}/K", f"all:{root}/D"])
    return SimpleNamespace(root=root, first=first, second=second, partial=partial, killed=killed,
                           killed_finished=killed_finished)


def test_the_rank_was_killed_mid_run(runs):
    assert runs.first.returncode != 0, _log(runs.first)
    assert runs.killed, "rank 1 was killed before any part of the experiment was saved"
    assert not runs.killed_finished, f"{KILLED} finished before rank 1 was killed"
    assert runs.second.returncode == 0, _log(runs.second)


@pytest.mark.parametrize("command", list(W.ALL_CLI))
def test_two_ranks_finish_what_one_process_computes(runs, command):
    assert runs.partial[command], f"{command}: the single process was not stopped mid-run"
    reference = pd.read_parquet(_data(runs.root / "R", command))
    for directory in ("K", "D"):  # killed rank resumed / one process's run finished by two ranks
        got = pd.read_parquet(_data(runs.root / directory, command))
        assert_frame_equal(got, reference, check_exact=True, obj=f"{command} in {directory}")
