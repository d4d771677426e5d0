"""Bit-identity check of every experiment's results before and after a refactor (issue 21).

Runs every ``drope-lens run <experiment>`` at small but non-trivial sizes on a COPY of the
bundled toy pair (so that a later re-training of the shipped pair cannot change the weights
between the two runs), each in its own process, then compares each ``data.parquet`` with the
baseline's: byte for byte, and as frames (``pandas.testing.assert_frame_equal``,
``check_exact=True``). One line per experiment.

    python -m drope_lens.benchmarks.parity run  --pair-dir /tmp/engine_baseline/pair --out /tmp/engine_baseline/before
    python -m drope_lens.benchmarks.parity run  --pair-dir /tmp/engine_baseline/pair --out /tmp/engine_after
    python -m drope_lens.benchmarks.parity compare /tmp/engine_baseline/before /tmp/engine_after

The copy is used under the bundled name (``bundled:toy/rope``, ...): the checkpoint folder the
package ships is swapped for the copy in each child process, so the toy pair's defaults (its
texts, task data, length grid, key divisor) apply exactly as with the shipped pair.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

#: command -> its options (sizes small enough for CPU, large enough for several batches and units)
COMMANDS: dict[str, list[str]] = {
    "massive-values": ["--n-texts", "5", "--batch-size", "2", "--max-tokens", "64"],
    "disruption": ["--seeds", "2", "--n-identification", "2", "--n-evaluation", "4", "--batch-size", "3",
                   "--max-tokens", "64"],
    "knowledge": ["--prompts", "4", "--new-tokens", "4", "--batch-size", "3", "--reference-tokens", "64"],
    "bos-ablation": ["--prompts", "3", "--n-reference", "2", "--n-evaluation", "3", "--batch-size", "2",
                     "--max-tokens", "64"],
    "layer1-ablation": ["--prompts", "3", "--n-reference", "2", "--n-evaluation", "3", "--batch-size", "2",
                        "--max-tokens", "64"],
    "sinks": ["--n-texts", "5", "--batch-size", "2", "--max-tokens", "64"],
    "bos-write": ["--n-texts", "5", "--batch-size", "2", "--max-tokens", "64"],
    "attention-structure": ["--n-texts", "5", "--batch-size", "2", "--max-tokens", "64"],
    "layer-balance": ["--n-texts", "5", "--batch-size", "2", "--max-tokens", "64"],
    "context-length": ["--lengths", "128", "256", "--trials", "3", "--max-new-tokens", "6", "--batch-tokens", "700"],
}

_CHILD = """
import sys
from pathlib import Path
try:
    from drope_lens.model import bundled
except ImportError:
    from drope_lens import bundled
pair = Path(sys.argv[1])
bundled.root = lambda name="toy": pair
from drope_lens.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_all(pair_dir: Path, out: Path, only: list[str]) -> int:
    failed = 0
    for command, options in COMMANDS.items():
        if only and command not in only:
            continue
        argv = ["run", command, "--pair", "toy", "--device", "cpu", "--out", str(out), "--run-id", "parity",
                "--overwrite", *options]
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(pair_dir), *argv], capture_output=True, text=True)
        took = time.perf_counter() - start
        (out / f"{command}.log").parent.mkdir(parents=True, exist_ok=True)
        (out / f"{command}.log").write_text(proc.stdout + proc.stderr)
        print(f"{command:<20} rc={proc.returncode} {took:6.1f} s", flush=True)
        failed += proc.returncode != 0
    return 1 if failed else 0


def _data_file(root: Path, command: str) -> Path:
    """``<root>/<experiment>/parity/data.parquet`` (experiments name their folder with - or _)."""
    for name in (command, command.replace("-", "_")):
        if (root / name / "parity" / "data.parquet").is_file():
            return root / name / "parity" / "data.parquet"
    return root / command / "parity" / "data.parquet"


def compare(before: Path, after: Path) -> int:
    import pandas as pd
    from pandas.testing import assert_frame_equal

    bad = 0
    for command in COMMANDS:
        paths = [_data_file(root, command) for root in (before, after)]
        if not all(p.is_file() for p in paths):
            print(f"{command:<20} MISSING {[str(p) for p in paths if not p.is_file()]}")
            bad += 1
            continue
        same_bytes = paths[0].read_bytes() == paths[1].read_bytes()
        a, b = (pd.read_parquet(p) for p in paths)
        try:
            assert_frame_equal(a, b, check_exact=True)
            frames = "frame-equal"
        except AssertionError as exc:
            frames = "FRAMES DIFFER: " + " ".join(str(exc).split())[:200]
        print(f"{command:<20} rows={len(a):>6} bytes {'identical' if same_bytes else 'DIFFER'}; {frames}")
        bad += not (same_bytes and frames == "frame-equal")
    print("all identical" if not bad else f"{bad} experiment(s) differ")
    return 1 if bad else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("--pair-dir", required=True, type=Path, help="a copy of drope_lens/data/toy")
    run.add_argument("--out", required=True, type=Path)
    run.add_argument("--only", nargs="*", default=[])
    cmp = sub.add_parser("compare")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "run":
        return run_all(args.pair_dir, args.out, args.only)
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
