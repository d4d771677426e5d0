"""The whole study on a Llama-2-7B-shaped random bf16 pair, each experiment against the bare
Hugging Face forwards it needs.

    python -m drope_lens.benchmarks.study_bench --workdir /tmp/bench --out study_bench.json

Every experiment runs as ``drope-lens run`` runs it, at the study's sizes, on both models (RoPE,
then DroPE; the shared checkpoint of :func:`.random_checkpoint.bench_pair`):

==================  ==========================================================================
massive-values      Exp 1: 10 texts x 512 tokens
disruption          Exp 2: 3 identification + 9 evaluation texts x 512 tokens, 10 seeds
knowledge           Exp 3: 420 prompts (cities, sports, sentiment, passkey) x (baseline,
                    topk_mean_q_k), logit scoring + 20 greedy new tokens
bos-ablation        Exp 4/5: perplexity (9 texts) and the 4 tasks under 4 conditions
layer1-ablation     Exp 6: the same under 5 conditions
sinks, bos-write,   Exp 4, 5, 7, 8-9: 10 texts x 512 tokens each (one measurement forward each,
attention-structure, as the study's separate commands do)
layer-balance
context-length      Exp 10: lengths ``--lengths`` (study: 512 .. 16384) x 2 formats x ``--n``
                    trials (study: 20), greedy answers (20 tokens) and verification
==================  ==========================================================================

For each, the wall time of ``run(...)`` (CUDA synchronised, tokenising and DataFrames included)
and the **HF work**: every forward the run made is recorded (batch, new positions, cached
positions, whether all positions' logits were needed) and the same shapes are replayed through
``transformers`` ``LlamaForCausalLM`` (sdpa, bf16, no hooks, no padding), in order, with a KV cache
where the run had one (a cache of another shape is built untimed first); the HF work is the sum of
CUDA-event times of those replayed forwards. The ratio ours / HF work is what drope_lens's hooks,
statistics and host code cost on top of the forwards the experiment needs (targets: <= 1.2x;
attention statistics <= 1.5x). Random weights: speed does not depend on the values; accuracies are
meaningless here. Progress is printed as each experiment starts and finishes; the JSON is rewritten
after each. ``--repeat N`` runs each experiment N times and reports the median (every run's seconds
kept in the JSON): the first run after loading a model carries one-off costs (session 31: Exp 4
0.20-0.22 s against 0.17-0.18 s for the next four, on either model).

When the DroPE run of an experiment made exactly the forwards (same shapes, same order) that the RoPE
run made in the same process, its HF work is the same replay and is not timed twice: the row says
``"hf_work_reused_from": "rope"``. The HF model is the RoPE checkpoint for both variants (a DroPE
forward differs only by skipping the rotary products, elementwise work beside the GEMMs), so the
replay stands for the shapes of the work.

One device call may be too short for the whole study; run it in parts (``--only``) and merge the
JSON files::

    python -m drope_lens.benchmarks.study_bench --combine part1.json part2.json --out study.json

prints one table (each experiment's seconds and ratio per model, its target and whether it is met)
and the totals over both models.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import torch

from .spectrum_bench import add_spectrum_method_argument, use_spectrum_method

STATISTICS = ("sinks", "bos-write", "attention-structure", "layer-balance")
TARGET_RATIO, STATISTICS_TARGET_RATIO = 1.2, 1.5  # ours / HF work
STUDY_TARGET_SECONDS = 600.0  # the whole study, both models, one H200
EXPERIMENTS = ("massive-values", "disruption", "knowledge", "bos-ablation", "layer1-ablation", "sinks", "bos-write",
               "attention-structure", "layer-balance", "context-length")
STUDY_LENGTHS = (512, 1024, 2048, 4096, 6144, 8192, 16384)


class ForwardLog:
    """Records (batch, new positions, cached positions, all logits?) of every forward of ``model``."""

    def __init__(self, model):
        self.model, self.calls = model, []
        self._forward = model.forward

        def forward(*args, **kwargs):
            inputs = kwargs.get("input", args[0] if args else None)
            cache = kwargs.get("past_kv_cache")
            past = cache[0].past_keys.shape[1] if cache is not None else 0
            if isinstance(inputs, torch.Tensor):
                batch, n_new = (1, inputs.shape[0]) if inputs.ndim == 1 else inputs.shape[:2]
                all_logits = kwargs.get("stop_at_layer") is None and kwargs.get("return_type", "logits") is not None
                self.calls.append((int(batch), int(n_new), int(past), bool(all_logits)))
            return self._forward(*args, **kwargs)

        model.forward = forward
        # A static decode step (measurement.generation._StaticDecode) is either replayed from a CUDA
        # graph (the captured kernels run without model.forward being called) or runs over the whole
        # preallocated cache: record each as the one-token forward over ``end - 1`` cached keys it
        # stands for.
        from drope_lens.measurement import generation

        self._static_call = generation._StaticDecode.__call__
        log, static_call = self, self._static_call

        def static_step(decode, tokens, end, steps_left):
            before = len(log.calls)
            out = static_call(decode, tokens, end, steps_left)
            if decode.model is log.model:
                # eager steps and the capture call forward over the whole static cache (its
                # ``past_keys`` has every slot); the work they stand for is ``end - 1`` cached keys
                del log.calls[before:]
                log.calls.append((int(tokens.shape[0]), 1, int(end) - 1, False))
            return out

        generation._StaticDecode.__call__ = static_step

    def close(self) -> list:
        from drope_lens.measurement import generation

        generation._StaticDecode.__call__ = self._static_call
        self.model.forward = self._forward
        return self.calls


def hf_work(hf, calls, vocab: int) -> float:
    """Seconds of CUDA time of ``transformers`` forwards of the recorded shapes (see module doc)."""
    from transformers import DynamicCache

    device = hf.device
    total, cache, cache_shape = 0.0, None, None
    generator = torch.Generator(device="cpu").manual_seed(0)
    with torch.inference_mode():
        for batch, n_new, past, all_logits in calls:
            ids = torch.randint(3, vocab, (batch, n_new), generator=generator).to(device)
            if past == 0:
                cache = DynamicCache()
            elif cache_shape != (batch, past):
                cache = DynamicCache()
                prefix = torch.randint(3, vocab, (batch, past), generator=generator).to(device)
                hf(prefix, past_key_values=cache, use_cache=True, logits_to_keep=1)  # untimed
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                hf(ids, past_key_values=cache, use_cache=True, logits_to_keep=0 if all_logits else 1)
                end.record()
                torch.cuda.synchronize()
                total += start.elapsed_time(end) / 1e3
            else:  # CPU smoke run (--shape tiny)
                begin = time.perf_counter()
                hf(ids, past_key_values=cache, use_cache=True, logits_to_keep=0 if all_logits else 1)
                total += time.perf_counter() - begin
            cache_shape = (batch, past + n_new)
    return total


def run_experiment(name: str, model, args, texts, lengths=None) -> object:
    from drope_lens.experiments import (attention_structure, bos_ablation, bos_write, context_length, disruption,
                                        knowledge, layer1_ablation, layer_balance, massive_values, sinks)
    from drope_lens.measurement.texts import split_texts

    ident, evaluation = split_texts(texts, 3, 9)
    quiet = {"show_progress": False}
    if name == "massive-values":
        return massive_values.run(model, texts[:10], **quiet)
    if name == "disruption":
        return disruption.run(model, ident, evaluation, seeds=10, **quiet)
    if name == "knowledge":
        return knowledge.run(model, **quiet)
    if name == "bos-ablation":
        return bos_ablation.run(model, ident, evaluation, **quiet)
    if name == "layer1-ablation":
        return layer1_ablation.run(model, ident, evaluation, **quiet)
    if name in ("sinks", "bos-write", "attention-structure", "layer-balance"):
        module = {"sinks": sinks, "bos-write": bos_write, "attention-structure": attention_structure,
                  "layer-balance": layer_balance}[name]
        return module.run(model, texts[:10], **quiet)
    if name == "context-length":
        return context_length.run(model, lengths or args.lengths, n=args.n, **quiet)
    raise ValueError(f"experiment {name!r}: allowed values are {list(EXPERIMENTS)}.")


def target_ratio(experiment: str) -> float:
    """The largest ours / HF-work ratio the issue allows for ``experiment``."""
    return STATISTICS_TARGET_RATIO if experiment in STATISTICS else TARGET_RATIO


def combine(reports: list[dict], sources: list[str], replace: bool = False) -> dict:
    """One report from the JSON files of several runs (parts of the study): every experiment row with
    its target and whether it is met, and the totals over all rows. A row measured twice (same
    experiment and variant, overlapping Exp 10 lengths) is an error, since a merged study must not
    count work twice, unless ``replace``: then the later file's row replaces the earlier one and the
    merged report lists what was replaced."""
    rows, seen, replaced = [], {}, []

    def clashes(key, other) -> bool:
        return key[:2] == other[:2] and (not key[2] or not other[2] or bool(set(key[2]) & set(other[2])))

    for report, source in zip(reports, sources):
        for row in report["experiments"]:
            key = (row["experiment"], row["variant"], tuple(row.get("lengths", ())))
            earlier = [other for other in seen if clashes(key, other)]
            if earlier and not replace:
                raise ValueError(f"{_label(row)} ({key[1]}) is in both {seen[earlier[0]]} and {source}; "
                                 "keep one of them (or pass --replace to keep the later one).")
            for other in earlier:
                at = f" @ {','.join(map(str, other[2]))}" if other[2] else ""
                replaced.append(f"{other[0]}{at} ({other[1]}) of {seen.pop(other)} by {source}")
                rows = [r for r in rows if (r["experiment"], r["variant"], tuple(r.get("lengths", ()))) != other]
            seen[key] = source
            rows.append(dict(row, source=source))
    for row in rows:
        row["target_ratio"] = target_ratio(row["experiment"])
        if "ratio" in row:
            row["target_met"] = row["ratio"] <= row["target_ratio"]
    merged = {"sources": sources, "devices": sorted({r["device"] for r in reports}), "experiments": rows,
              "total_seconds": sum(r["seconds"] for r in rows)}
    missing = [f"{e} ({v})" for v in ("rope", "drope") for e in EXPERIMENTS if not any(k[:2] == (e, v) for k in seen)]
    merged["missing"] = missing
    merged["replaced"] = replaced
    merged["without_hf_replay"] = [f"{_label(r)} ({r['variant']})" for r in rows if "hf_work_seconds" not in r]
    if rows and all("hf_work_seconds" in r for r in rows):
        merged["total_hf_work_seconds"] = sum(r["hf_work_seconds"] for r in rows)
        merged["total_ratio"] = merged["total_seconds"] / merged["total_hf_work_seconds"]
    merged["study_target_seconds"] = STUDY_TARGET_SECONDS
    merged["study_target_met"] = not missing and merged["total_seconds"] <= STUDY_TARGET_SECONDS
    return merged


def print_combined(merged: dict) -> None:
    """The merged table: per experiment, seconds and ratio for each model, the target, met or not."""
    by_key = {}
    for r in merged["experiments"]:  # Exp 10 run one length at a time: the sum of its rows
        cell = by_key.setdefault((r["experiment"], r["variant"]),
                                 {"seconds": 0.0, "replayed_seconds": 0.0, "hf_work_seconds": 0.0, "complete": True})
        cell["seconds"] += r["seconds"]
        if "hf_work_seconds" in r:
            cell["replayed_seconds"] += r["seconds"]
            cell["hf_work_seconds"] += r["hf_work_seconds"]
        else:
            cell["complete"] = False
    print(f"{'experiment':>20} {'RoPE s':>8} {'ratio':>6} {'DroPE s':>8} {'ratio':>6} {'target':>7}  met")
    partial = False
    for name in EXPERIMENTS:
        cells, met = [], []
        for variant in ("rope", "drope"):
            cell = by_key.get((name, variant))
            if cell is None:
                cells += ["-", "-"]
                continue
            ratio = "-"
            if cell["hf_work_seconds"]:
                value = cell["replayed_seconds"] / cell["hf_work_seconds"]
                ratio = f"{value:.2f}" + ("" if cell["complete"] else "*")
                partial |= not cell["complete"]
                if cell["complete"]:
                    met.append(value <= target_ratio(name))
            cells += [f"{cell['seconds']:.2f}", ratio]
        complete = len(met) == 2
        verdict = ("yes" if all(met) else "NO") if complete else ("NO" if met and not all(met) else "-")
        print(f"{name:>20} {cells[0]:>8} {cells[1]:>6} {cells[2]:>8} {cells[3]:>6} {target_ratio(name):>6.1f}x  {verdict}")
    if partial:
        print("* ratio over the rows that were replayed through HF only (listed below)")
    runs = {(r["experiment"], r["variant"]) for r in merged["experiments"]}
    rows = len(merged["experiments"])
    line = (f"whole study ({len(runs)} experiment runs" + (f" in {rows} rows" if rows != len(runs) else "")
            + f"): {merged['total_seconds']:.1f} s in the experiments")
    if "total_ratio" in merged:
        line += f", HF work {merged['total_hf_work_seconds']:.1f} s -> {merged['total_ratio']:.2f}x"
    line += f"; target <= {merged['study_target_seconds']:.0f} s: {'met' if merged['study_target_met'] else 'NOT met'}"
    if merged["missing"]:
        line += f"; missing: {', '.join(merged['missing'])}"
    print(line)
    if merged.get("without_hf_replay"):
        print(f"not replayed through HF (no ratio): {', '.join(merged['without_hf_replay'])}")
    for entry in merged.get("replaced", []):
        print(f"replaced: {entry}")


def _label(row: dict) -> str:
    lengths = row.get("lengths")
    return row["experiment"] + (f" @ {','.join(map(str, lengths))}" if lengths else "")


def _warm_up(model, texts) -> None:
    """Pay what only the first use pays, untimed: Triton compilation and autotuning at the shapes the
    statistics experiments use (10 texts x 512 tokens: the spectrum kernels are specialised on the
    matrix size), cuSOLVER and cuBLAS handles, the decode path and Exp 10's. Without it the first
    experiment of the first model carries about a second of compilation (session 26:
    massive-values 1.11 s on RoPE vs 0.13 s on DroPE right after)."""
    from drope_lens.experiments import attention_structure, context_length, massive_values, sinks
    from drope_lens.measurement.generation import greedy_generate

    for module in (massive_values, sinks, attention_structure):
        module.run(model, texts[:10], show_progress=False)
    greedy_generate(model, [[1, 5, 6, 7]], 2)
    # Exp 10's path (passkey prompts, static decode, shared-prefix verification) on 2 short trials:
    # session 26's first Exp 10 cell (512 tokens, 43,760 tokens of work) took 10.2 s where the
    # next (1,024, twice the tokens) took 5.6 s
    context_length.run(model, [256], n=2, show_progress=False)


def _warm_up_hf(hf, vocab: int) -> None:
    """The same for the HF replays: one untimed 10 x 512 forward with all logits and a few cached
    one-token steps, so the first replayed experiment is not charged cuBLAS / sdpa start-up."""
    from transformers import DynamicCache

    ids = torch.randint(3, vocab, (10, 512), device=hf.device)
    with torch.inference_mode():
        cache = DynamicCache()
        hf(ids, past_key_values=cache, use_cache=True)
        for _ in range(3):
            hf(ids[:, :1], past_key_values=cache, use_cache=True, logits_to_keep=1)
    _sync()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _tiny_pair(workdir: Path) -> tuple[Path, Path]:
    from drope_lens.measurement import passkey
    from drope_lens.measurement.texts import builtin_texts

    from .random_checkpoint import SHAPES, write_drope_twin, write_random_checkpoint, write_tokenizer

    rope_dir, drope_dir = workdir / "rope_tiny", workdir / "drope_tiny"
    if not (rope_dir / "config.json").exists():
        write_random_checkpoint(rope_dir, SHAPES["tiny"], massive_dims_per_head=2)
        texts = [t.text for t in builtin_texts()] + [passkey.SIMPLE_FILLER * 20, passkey.RULER_FILLER * 20,
                                                    passkey.RULER_TEMPLATE, passkey.VERIFY_TEMPLATE]
        write_tokenizer(rope_dir, texts, vocab_size=SHAPES["tiny"].vocab)
        write_drope_twin(rope_dir, drope_dir)
    return rope_dir, drope_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/drope_lens_bench"))
    parser.add_argument("--out", type=Path, default=Path("study_bench.json"))
    parser.add_argument("--only", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    parser.add_argument("--lengths", type=int, nargs="+", default=list(STUDY_LENGTHS), help="Exp 10 lengths")
    parser.add_argument("--n", type=int, default=20, help="Exp 10 trials per cell (study: 20)")
    parser.add_argument("--variants", nargs="+", choices=["rope", "drope"], default=["rope", "drope"])
    parser.add_argument("--no-hf", action="store_true", help="skip the HF replays (our times only)")
    parser.add_argument("--shape", choices=["llama2-7b", "tiny"], default="llama2-7b",
                        help="tiny: a CPU smoke run of this script (2 layers, d_model 128)")
    parser.add_argument("--split-lengths", action="store_true",
                        help="run Exp 10 once per length (one result row each) to see where its time goes")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each experiment this many times and report the median wall time (all kept)")
    parser.add_argument("--defer-hf", action="store_true",
                        help="replay the HF work after all of a model's experiments ran (our times come first)")
    parser.add_argument("--combine", type=Path, nargs="+", metavar="JSON",
                        help="merge the result files of runs of parts of the study (see the module doc) into --out")
    parser.add_argument("--replace", action="store_true",
                        help="with --combine: a later file's row replaces an earlier file's row of the same experiment")
    add_spectrum_method_argument(parser)
    args = parser.parse_args()
    use_spectrum_method(args)
    if args.combine:
        merged = combine([json.loads(path.read_text()) for path in args.combine], [str(p) for p in args.combine],
                         replace=args.replace)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(merged, indent=2))
        print_combined(merged)
        return

    import drope_lens as dl
    from drope_lens.measurement.texts import builtin_texts
    from transformers import LlamaForCausalLM

    from .random_checkpoint import bench_pair

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.shape == "llama2-7b":
        rope_dir, drope_dir = bench_pair(args.workdir)
    else:
        rope_dir, drope_dir = _tiny_pair(args.workdir)
    texts = builtin_texts()
    report: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "shape": args.shape, "torch": torch.__version__, "only": args.only,
                    "exp10_lengths": args.lengths, "exp10_n": args.n,
                    "spectrum_method": args.spectrum_method or "default", "experiments": []}

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))

    hf = None
    if not args.no_hf:
        hf = LlamaForCausalLM.from_pretrained(rope_dir, dtype=torch.bfloat16, attn_implementation="sdpa").to(device).eval()
        _warm_up_hf(hf, hf.config.vocab_size)
    study_start = time.perf_counter()
    replayed: dict[tuple, tuple[str, float]] = {}  # forward log -> (variant that replayed it, HF seconds)

    def stamp() -> str:
        return f"[+{time.perf_counter() - study_start:.0f} s]"

    def replay(row: dict, calls: list) -> None:
        key = (row["experiment"], tuple(calls))
        if key in replayed:
            row["hf_work_reused_from"], row["hf_work_seconds"] = replayed[key]
        else:
            row["hf_work_seconds"] = hf_work(hf, calls, vocab)
            replayed[key] = (row["variant"], row["hf_work_seconds"])
        row["ratio"] = row["seconds"] / row["hf_work_seconds"]
        save()
        reused = f" (replay of {row['hf_work_reused_from']}'s identical forwards)" if "hf_work_reused_from" in row else ""
        print(f"{stamp()} {_label(row):>26} {row['variant']:>5}: HF work {row['hf_work_seconds']:.2f} s{reused} -> "
              f"{row['ratio']:.2f}x (target {target_ratio(row['experiment'])}x)", flush=True)

    for variant in args.variants:
        model = dl.load_model(rope_dir if variant == "rope" else drope_dir, dtype="bf16", device=device,
                              n_ctx=max(args.lengths) + 64)
        vocab = model.cfg.d_vocab
        _warm_up(model, texts)
        print(f"{stamp()} {variant} loaded and warmed up", flush=True)
        units = []  # (experiment, Exp 10 lengths of this row or None for all)
        for name in args.only:
            if name == "context-length" and args.split_lengths:
                units += [(name, [length]) for length in args.lengths]
            else:
                units.append((name, None))
        deferred = []
        for name, lengths in units:
            row = {"experiment": name, "variant": variant}
            if lengths is not None:
                row["lengths"] = lengths
            print(f"{stamp()} {_label(row)} ({variant}) ...", flush=True)
            samples = []
            for k in range(max(1, args.repeat)):
                log = ForwardLog(model)
                _sync()
                begin = time.perf_counter()
                try:
                    frame = run_experiment(name, model, args, texts, lengths)
                finally:
                    calls = log.close()  # every repeat makes the same forwards: the last one's are replayed
                _sync()
                samples.append(time.perf_counter() - begin)
            ours = statistics.median(samples)
            if len(samples) > 1:
                row["seconds_each_run"] = samples
            row.update(seconds=ours, forwards=len(calls), tokens=sum(b * n for b, n, _, _ in calls), rows=len(frame))
            report["experiments"].append(row)
            save()
            print(f"{stamp()} {_label(row):>26} {variant:>5}: {ours:7.2f} s, {len(calls)} forwards, {row['tokens']} tokens",
                  flush=True)
            if hf is not None:
                if args.defer_hf:
                    deferred.append((row, calls))
                else:
                    replay(row, calls)
        for row, calls in deferred:
            replay(row, calls)
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    report["wall_seconds_including_loads_and_replays"] = time.perf_counter() - study_start
    merged = combine([report], [str(args.out)])
    report.update({key: merged[key] for key in ("total_seconds", "total_hf_work_seconds", "total_ratio") if key in merged})
    save()
    print_combined(merged)


if __name__ == "__main__":
    main()
