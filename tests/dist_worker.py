"""One rank of the distributed tests (tests/test_distributed.py launches it with torchrun, gloo, CPU).

Each ``--job KIND:DIR`` runs, with batch-shape-dependent numbers (:func:`batch_shape_dependent`), on the bundled toy pair (both models) and pickles what ``run``
returned on this rank to ``<out>/<tag>-rank<r>.pkl``:

- ``mv:DIR`` / ``dis:DIR``: Exp 1 / Exp 2 through the Python API with a RunStore under DIR;
  ``mv:-`` / ``dis:-`` without a store; ``meas:-``: Exp 4 and 7 in one ``measure()`` call without a
  store (whole frames per chunk of texts, gathered from both ranks);
- ``cli:DIR``: ``drope-lens run massive-values`` and ``... disruption`` with ``--out DIR``;
- ``all:DIR``: every experiment of ``drope-lens run`` at the tiny sizes of :data:`ALL_CLI` (toy DroPE), with
  ``--out DIR --run-id t`` (tests/test_torchrun_all.py); ``--die-exp X``: rank 1 is killed after
  its first write in experiment X.

``--die-after N``: rank 1 exits at once (``os._exit``, no cleanup: a killed process) after
writing N parts or batch checkpoints in the job named by ``--die-in``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import pickle
import sys
from pathlib import Path

import torch

# The same small settings in the worker and in the single-process references of the test.
N_TEXTS_MV = 8
MV = dict(max_tokens=48, batch_size=2)  # 4 planned chunks of 2 texts
DIS = dict(seeds=2, max_tokens=48, batch_size=3)  # 4 conditions x 4 texts = 16 rows, 6 planned batches
CLI_COMMON = ["--device", "cpu", "--max-tokens", "48"]
CLI_MV = ["run", "massive-values", "--n-texts", "6", "--batch-size", "2", *CLI_COMMON]
CLI_DIS = ["run", "disruption", "--seeds", "2", "--n-identification", "2", "--n-evaluation", "4",
           "--batch-size", "3", *CLI_COMMON]

#: Every ``drope-lens run`` command at tiny sizes (the toy DroPE model only), each with several
#: planned batches (or units) to share between two ranks.
_TEXTS = ["--n-texts", "3", "--batch-size", "2", "--max-tokens", "32"]
_ABLATION = ["--prompts", "2", "--tasks", "cities", "--n-reference", "2", "--n-evaluation", "2", "--batch-size", "2",
             "--max-tokens", "32"]
ALL_CLI = {
    "massive-values": _TEXTS,
    "disruption": ["--seeds", "1", "--n-identification", "2", "--n-evaluation", "3", "--batch-size", "2",
                   "--max-tokens", "32"],
    "knowledge": ["--tasks", "cities,passkey", "--prompts", "2", "--new-tokens", "2", "--batch-size", "2",
                  "--reference-tokens", "32"],
    "bos-ablation": [*_ABLATION, "--conditions", "baseline,bos_mlp"],
    "layer1-ablation": [*_ABLATION, "--conditions", "baseline,l1_mlp"],
    "sinks": _TEXTS,
    "bos-write": _TEXTS,
    "attention-structure": _TEXTS,
    "layer-balance": _TEXTS,
    "context-length": ["--lengths", "128", "--trials", "2", "--max-new-tokens", "3"],
}


def run_all(directory, *, only=None, before_each=None) -> list[int]:
    """``drope-lens run X ... --out directory --run-id t`` for every X of :data:`ALL_CLI` (or ``only``)."""
    from drope_lens.cli import main as cli_main

    codes = []
    for command, options in ALL_CLI.items():
        if only is not None and command not in only:
            continue
        if before_each is not None:
            before_each(command)
        codes.append(cli_main(["run", command, "--drope", "bundled:toy/drope", "--device", "cpu", "--out",
                               str(directory), "--run-id", "t", *options]))
    return codes


@contextlib.contextmanager
def like_a_worker():
    """One CPU thread as each torchrun worker (OMP_NUM_THREADS=1), and batch-shape-dependent
    numbers as in the workers (see :func:`batch_shape_dependent`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with batch_shape_dependent():
            yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def batch_shape_dependent():
    """Numbers that depend on the batch shape, as GPU GEMMs may (CPU ones here do not): the
    comparisons then fail if any row is computed with other batch mates than in one process."""
    from drope_lens.measurement import analysis
    from drope_lens.experiments import massive_values
    from drope_lens.model.transformer import DropeLensTransformer

    original_forward, original_norms = DropeLensTransformer.run_with_hooks, analysis.sequence_norms

    def forward(self, tokens, *args, **kwargs):
        out = original_forward(self, tokens, *args, **kwargs)
        return None if out is None else out * (1 + 1e-3 * tokens.shape[0])

    def norms(model, tokens, *args):
        return {k: v * (1 + 1e-3 * tokens.shape[0]) for k, v in original_norms(model, tokens, *args).items()}

    DropeLensTransformer.run_with_hooks = forward
    massive_values.sequence_norms = analysis.sequence_norms = norms  # Exp 1, and Exp 2's identification
    try:
        yield
    finally:
        DropeLensTransformer.run_with_hooks = original_forward
        massive_values.sequence_norms = analysis.sequence_norms = original_norms


def texts():
    from drope_lens.measurement.texts import toy_texts

    all_texts = toy_texts()
    return all_texts[:N_TEXTS_MV], all_texts[:2], all_texts[2:6]


def run_mv(models, store_root):
    from drope_lens.experiments import massive_values
    from drope_lens.engine.results import RunStore

    mv_texts, _, _ = texts()
    store = RunStore(store_root, "massive_values", "run") if store_root else None
    return [massive_values.run(m, mv_texts, store=store, show_progress=False, **MV) for m in models]


def run_meas(models, store_root):
    from drope_lens.engine.measure import measure
    from drope_lens.engine.results import RunStore
    from drope_lens.experiments import attention_structure, sinks

    mv_texts, _, _ = texts()
    parts = [sinks.measurement(sinks.SinksConfig()),
             attention_structure.measurement(attention_structure.AttentionStructureConfig())]
    store = RunStore(store_root, "measure", "run") if store_root else None
    return [measure(m, mv_texts[:5], parts, max_tokens=40, batch_size=2, store=store, show_progress=False)
            for m in models]


def run_dis(models, store_root):
    from drope_lens.experiments import disruption
    from drope_lens.engine.results import RunStore

    _, ident, evaluation = texts()
    store = RunStore(store_root, "disruption", "run") if store_root else None
    return [disruption.run(m, ident, evaluation, store=store, show_progress=False, **DIS) for m in models]


def _die_after(count: int) -> None:
    """Make this process exit abruptly after ``count`` more store writes."""
    from drope_lens.engine.results import RunStore

    written = [0]
    for name in ("save_part", "save_batch"):
        original = getattr(RunStore, name)

        def wrapper(self, *args, _original=original, **kwargs):
            _original(self, *args, **kwargs)
            written[0] += 1
            if written[0] >= count:
                sys.stdout.flush()
                os._exit(3)

        setattr(RunStore, name, wrapper)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--job", action="append", default=[])
    parser.add_argument("--die-after", type=int, default=0)
    parser.add_argument("--die-in", default=None)
    parser.add_argument("--die-exp", default=None)
    args = parser.parse_args()

    from drope_lens.engine import distributed

    me = distributed.init_from_env("cpu", timeout=datetime.timedelta(seconds=120))
    with batch_shape_dependent():
        return _jobs(args, me)


def _jobs(args, me) -> int:
    import drope_lens as dl
    from drope_lens.engine import distributed

    assert me.size == int(os.environ["WORLD_SIZE"]) and torch.distributed.get_backend() == "gloo"
    models = None
    for job in args.job:
        kind, _, directory = job.partition(":")
        store_root = None if directory == "-" else directory
        if args.die_after and job == args.die_in and me.rank == 1 and kind != "all":
            _die_after(args.die_after)
        if kind == "all":
            arm = lambda command: _die_after(1) if (job == args.die_in and me.rank == 1  # noqa: E731
                                                     and command == args.die_exp) else None
            result = run_all(directory, before_each=arm)
        elif kind == "cli":
            from drope_lens.cli import main as cli_main

            result = [cli_main([*CLI_MV, "--out", directory]), cli_main([*CLI_DIS, "--out", directory])]
        else:
            if models is None:
                models = dl.load_pair("toy")
            result = {"mv": run_mv, "dis": run_dis, "meas": run_meas}[kind](models, store_root)
        tag = f"{kind}-{Path(directory).name if store_root else 'nostore'}"
        with open(Path(args.out) / f"{tag}-rank{me.rank}.pkl", "wb") as handle:
            pickle.dump(result, handle)
        distributed.barrier()  # every rank's result is on disk before the next job (which may kill one)
    return 0


if __name__ == "__main__":
    sys.exit(main())
