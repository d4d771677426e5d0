"""GPU evidence for Experiments 1 and 2 on a Llama-2-7B-shaped random bf16 pair.

    python -m drope_lens.benchmarks.experiments_bench --workdir /tmp/bench --out exp_bench.json

Exp 1 at the study's size (10 texts x 512 tokens) and Exp 2 (3 identification + 9 evaluation
texts x 512 tokens, 10 seeds): wall time of ``run`` (CUDA synchronised), peak GPU memory, and the
ratio to bare ``transformers`` sdpa forwards over the same token rows in the same process (the
base model for Exp 1, which needs no logits; the LM for Exp 2). Exp 2 is timed batched (all
conditions mixed in batches), one condition at a time (a batch of the 9 texts per condition) and
one row at a time (one forward per condition and text).

To show how much batching *can* gain at this size, the same rows are also run through
``transformers`` one condition (9 rows) and one row at a time, and the sweep's achieved matmul
throughput (TFLOP/s, from the model's shape) is compared with that of one large bf16 GEMM
measured on the same GPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .random_checkpoint import LlamaShape, massive_checkpoint, write_tokenizer


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    """Median wall seconds of ``fn`` over ``repeat`` runs (CUDA synchronised), and its last result."""
    times, result = [], None
    for _ in range(repeat):
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2], result


def matmul_flop_per_token(shape: LlamaShape) -> float:
    """FLOP of the weight matmuls per token (2 per multiply-add): q/k/v/o, gate/up/down, lm head.

    Attention's q.k and pattern.v products are left out (about 2% at 512 tokens)."""
    d_kv = shape.d_model // shape.n_heads * shape.n_kv_heads
    per_layer = shape.d_model * (2 * shape.d_model + 2 * d_kv) + 3 * shape.d_model * shape.d_mlp
    return 2.0 * (shape.n_layers * per_layer + shape.d_model * shape.vocab)


