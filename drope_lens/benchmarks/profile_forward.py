"""Where a batched forward's GPU time goes, drope_lens vs ``transformers`` (GPU only).

    python -m drope_lens.benchmarks.profile_forward --workdir /tmp/bench --out profile.json

Profiles one forward with logits of a 10 x 512 batch on a Llama-2-7B-shaped random bf16
checkpoint, for drope_lens (RoPE and DroPE) and for HF sdpa, and sums CUDA kernel time by
kernel kind (GEMM, attention, elementwise/reduction). Also times candidate implementations of
the memory-bound pieces at the same shapes (milliseconds, CUDA events, median of 20).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def kernel_kind(name: str) -> str:
    low = name.lower()
    if any(s in low for s in ("gemm", "cutlass", "sm90_xmma", "nvjet", "cublas", "ampere_bf16", "sm80_xmma")):
        return "gemm"
    if "flash" in low or "fmha" in low or "attention" in low:
        return "attention"
    if "reduce" in low:
        return "reduction"
    if "copy" in low or "memcpy" in low or "memset" in low:
        return "copy"
    return "elementwise"


def profile(fn, steps: int = 3) -> dict:
    """CUDA kernel milliseconds per call of ``fn``, by kind and the top 25 kernels."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    by_kind: dict[str, float] = {}
    kernels = []
    for event in prof.key_averages():
        total = getattr(event, "device_time_total", None)
        if total is None:
            total = event.cuda_time_total
        if total <= 0:
            continue
        ms = total / 1e3 / steps
        by_kind[kernel_kind(event.key)] = by_kind.get(kernel_kind(event.key), 0.0) + ms
        kernels.append((ms, event.count // steps, event.key[:110]))
    kernels.sort(reverse=True)
    return {"ms_by_kind": by_kind, "ms_total": sum(by_kind.values()), "top": kernels[:25]}


def event_ms(fn, repeat: int = 20) -> float:
    """Median milliseconds of ``fn`` by CUDA events."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def candidates() -> dict:
    """Milliseconds of memory-bound pieces at 10 x 512 tokens, eager vs fused alternatives."""
    import torch.nn.functional as F

    out: dict = {}
    x = torch.randn(10, 512, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(4096, device="cuda", dtype=torch.bfloat16)

    def tl_rms():
        y = x.float()
        scale = (y.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()
        return (y / scale).to(torch.bfloat16) * w

    def hf_rms():
        y = x.float()
        var = y.pow(2).mean(-1, keepdim=True)
        return w * (y * torch.rsqrt(var + 1e-5)).to(torch.bfloat16)

    def f_rms():
        return F.rms_norm(x.float(), (4096,), None, 1e-5).to(torch.bfloat16) * w

    out["rms_tl_ms"] = event_ms(tl_rms)
    out["rms_hf_ms"] = event_ms(hf_rms)
    out["rms_functional_fp32_ms"] = event_ms(f_rms)
    a = torch.randn(10, 512, 11008, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(10, 512, 11008, device="cuda", dtype=torch.bfloat16)
    zero = torch.zeros(11008, device="cuda", dtype=torch.bfloat16)
    out["silu_mul_plus_bias_ms"] = event_ms(lambda: F.silu(a) * b + zero)
    out["silu_mul_ms"] = event_ms(lambda: F.silu(a) * b)
    try:
        compiled_rms = torch.compile(hf_rms, dynamic=False)
        compiled_silu = torch.compile(lambda: F.silu(a) * b, dynamic=False)
        out["rms_hf_compiled_ms"] = event_ms(compiled_rms)
        out["silu_mul_compiled_ms"] = event_ms(compiled_silu)
        out["rms_compiled_equal_hf"] = bool(torch.equal(compiled_rms(), hf_rms()))
        out["silu_compiled_equal"] = bool(torch.equal(compiled_silu(), F.silu(a) * b))
    except Exception as error:  # no triton, no compiler
        out["compile_error"] = repr(error)[:300]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/drope_lens_bench"))
    parser.add_argument("--out", type=Path, default=Path("profile_forward.json"))
    args = parser.parse_args()

    from transformers import LlamaForCausalLM

    import drope_lens as dl

    from .random_checkpoint import massive_checkpoint

    rope_dir = massive_checkpoint(args.workdir)
    batch = torch.randint(3, 8000, (10, 512), generator=torch.Generator().manual_seed(0)).cuda()
    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    with torch.inference_mode():
        report["candidates"] = candidates()
        print(json.dumps(report["candidates"], indent=1), flush=True)
        hf = LlamaForCausalLM.from_pretrained(rope_dir, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
        report["hf_sdpa"] = profile(lambda: hf(batch).logits)
        del hf
        torch.cuda.empty_cache()
        for variant in ("rope", "drope"):
            model = dl.load_model(rope_dir, dtype="bf16", device="cuda", variant=variant)
            report[f"drope_lens_{variant}"] = profile(lambda model=model: model(batch))
            model.set_fused_kernels(False)
            report[f"drope_lens_{variant}_eager"] = profile(lambda model=model: model(batch))
            del model
            torch.cuda.empty_cache()
    for key in ("hf_sdpa", "drope_lens_rope", "drope_lens_drope", "drope_lens_rope_eager", "drope_lens_drope_eager"):
        print(key, {k: round(v, 2) for k, v in report[key]["ms_by_kind"].items()}, round(report[key]["ms_total"], 2))
        for row in report[key]["top"][:14]:
            print("   ", round(row[0], 2), row[1], row[2])
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
