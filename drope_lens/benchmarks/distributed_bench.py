"""2-GPU evidence: data-parallel Exp 2 under torchrun, and a 7B model's layers split over 2 GPUs.

Both on a Llama-2-7B-shaped random bf16 pair (RoPE checkpoint with planted massive q/k dims and
its DroPE twin, written once under ``--workdir``):

    torchrun --standalone --nproc-per-node 2 -m drope_lens.benchmarks.distributed_bench sweep --out dist_sweep.json
    python -m drope_lens.benchmarks.distributed_bench split --out dist_split.json   # 2 GPUs visible

``sweep`` (data parallel): per model, Exp 2 (3 identification + 9 evaluation builtin texts, 10
seeds, batch 16) over a context-length grid (``--max-tokens``, default 128, 256, 512). In the
same processes it times rank 0 alone (``distributed.alone()``: the single-GPU run, the baseline)
and then all ranks sharing the planned batches; wall seconds (CUDA synchronised, every rank at a
barrier), medians of ``--repeat``. Prints and records ``speedup = t_1gpu / t_Ngpu`` and whether
the two DataFrames are equal (``DataFrame.equals``: bit-identical NLLs). The issue's target:
speedup >= 1.8 on 2 GPUs. The speedup is bounded by the plan: the rows are cut into
``ceil(rows / batch)`` batches whatever the world size (so results equal the single-GPU run's),
and every rank runs the identification forwards; the JSON records the batch count.

``split`` (one process, layers over 2 GPUs): forward of ``--batch`` x ``--tokens`` tokens on the
model loaded on ``cuda:0`` and with ``n_devices=2`` (layers 0-15 on cuda:0, 16-31 on cuda:1),
CUDA-event medians; records ``ratio = t_split / t_single`` (target <= 1.15) and the max |logit
difference| (expected 0: the same kernels on the same inputs).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from .random_checkpoint import SHAPES, massive_checkpoint, write_drope_twin, write_random_checkpoint, write_tokenizer


def _pair(workdir: Path, shape: str) -> tuple[Path, Path]:
    """Write (once) the RoPE checkpoint with planted massive dims, its tokenizer and DroPE twin."""
    from drope_lens.measurement.texts import builtin_texts

    if shape == "llama2-7b":
        rope = massive_checkpoint(workdir)
    else:  # a seconds-sized pair for a CPU smoke run of this script (``--shape tiny --device cpu``)
        rope = workdir / f"rope_massive_{shape}"
        if not (rope / "config.json").exists():
            write_random_checkpoint(rope, SHAPES[shape], massive_dims_per_head=2)
    if not (rope / "tokenizer.json").exists():
        write_tokenizer(rope, [t.text for t in builtin_texts()], vocab_size=min(8000, SHAPES[shape].vocab))
    drope = rope.with_name(rope.name.replace("rope", "drope", 1))
    if not (drope / "config.json").exists():
        write_drope_twin(rope, drope)
    return rope, drope


def _synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _wall(fn, repeat: int, device: str):
    """Median wall seconds of ``fn()`` over ``repeat`` runs, every rank synchronised at both ends."""
    from drope_lens.engine import distributed

    times, result = [], None
    for _ in range(repeat):
        _synchronize(device)
        distributed.barrier()
        start = time.perf_counter()
        result = fn()
        _synchronize(device)
        distributed.barrier()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def sweep(args) -> None:
    import drope_lens as dl
    from drope_lens.engine import distributed
    from drope_lens.experiments import disruption
    from drope_lens.engine.results import RunStore
    from drope_lens.measurement.texts import builtin_texts, split_texts

    me = distributed.init_from_env(args.device)
    pair = _pair(args.workdir, args.shape) if distributed.is_main() else None  # rank 0 writes, once
    rope, drope = distributed.broadcast(pair)
    ident, evaluation = split_texts(builtin_texts(), 3, 9)
    scratch = Path(tempfile.mkdtemp(prefix="dist_bench_")) if distributed.is_main() else None
    scratch = Path(distributed.broadcast(str(scratch)))
    device_name = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else args.device
    report: dict = {"device": device_name, "shape": args.shape, "world_size": me.size, "seeds": args.seeds,
                    "batch_size": args.batch_size, "runs": []}
    for variant, source in (("rope", rope), ("drope", drope)):
        model = dl.load_model(source, dtype=args.dtype, device=args.device)
        for max_tokens in args.max_tokens:
            settings = dict(seeds=args.seeds, max_tokens=max_tokens, batch_size=args.batch_size, show_progress=False)
            counter = [0]

            def run(store_name):
                counter[0] += 1
                store = RunStore(scratch, "disruption", f"{store_name}-{variant}-{max_tokens}-{counter[0]}")
                return disruption.run(model, ident, evaluation, store=store, **settings)

            disruption.run(model, ident, evaluation, **{**settings, "seeds": 1})  # warm-up on every rank
            if distributed.is_main():
                with distributed.alone():
                    t_one, df_one = _wall(lambda: run("one"), args.repeat, args.device)
            distributed.barrier()
            t_all, df_all = _wall(lambda: run("all"), args.repeat, args.device)
            if distributed.is_main():
                rows = (2 + args.seeds) * len(evaluation)
                entry = {"variant": variant, "max_tokens": max_tokens, "rows": rows,
                         "planned_batches": math.ceil(rows / args.batch_size),
                         "seconds_1_rank": t_one, f"seconds_{me.size}_ranks": t_all, "speedup": t_one / t_all,
                         "identical": bool(df_one.equals(df_all))}
                report["runs"].append(entry)
                print(json.dumps(entry), flush=True)
                args.out.write_text(json.dumps(report, indent=2))
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    distributed.barrier()
    if distributed.is_main():
        shutil.rmtree(scratch, ignore_errors=True)
        speedups = [r["speedup"] for r in report["runs"]]
        print(f"speedup of {me.size} ranks (GPUs) over 1: min {min(speedups):.2f}, median {statistics.median(speedups):.2f}; "
              f"identical results: {all(r['identical'] for r in report['runs'])}; wrote {args.out}")


def split(args) -> None:
    import drope_lens as dl

    if torch.cuda.device_count() < 2:
        raise SystemExit(f"split needs 2 visible GPUs; {torch.cuda.device_count()} found.")
    rope, _ = _pair(args.workdir, "llama2-7b")
    tokens = torch.randint(3, 8000, (args.batch, args.tokens), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = 1
    report: dict = {"device": torch.cuda.get_device_name(), "batch": args.batch, "tokens": args.tokens}
    times, logits = {}, {}
    for name, n_devices in (("single", 1), ("split", 2)):
        model = dl.load_model(rope, dtype="bf16", device="cuda:0", n_devices=n_devices)
        batch = tokens.cuda(0)
        with torch.inference_mode():
            for _ in range(3):
                model(batch)
            samples = []
            for _ in range(args.repeat):  # wall time: the forward spans two devices' streams
                torch.cuda.synchronize(0)
                torch.cuda.synchronize(1)
                start = time.perf_counter()
                out = model(batch)
                torch.cuda.synchronize(0)
                torch.cuda.synchronize(1)
                samples.append(time.perf_counter() - start)
            times[name] = statistics.median(samples)
            logits[name] = out.float().cpu()
        del model, out
        torch.cuda.empty_cache()
    report.update(seconds_single=times["single"], seconds_split=times["split"],
                  ratio=times["split"] / times["single"],
                  max_abs_logit_difference=float((logits["split"] - logits["single"]).abs().max()))
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"layer split over 2 GPUs: {report['ratio']:.3f}x the single-GPU forward (target <= 1.15); wrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("sweep", help="Exp 2 on 1 GPU vs all ranks (run under torchrun)")
    s.add_argument("--seeds", type=int, default=10)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--max-tokens", type=int, nargs="+", default=[128, 256, 512])
    s.add_argument("--repeat", type=int, default=3)
    s.add_argument("--shape", choices=sorted(SHAPES), default="llama2-7b", help="tiny: a CPU smoke run")
    s.add_argument("--device", default="cuda", help="cuda (each rank its GPU) or cpu (gloo, smoke run)")
    s.add_argument("--dtype", default="bf16")
    p = sub.add_parser("split", help="forward of the model on 1 GPU vs its layers over 2 GPUs")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--repeat", type=int, default=10)
    for sub_parser, default in ((s, "dist_sweep.json"), (p, "dist_split.json")):
        sub_parser.add_argument("--workdir", type=Path, default=Path("/tmp/drope_lens_bench"))
        sub_parser.add_argument("--out", type=Path, default=Path(default))
    args = parser.parse_args()
    (sweep if args.mode == "sweep" else split)(args)


if __name__ == "__main__":
    main()
