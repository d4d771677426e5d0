"""Greedy generation speed against Hugging Face ``generate`` on a Llama-2-7B-shaped random bf16 model.

    python -m drope_lens.benchmarks.generation_bench --workdir /tmp/bench --out generation_bench.json

Part ``generation``: 8 prompts x 256 tokens -> 32 new tokens, batched, no stop token.
:func:`drope_lens.measurement.generation.greedy_generate` (no hooks, and under a BOS-only MLP ablation) vs
``transformers`` ``generate(do_sample=False)`` on the same token rows, sdpa attention, in the
same process. Medians of CUDA-event timings after a warm-up; the ratio ours / HF is printed
(target: at most 1.1). Ours is timed with CUDA-graph decoding (the default when nothing is hooked)
and with the same static steps run eagerly (``cuda_graphs=False``). The new tokens are compared too (bf16: the two implementations round
differently, so a few late tokens may differ; the share of equal tokens is reported).

Part ``sweep``: the Exp 3 sweep of :mod:`drope_lens.experiments.knowledge` (420 prompts x 3
conditions: baseline, topk_mean_q_k, massive_zero; logit scoring plus 20 new tokens) against HF
doing the same work with HF forward hooks (prefill scores via ``output_scores``), same prompts,
same batch size. Target ratio: at most 1.2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .random_checkpoint import bench_pair
from .timing import cuda_median

N_PROMPTS, PROMPT_TOKENS, NEW_TOKENS = 8, 256, 32


def checkpoint(workdir: Path) -> Path:
    """The shared benchmark checkpoint (:func:`random_checkpoint.bench_pair`, RoPE)."""
    return bench_pair(workdir)[0]


def generation_part(model, hf, repeat: int) -> dict:
    from drope_lens.measurement.generation import greedy_generate
    from drope_lens.hooks.conditions import build_condition

    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(3, 7000, (N_PROMPTS, PROMPT_TOKENS), generator=gen)
    rows[:, 0] = 1
    prompts = rows.tolist()
    cuda_rows = rows.cuda()
    mask = torch.ones_like(cuda_rows)

    def ours(hooks=(), graphs=True):
        return greedy_generate(model, prompts, NEW_TOKENS, fwd_hooks=hooks, batch_size=N_PROMPTS, cuda_graphs=graphs)

    def theirs():
        with torch.inference_mode():
            return hf.generate(cuda_rows, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                               do_sample=False, pad_token_id=0, eos_token_id=None)

    print(f"generation {N_PROMPTS}x{PROMPT_TOKENS}->{NEW_TOKENS}: warm-up", flush=True)
    ours(), ours(graphs=False), theirs()  # warm-up
    t_hf, out_hf = cuda_median(theirs, repeat)
    t_ours, out = cuda_median(ours, repeat)
    t_eager, out_eager = cuda_median(lambda: ours(graphs=False), repeat)
    print(f"  HF {t_hf * 1e3:.0f} ms, ours (CUDA graph) {t_ours * 1e3:.0f} ms, ours static eager "
          f"{t_eager * 1e3:.0f} ms", flush=True)
    bos_hooks = build_condition(model, "l1_both_bos").hooks
    ours(bos_hooks)
    t_hooked, _ = cuda_median(lambda: ours(bos_hooks), repeat)
    hf_tokens = out_hf[:, PROMPT_TOKENS:].cpu().tolist()
    equal = sum(a == b for r, s in zip(out.tokens, hf_tokens) for a, b in zip(r, s))
    first = sum(r[0] == s[0] for r, s in zip(out.tokens, hf_tokens))
    result = {"hf_generate_s": t_hf, "ours_s": t_ours, "ratio": t_ours / t_hf,
              "ours_static_eager_s": t_eager, "graph_tokens_equal_eager": out.tokens == out_eager.tokens,
              "ours_l1_both_bos_s": t_hooked, "ratio_hooked": t_hooked / t_hf,
              "equal_token_share": equal / (N_PROMPTS * NEW_TOKENS), "equal_first_token_share": first / N_PROMPTS,
              "repeat": repeat}
    print(f"generation 8x256->32: ours {t_ours * 1e3:.0f} ms, HF generate {t_hf * 1e3:.0f} ms, "
          f"ratio {t_ours / t_hf:.2f}; under l1_both_bos {t_hooked * 1e3:.0f} ms (ratio {t_hooked / t_hf:.2f})",
          flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/drope_lens_bench"))
    parser.add_argument("--out", type=Path, default=Path("generation_bench.json"))
    parser.add_argument("--part", choices=["generation", "sweep", "all"], default="all")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of the generation part")
    parser.add_argument("--sweep-repeat", type=int, default=1,
                        help="timed runs of the Exp 3 sweep (each is 420 prompts x 3 conditions, ours and HF)")
    parser.add_argument("--sweep-prompts", type=int, default=None,
                        help="time the sweep on an evenly spaced subset of this many prompts (default: all 420)")
    args = parser.parse_args()

    import drope_lens as dl
    from transformers import LlamaForCausalLM

    directory = checkpoint(args.workdir)
    report: dict = {"device": torch.cuda.get_device_name()}
    model = dl.load_model(directory, dtype="bf16", device="cuda")
    hf = LlamaForCausalLM.from_pretrained(directory, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    if args.part in ("generation", "all"):
        report["generation"] = generation_part(model, hf, args.repeat)
        args.out.write_text(json.dumps(report, indent=2))
    if args.part in ("sweep", "all"):
        from .knowledge_bench import sweep_part

        report["sweep"] = sweep_part(model, hf, args.sweep_repeat, args.sweep_prompts)
        args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
