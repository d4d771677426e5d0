"""GPU evidence for ``load_model``: load time and memory, forward speed vs transformers, nf4, 8k tokens.

Run on a CUDA machine::

    python -m drope_lens.benchmarks.load_forward --workdir /tmp/bench --out bench.json

It writes a Llama-2-7B-shaped random bf16 checkpoint (and a DroPE twin sharing its shards), then
measures, each in one process so numbers are side by side:

* load time and peak host-memory growth (VmHWM after resetting it) for ``device="cpu"`` and
  ``device="cuda"``, as a ratio to the checkpoint's weight bytes;
* GPU memory after load and at the forward's peak;
* a forward over 10 x 512 tokens, drope_lens (nothing hooked) vs ``LlamaForCausalLM`` (sdpa),
  interleaved repetitions timed with CUDA events, medians and their ratio; plus drope_lens with
  every ``hook_pattern`` hooked (explicit attention path);
* the same for ``quantization="nf4"`` vs transformers + ``BitsAndBytesConfig`` (nf4, double
  quantisation, bf16 compute), and that every hook point fires;
* one forward at 8,192 tokens for RoPE and DroPE (time, peak GPU memory).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from .random_checkpoint import LlamaShape, write_drope_twin, write_random_checkpoint

# hook points TransformerLens only allows once a cfg flag is switched on (use_attn_result, ...)
_OPT_IN_HOOKS = ("hook_result", "hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input", "hook_mlp_in")


def _median_ms(fn, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def interleaved(fns: dict, warmup: int = 3, reps: int = 10) -> dict:
    """Median ms of each callable, repetitions interleaved so drift hits all equally."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            samples[name] += _median_ms(fn, 1)
    return {name: {"median_ms": statistics.median(v), "min_ms": min(v), "reps": len(v)} for name, v in samples.items()}


