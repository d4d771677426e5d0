"""Llama-2-7B-shaped equivalence on a GPU: drope_lens vs transformers in fp32, and bf16 noise.

    python -m drope_lens.benchmarks.equivalence_7b --workdir /tmp/bench --out eq.json

Random weights (std 0.02), 2 x 256 tokens. Reports max|delta logit| / max|logit| of drope_lens
against ``LlamaForCausalLM`` in float32 (the faithfulness check at full size) next to the same
measure between HF's own eager and sdpa paths (fp32 reordering noise on this GPU), and in bfloat16
both drope_lens's and transformers' own error against transformers-fp32 (so the bf16 difference
between the two implementations can be read against bf16 rounding noise).
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path

import torch

from .random_checkpoint import LlamaShape, write_random_checkpoint


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/drope_lens_bench"))
    parser.add_argument("--out", type=Path, default=Path("eq.json"))
    args = parser.parse_args()
    import drope_lens as dl
    from transformers import LlamaForCausalLM

    rope_dir = args.workdir / "rope"
    if not (rope_dir / "config.json").exists():
        write_random_checkpoint(rope_dir, LlamaShape())
    tokens = torch.randint(0, 32000, (2, 256), generator=torch.Generator().manual_seed(0)).cuda()
    report = {}
    with torch.inference_mode():
        hf32 = LlamaForCausalLM.from_pretrained(rope_dir, dtype=torch.float32, attn_implementation="sdpa").cuda().eval()
        ref = hf32(tokens).logits.float()
        # how far two HF attention paths in fp32 are apart: the scale of fp32 reordering noise here
        hf32.config._attn_implementation = "eager"
        report["fp32_hf_eager_vs_hf_sdpa"] = rel(hf32(tokens).logits.float(), ref)
        del hf32
        gc.collect(); torch.cuda.empty_cache()
        for variant in ("rope", "drope"):
            ours32 = dl.load_model(rope_dir, dtype=torch.float32, device="cuda", variant=variant)
            out = ours32(tokens).float()
            if variant == "rope":
                report["fp32_rel_error_vs_hf"] = rel(out, ref)
            else:  # the no-rotary reference: HF with cos/sin = 1/0, as upstream builds DroPE
                del ours32
                gc.collect(); torch.cuda.empty_cache()
                hf32 = LlamaForCausalLM.from_pretrained(rope_dir, dtype=torch.float32, attn_implementation="sdpa").cuda().eval()
                hf32.model.rotary_emb.inv_freq.zero_()
                report["fp32_drope_rel_error_vs_hf_no_rotary"] = rel(out, hf32(tokens).logits.float())
                del hf32
            gc.collect(); torch.cuda.empty_cache()
        hf16 = LlamaForCausalLM.from_pretrained(rope_dir, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
        hf_bf16 = hf16(tokens).logits.float()
        del hf16
        gc.collect(); torch.cuda.empty_cache()
        ours16 = dl.load_model(rope_dir, dtype="bf16", device="cuda")
        ours_bf16 = ours16(tokens).float()
        report["bf16_hf_rel_error_vs_hf_fp32"] = rel(hf_bf16, ref)
        report["bf16_drope_lens_rel_error_vs_hf_fp32"] = rel(ours_bf16, ref)
        report["bf16_drope_lens_vs_hf_bf16"] = rel(ours_bf16, hf_bf16)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
