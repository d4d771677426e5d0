"""Sweeps under torchrun (2 CPU ranks, gloo) against the same sweeps in one process.

Two torchrun launches of ``dist_worker.py`` (each 2 ranks) cover: Exp 1 and Exp 2 through the
Python API with and without a store, both CLI commands, a directory left half-done by one
process and finished by two, and a rank killed mid-sweep (Exp 1 in the first launch, Exp 2 in
the second) with the rerun by two ranks (Exp 1) or by one process (Exp 1 and Exp 2). Every
result is compared with ``DataFrame.equals`` (exact) to the single-process run with the same
settings and, like each torchrun worker, one CPU thread; in both, the numbers are made to depend
on the batch shape (as GPU GEMMs may), so a row computed with other batch mates would differ.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

import dist_worker as W
import drope_lens as dl
from drope_lens.engine import distributed
from drope_lens.engine.sweep import progress
from drope_lens.engine.sweep import gather, plan_sweep
from drope_lens.engine.results import RunStore

WORKER = Path(__file__).parent / "dist_worker.py"


# ------------------------------------------------------------------------------------------
# Without processes: ranks from the environment, sharding, plans
# ------------------------------------------------------------------------------------------
def _torchrun_env(monkeypatch, rank: int, size: int, local: int) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(size))
    monkeypatch.setenv("LOCAL_RANK", str(local))


def test_world_outside_and_inside_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.world() == (0, 1, 0) and distributed.is_main() and not distributed.launched()
    distributed.barrier()  # no group, nothing to wait for
    assert distributed.all_gather({"a": 1}) == [{"a": 1}] and distributed.broadcast(5) == 5
    _torchrun_env(monkeypatch, 3, 4, 1)
    assert distributed.world() == distributed.World(rank=3, size=4, local_rank=1) and not distributed.is_main()
    assert distributed.rank_device("cpu") == torch.device("cpu")
    assert distributed.rank_device("cuda:5") == torch.device("cuda", 5)
    assert distributed.rank_device("cuda", n_devices=2) == torch.device("cuda", 2)  # GPUs 2, 3 hold this replica
    _torchrun_env(monkeypatch, 4, 4, 0)
    with pytest.raises(ValueError, match="RANK=4"):
        distributed.world()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK='x'"):
        distributed.world()


@pytest.mark.parametrize("size", [1, 2, 3, 5])
@pytest.mark.parametrize("weighted", [False, True])
def test_shard_is_a_deterministic_balanced_partition(size, weighted):
    items = list(range(11))
    costs = [float((7 * k) % 5 + 1) for k in items] if weighted else None
    shares = [distributed.shard(items, costs, me=distributed.World(r, size, r)) for r in range(size)]
    assert sorted(k for share in shares for k in share) == items  # every item on exactly one rank
    assert all(share == sorted(share) for share in shares)  # plan order kept
    assert shares == [distributed.shard(items, costs, me=distributed.World(r, size, r)) for r in range(size)]
    loads = [sum(costs[k] if costs else 1 for k in share) for share in shares]
    biggest = max(costs) if costs else 1
    assert max(loads) <= sum(loads) / size + biggest  # greedy bound: within one item of the even split
    with pytest.raises(ValueError, match="costs"):
        distributed.shard(items, [1.0])


def test_progress_and_tables_on_rank_zero_only(monkeypatch, capsys):
    from drope_lens.engine.runner import print_table

    _torchrun_env(monkeypatch, 1, 2, 1)
    assert progress(range(3), 3, "x").disable
    print_table("title", pd.DataFrame({"a": [1]}))
    assert capsys.readouterr().out == ""
    with distributed.quiet_unless_main():
        print("hidden")
    assert capsys.readouterr().out == ""
    _torchrun_env(monkeypatch, 0, 2, 0)
    assert not progress(range(3), 3, "x").disable


def test_plan_sweep_runs_what_feeds_unfinished_units(tmp_path):
    store = RunStore(tmp_path, "e", "r")
    store.save_part("u1", pd.DataFrame({"x": [1]}))
    store.save_batch("b2", pd.DataFrame({"x": [2]}))
    plan = plan_sweep([["u1"], ["u1", "u2"], ["u3"], ["u2"]], store, checkpoints=["b0", "b1", "b2", "b3"])
    assert plan.done == {"u1"} and plan.needed == (1, 2, 3) and plan.saved == (2,) and plan.todo == (1, 3)
    assert plan.mine == plan.todo  # one rank runs everything
    assert gather({1: "a"}) == {1: "a"}
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporaries
    store.drop_batches(["b2"])
    assert not store.batches.exists()


# ------------------------------------------------------------------------------------------
# Two ranks under torchrun
# ------------------------------------------------------------------------------------------
_one_thread = W.like_a_worker


class _Interrupted(Exception):
    pass


@contextmanager
def _interrupt_after(monkeypatch, count: int):
    """The single process stops (an exception) after ``count`` parts or batch checkpoints."""
    written = [0]
    for name in ("save_part", "save_batch"):
        original = getattr(RunStore, name)

        def wrapper(self, *args, _original=original, **kwargs):
            _original(self, *args, **kwargs)
            written[0] += 1
            if written[0] >= count:
                raise _Interrupted

        monkeypatch.setattr(RunStore, name, wrapper)
    try:
        yield
    except _Interrupted:
        pass
    finally:
        monkeypatch.undo()


def _torchrun(out: Path, jobs: list[str], *, die_in: str = None) -> subprocess.CompletedProcess:
    out.mkdir(parents=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--max-restarts", "0", "--monitor-interval", "0.1", str(WORKER), "--out", str(out)]
    for job in jobs:
        command += ["--job", job]
    if die_in:
        command += ["--die-in", die_in, "--die-after", "1"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)


def _parts(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*/run/parts/*.parquet"))


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    from drope_lens.cli import main as cli_main

    root = tmp_path_factory.mktemp("dist")
    mp = pytest.MonkeyPatch()
    with _one_thread():
        models = dl.load_pair("toy")
        reference = {"mv": W.run_mv(models, None), "dis": W.run_dis(models, None), "meas": W.run_meas(models, None)}
        with _interrupt_after(mp, 3):  # one process, stopped after 3 of 16 parts
            W.run_mv(models, root / "D")
        with _interrupt_after(mp, 2):  # and after 2 of 12 batch checkpoints
            W.run_dis(models, root / "D")
        assert cli_main([*W.CLI_MV, "--out", str(root / "C1")]) == 0
        assert cli_main([*W.CLI_DIS, "--out", str(root / "C1")]) == 0
    partial_d = _parts(root / "D")
    first = _torchrun(root / "out1", [f"mv:{root}/A", f"dis:{root}/A", "mv:-", "dis:-", "meas:-", f"cli:{root}/C",
                                      f"mv:{root}/D", f"dis:{root}/D", f"mv:{root}/B1"], die_in=f"mv:{root}/B1")
    if (root / "B1").is_dir():  # (absent only if the launch failed before its last job: the tests say so)
        shutil.copytree(root / "B1", root / "B1-copy")
    second = _torchrun(root / "out2", [f"mv:{root}/B1", f"dis:{root}/B2"], die_in=f"dis:{root}/B2")
    killed_b2 = {"parts": _parts(root / "B2"), "batches": sorted(p.name for p in root.glob("B2/*/run/batches/*"))}
    return SimpleNamespace(root=root, reference=reference, first=first, second=second, partial_d=partial_d,
                           killed_b1=_parts(root / "B1-copy"), killed_b2=killed_b2, models=models)


def _result(out: Path, tag: str, rank: int):
    with open(out / f"{tag}-rank{rank}.pkl", "rb") as handle:
        return pickle.load(handle)


def _assert_equal(frames, reference) -> None:
    assert len(frames) == len(reference) == 2  # RoPE and DroPE
    for got, want in zip(frames, reference):
        assert got.equals(want), (got.compare(want) if got.shape == want.shape else (got.shape, want.shape))


def _log(run: subprocess.CompletedProcess) -> str:
    return f"rc={run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"


def test_two_ranks_give_the_single_process_results(sweeps):
    out = sweeps.root / "out1"
    for tag, experiment in (("mv-A", "mv"), ("dis-A", "dis"), ("mv-nostore", "mv"), ("dis-nostore", "dis")):
        for rank in (0, 1):  # every rank returns the whole run
            assert (out / f"{tag}-rank{rank}.pkl").is_file(), _log(sweeps.first)
            _assert_equal(_result(out, tag, rank), sweeps.reference[experiment])
    for rank in (0, 1):  # measure() without a store: whole frames per chunk (3 chunks), from both ranks
        got, want = _result(out, "meas-nostore", rank), sweeps.reference["meas"]
        for name in ("sinks", "attention_structure"):
            _assert_equal([frames[name] for frames in got], [frames[name] for frames in want])
            assert sorted(set(got[0][name]["sample"])) == list(range(5))
    # parts are named by unit (never by rank); conditions assembled from both ranks' batches
    assert len(_parts(sweeps.root / "A")) == 2 * W.N_TEXTS_MV + 2 * (2 + W.DIS["seeds"])
    assert not list((sweeps.root / "A").rglob("batches")) and not list((sweeps.root / "A").rglob("*.tmp"))


def test_cli_under_torchrun_writes_what_one_process_writes(sweeps):
    assert _result(sweeps.root / "out1", "cli-C", 0) == [0, 0], _log(sweeps.first)
    for experiment in ("massive_values", "disruption"):
        (one,) = (sweeps.root / "C1" / experiment).iterdir()
        (two,) = (sweeps.root / "C" / experiment).iterdir()
        assert one.name == two.name  # the run id does not depend on the world size
        assert pd.read_parquet(two / "data.parquet").equals(pd.read_parquet(one / "data.parquet"))
        meta_one, meta_two = (json.loads((d / "meta.json").read_text()) for d in (one, two))
        assert (meta_one["world_size"], meta_two["world_size"]) == (1, 2)
        assert meta_two["config"] == meta_one["config"] and meta_two["models"] == meta_one["models"]
    # rank 0 alone prints the tables
    assert sweeps.first.stdout.count("Perplexity over evaluation texts") == 1, _log(sweeps.first)
    assert sweeps.first.stdout.count("Massive-value counts, total over layers") == 1, _log(sweeps.first)


def test_directory_of_one_process_is_finished_by_two_ranks(sweeps):
    assert 0 < len(sweeps.partial_d) < 2 * W.N_TEXTS_MV + 2 * (2 + W.DIS["seeds"])  # really interrupted
    out = sweeps.root / "out1"
    for rank in (0, 1):
        _assert_equal(_result(out, "mv-D", rank), sweeps.reference["mv"])
        _assert_equal(_result(out, "dis-D", rank), sweeps.reference["dis"])


def test_killed_rank_rerun_by_two_ranks(sweeps):
    assert sweeps.first.returncode != 0, _log(sweeps.first)  # rank 1 was killed in the last job
    assert 0 < len(sweeps.killed_b1) < 2 * W.N_TEXTS_MV  # mid-sweep: some texts saved, not all
    out = sweeps.root / "out2"
    for rank in (0, 1):
        assert (out / f"mv-B1-rank{rank}.pkl").is_file(), _log(sweeps.second)
        _assert_equal(_result(out, "mv-B1", rank), sweeps.reference["mv"])


def test_directories_of_two_ranks_are_finished_by_one_process(sweeps):
    assert sweeps.second.returncode != 0, _log(sweeps.second)  # rank 1 killed during Exp 2
    assert sweeps.killed_b2["batches"] and not sweeps.killed_b2["parts"]  # rows checkpointed, no condition whole
    with _one_thread():
        _assert_equal(W.run_mv(sweeps.models, sweeps.root / "B1-copy"), sweeps.reference["mv"])
        _assert_equal(W.run_dis(sweeps.models, sweeps.root / "B2"), sweeps.reference["dis"])
    assert not list((sweeps.root / "B2").rglob("batches"))  # checkpoints dropped once the conditions are saved