def measure_load_subprocess(path: Path, device: str, dtype: str = "bf16") -> dict:
    """Load in a fresh process; report wall time and peak host-RSS growth."""
    script = textwrap.dedent(f"""
        import json, time, torch, drope_lens as dl
        def kb(field):
            for line in open('/proc/self/status'):
                if line.startswith(field):
                    return int(line.split()[1])
        if {device!r} == 'cuda':
            torch.zeros(1, device='cuda')  # CUDA context outside the measurement
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        base = kb('VmRSS')
        t0 = time.perf_counter()
        model = dl.load_model({str(path)!r}, dtype={dtype!r}, device={device!r})
        if {device!r} == 'cuda':
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        out = dict(seconds=seconds, host_peak_growth_bytes=(kb('VmHWM') - base) * 1024)
        if {device!r} == 'cuda':
            out['gpu_allocated_bytes'] = torch.cuda.memory_allocated()
        print(json.dumps(out))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    if result.returncode:
        return {"error": result.stderr[-2000:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / b.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/drope_lens_bench"))
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    parser.add_argument("--skip-nf4", action="store_true")
    args = parser.parse_args()

    import drope_lens as dl
    from transformers import LlamaForCausalLM

    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    import transformers

    report["transformers"] = transformers.__version__

    def save():
        args.out.write_text(json.dumps(report, indent=2))

    rope_dir, drope_dir = args.workdir / "rope", args.workdir / "drope"
    t0 = time.perf_counter()
    weight_bytes = write_random_checkpoint(rope_dir, LlamaShape())
    write_drope_twin(rope_dir, drope_dir)
    report["checkpoint"] = {"weight_bytes": weight_bytes, "write_seconds": time.perf_counter() - t0,
                            "shards": len(list(rope_dir.glob("*.safetensors")))}
    print("checkpoint", report["checkpoint"], flush=True)

    for device in ("cpu", "cuda"):
        load = measure_load_subprocess(rope_dir, device)
        if "host_peak_growth_bytes" in load:
            load["host_peak_over_weights"] = load["host_peak_growth_bytes"] / weight_bytes
        report[f"load_{device}"] = load
        print(f"load {device}", load, flush=True)
        save()

    tokens = torch.randint(0, 32000, (10, 512), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.inference_mode():
        torch.cuda.reset_peak_memory_stats()
        ours = dl.load_model(rope_dir, dtype="bf16", device="cuda")
        report["ours_bf16_gpu_bytes_after_load"] = torch.cuda.memory_allocated()
        hf = LlamaForCausalLM.from_pretrained(rope_dir, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
        report["bf16_logit_rel_error_vs_hf"] = relative_error(ours(tokens[:2]), hf(tokens[:2]).logits)

        pattern_hook = (lambda name: name.endswith("hook_pattern"), lambda t, hook: t)

        def ours_hooked():
            return ours.run_with_hooks(tokens, fwd_hooks=[pattern_hook])

        timing = interleaved({
            "drope_lens": lambda: ours(tokens),
            "hf_sdpa": lambda: hf(tokens).logits,
            "drope_lens_pattern_hooked": ours_hooked,
        })
        timing["ratio_drope_lens_over_hf"] = timing["drope_lens"]["median_ms"] / timing["hf_sdpa"]["median_ms"]
        timing["ratio_hooked_over_hf"] = timing["drope_lens_pattern_hooked"]["median_ms"] / timing["hf_sdpa"]["median_ms"]
        report["forward_10x512_bf16"] = timing
        print("forward bf16", timing, flush=True)
        torch.cuda.reset_peak_memory_stats()
        ours(tokens)
        report["ours_bf16_forward_peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
        save()

        long_tokens = torch.randint(0, 32000, (1, 8192), generator=torch.Generator().manual_seed(1)).cuda()
        long = {}
        torch.cuda.reset_peak_memory_stats()
        hf_long = interleaved({"hf_sdpa": lambda: hf(long_tokens).logits}, warmup=1, reps=3)["hf_sdpa"]
        long["hf_sdpa"] = dict(hf_long, peak_gpu_bytes=torch.cuda.max_memory_allocated())
        del hf
        gc.collect()
        torch.cuda.empty_cache()
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.reset_peak_memory_stats()
            rope_long = interleaved({"rope": lambda: ours(long_tokens)}, warmup=1, reps=3)["rope"]
        long["drope_lens_rope"] = dict(rope_long, peak_gpu_bytes=torch.cuda.max_memory_allocated(),
                                       warned=[str(w.message)[:120] for w in caught])
        del ours
        gc.collect()
        torch.cuda.empty_cache()
        drope = dl.load_model(drope_dir, dtype="bf16", device="cuda")
        torch.cuda.reset_peak_memory_stats()
        drope_long = interleaved({"drope": lambda: drope(long_tokens)}, warmup=1, reps=3)["drope"]
        long["drope_lens_drope"] = dict(drope_long, peak_gpu_bytes=torch.cuda.max_memory_allocated(),
                                        finite=bool(torch.isfinite(drope(long_tokens)).all()))
        report["forward_1x8192_bf16"] = long
        print("forward 8192", long, flush=True)
        del drope
        gc.collect()
        torch.cuda.empty_cache()
        save()

        if not args.skip_nf4:
            from transformers import BitsAndBytesConfig

            nf4 = {}
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            ours4 = dl.load_model(rope_dir, device="cuda", quantization="nf4")
            nf4["ours_load_seconds"] = time.perf_counter() - t0
            nf4["ours_gpu_bytes_after_load"] = torch.cuda.memory_allocated()
            bnb_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                            bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
            before = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            hf4 = LlamaForCausalLM.from_pretrained(rope_dir, quantization_config=bnb_config, dtype=torch.bfloat16,
                                                   attn_implementation="sdpa", device_map={"": 0}).eval()
            nf4["hf_load_seconds"] = time.perf_counter() - t0
            nf4["hf_gpu_bytes_after_load"] = torch.cuda.memory_allocated() - before
            nf4["logit_rel_error_vs_hf_nf4"] = relative_error(ours4(tokens[:2]), hf4(tokens[:2]).logits)
            timing4 = interleaved({"drope_lens": lambda: ours4(tokens), "hf_sdpa": lambda: hf4(tokens).logits})
            timing4["ratio_drope_lens_over_hf"] = timing4["drope_lens"]["median_ms"] / timing4["hf_sdpa"]["median_ms"]
            nf4["forward_10x512"] = timing4
            fired: set = set()
            hookable = [n for n in ours4.hook_dict if not n.endswith(_OPT_IN_HOOKS)]
            ours4.run_with_hooks(tokens[:1, :16], fwd_hooks=[(lambda n: n in hookable, lambda t, hook: fired.add(hook.name))])
            nf4["hook_points_fired"] = f"{len(fired)}/{len(hookable)}"
            del ours4, hf4
            gc.collect()
            torch.cuda.empty_cache()
            drope4 = dl.load_model(drope_dir, device="cuda", quantization="nf4")
            fired.clear()
            hookable = [n for n in drope4.hook_dict if not n.endswith(_OPT_IN_HOOKS)]
            out = drope4.run_with_hooks(tokens[:1, :16], fwd_hooks=[(lambda n: n in hookable, lambda t, hook: fired.add(hook.name))])
            nf4["drope_hook_points_fired"] = f"{len(fired)}/{len(hookable)}"
            nf4["drope_forward_finite"] = bool(torch.isfinite(out).all())
            report["nf4"] = nf4
            print("nf4", nf4, flush=True)
            save()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