def gemm_tflops(m: int = 5120, k: int = 4096, n: int = 11008, repeat: int = 50) -> float:
    """Achieved TFLOP/s of one bf16 ``[m, k] @ [k, n]`` GEMM (the MLP's shape at 10 x 512 tokens)."""
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2.0 * m * k * n * repeat / (start.elapsed_time(end) / 1e3) / 1e12


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/drope_lens_bench"))
    parser.add_argument("--out", type=Path, default=Path("exp_bench.json"))
    parser.add_argument("--batch-size", type=int, default=27)
    parser.add_argument("--only-exp1", action="store_true")
    args = parser.parse_args()

    import drope_lens as dl
    from drope_lens.experiments import disruption, massive_values
    from drope_lens.measurement.tokens import batches_by_length, tokenize
    from drope_lens.measurement.texts import builtin_texts, split_texts
    from transformers import LlamaForCausalLM

    texts = builtin_texts()
    rope_dir = massive_checkpoint(args.workdir)
    write_tokenizer(rope_dir, [t.text for t in texts])
    report: dict = {"device": torch.cuda.get_device_name(), "batch_size": args.batch_size,
                    "gemm_tflops_5120x4096x11008": gemm_tflops()}
    flop_per_token = matmul_flop_per_token(LlamaShape())

    def save():
        args.out.write_text(json.dumps(report, indent=2))

    hf = LlamaForCausalLM.from_pretrained(rope_dir, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    exp1_texts = texts[:10]
    ident, evaluation = split_texts(texts, 3, 9)
    for variant in ("rope", "drope"):
        model = dl.load_model(rope_dir, dtype="bf16", device="cuda", variant=variant)
        tokens = tokenize(model, exp1_texts, 512)
        batch = torch.stack(tokens).cuda()
        assert batch.shape == (10, 512), batch.shape
        with torch.inference_mode():
            if variant == "drope":
                hf.model.rotary_emb.inv_freq.zero_()  # the no-rotary reference (cos/sin = 1/0)
            bare_exp1, _ = timed(lambda: hf.model(batch), repeat=5)
            massive_values.run(model, exp1_texts, show_progress=False)  # warm-up
            torch.cuda.reset_peak_memory_stats()
            t_exp1, df1 = timed(lambda: massive_values.run(model, exp1_texts, show_progress=False), repeat=7)
            peak1 = torch.cuda.max_memory_allocated()
            t_exp1_two_batches, _ = timed(lambda: massive_values.run(model, exp1_texts, batch_size=5, show_progress=False), repeat=7)
            t_forward, _ = timed(lambda: model(batch, return_type=None), repeat=5)
        report[f"exp1_{variant}"] = {
            "seconds": t_exp1, "hf_base_forward_seconds": bare_exp1, "ratio": t_exp1 / bare_exp1,
            "seconds_two_batches_of_5": t_exp1_two_batches, "drope_lens_bare_forward_seconds": t_forward,
            "peak_gpu_bytes": peak1, "model_bytes": torch.cuda.memory_allocated(),
            "totals_mean": massive_values.totals(df1).set_index("tensor")["mean"].to_dict(),
        }
        print(variant, "exp1", report[f"exp1_{variant}"], flush=True)
        save()
        if args.only_exp1:
            continue

        kwargs = dict(seeds=10, max_tokens=512, show_progress=False)
        eval_tokens = tokenize(model, evaluation, 512)
        ident_tokens = tokenize(model, ident, 512)
        rows = [t for t in ident_tokens] + [t for _ in range(12) for t in eval_tokens]  # 3 + 12 conditions x 9

        def bare_forwards(batch_size: int = args.batch_size):
            with torch.inference_mode():
                for _, b in batches_by_length(rows, batch_size):
                    hf(b.cuda()).logits
        with torch.inference_mode():
            bare_forwards()
            bare_exp2, _ = timed(bare_forwards, repeat=3)
            bare_exp2_by_9, _ = timed(lambda: bare_forwards(9), repeat=3)
            bare_exp2_by_1, _ = timed(lambda: bare_forwards(1), repeat=3)
            disruption.run(model, ident, evaluation, batch_size=args.batch_size, **kwargs)  # warm-up
            torch.cuda.reset_peak_memory_stats()
            t_batched, df2 = timed(lambda: disruption.run(model, ident, evaluation, batch_size=args.batch_size, **kwargs), repeat=3)
            peak2 = torch.cuda.max_memory_allocated()
            t_per_condition, df_pc = timed(lambda: disruption.run(model, ident, evaluation, batch_size=9, batched=False, **kwargs), repeat=3)
            t_per_row, df_pr = timed(lambda: disruption.run(model, ident, evaluation, batch_size=1, batched=False, **kwargs), repeat=3)
        n_tokens = sum(int(t.numel()) for t in rows)
        nll = torch.tensor(df2.nll.values)
        report[f"exp2_{variant}"] = {
            "seconds_batched": t_batched, "hf_forward_seconds_same_rows": bare_exp2, "ratio": t_batched / bare_exp2,
            "hf_forward_seconds_batches_of_9": bare_exp2_by_9, "hf_forward_seconds_one_row_at_a_time": bare_exp2_by_1,
            "hf_speedup_batched_vs_one_row_at_a_time": bare_exp2_by_1 / bare_exp2,
            "matmul_tflop": flop_per_token * n_tokens / 1e12,
            "tflops_batched": flop_per_token * n_tokens / t_batched / 1e12,
            "tflops_hf_batched": flop_per_token * n_tokens / bare_exp2 / 1e12,
            "tflops_needed_for_3x_vs_one_row_at_a_time": 3 * flop_per_token * n_tokens / t_per_row / 1e12,
            "peak_gpu_bytes": peak2,
            "seconds_one_condition_at_a_time": t_per_condition, "speedup_vs_condition_at_a_time": t_per_condition / t_batched,
            "seconds_one_row_at_a_time": t_per_row, "speedup_vs_row_at_a_time": t_per_row / t_batched,
            "max_abs_nll_diff_vs_condition_at_a_time": float((nll - torch.tensor(df_pc.nll.values)).abs().max()),
            "max_abs_nll_diff_vs_row_at_a_time": float((nll - torch.tensor(df_pr.nll.values)).abs().max()),
            "summary": {k: float(v) for k, v in disruption.summary(df2).iloc[0][["baseline_ppl", "massive_ppl", "random_ppl", "n_zeroed_q", "n_zeroed_k"]].items()},
        }
        print(variant, "exp2", report[f"exp2_{variant}"], flush=True)
        save()
        del model
        torch.cuda.empty_cache()
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
