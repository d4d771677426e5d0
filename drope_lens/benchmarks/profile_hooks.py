"""Where the time of a hooked forward goes (GPU): plain forward vs capture hooks, with a profile.

    python -m drope_lens.benchmarks.profile_hooks --checkpoint /tmp/bench/rope_massive
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    args = parser.parse_args()
    import drope_lens as dl
    from drope_lens.hooks import capture_dim_norms

    batch = torch.randint(3, 8000, (10, 512), generator=torch.Generator().manual_seed(0)).cuda()
    for variant in ("rope", "drope"):
        model = dl.load_model(args.checkpoint, dtype="bf16", device="cuda", variant=variant)
        store: dict = {}
        hooks = capture_dim_norms(store, model.cfg.n_layers)
        noop = [(name, lambda x, hook: None) for name, _ in hooks]
        cases = {
            "plain_logits": lambda: model(batch),
            "plain_no_logits": lambda: model(batch, return_type=None),
            "noop_hooks": lambda: model.run_with_hooks(batch, return_type=None, fwd_hooks=noop),
            "capture_hooks": lambda: model.run_with_hooks(batch, return_type=None, fwd_hooks=hooks),
        }
        with torch.inference_mode():
            for name, fn in cases.items():
                for _ in range(2):
                    fn()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(5):
                    fn()
                torch.cuda.synchronize()
                print(variant, name, f"{(time.perf_counter() - t0) / 5 * 1000:.1f} ms", flush=True)
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                cases["capture_hooks"]()
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
