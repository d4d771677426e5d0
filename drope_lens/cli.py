"""``drope-lens`` command line: ``drope-lens info SOURCE``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence


def model_summary(model) -> dict:
    """What ``drope-lens info`` prints, as a dict."""
    spec = model.lens
    n_params = 0
    for name, param in model.named_parameters(remove_duplicate=False):
        if name.rsplit(".", 1)[-1].lstrip("_").startswith("b_"):
            continue  # TransformerLens's zero biases: not checkpoint parameters
        if spec.tie_word_embeddings and name == "unembed.W_U":
            continue  # shares storage with embed.W_E
        state = getattr(param, "quant_state", None)
        n_params += int(state.shape.numel()) if state is not None else param.numel()
    return {
        "source": spec.source,
        "variant": spec.variant,
        "attention_type": spec.attention_type,
        "softmax_scale": spec.softmax_scale if spec.softmax_scale is not None else f"1/sqrt({spec.d_head})",
        "layers": spec.n_layers,
        "heads": spec.n_heads,
        "kv_heads": spec.n_kv_heads,
        "d_head": spec.d_head,
        "d_model": spec.d_model,
        "d_mlp": spec.d_mlp,
        "vocab": spec.d_vocab,
        "n_ctx": model.cfg.n_ctx,
        "trained_context": spec.max_position_embeddings,
        "rope_theta": spec.rope_theta if spec.rotary else None,
        "tied_embeddings": spec.tie_word_embeddings,
        "dtype": str(model.cfg.dtype).replace("torch.", ""),
        "device": str(model.cfg.device),
        "parameters": n_params,
        "quantization": model.quantization or "none",
        "prepends_bos": model.cfg.default_prepend_bos,
    }


def _info(args: argparse.Namespace) -> int:
    from .loading import load_model

    model = load_model(
        args.source,
        dtype=args.dtype,
        device=args.device,
        n_ctx=args.n_ctx,
        quantization=args.quantization,
        variant=args.variant,
        revision=args.revision,
    )
    summary = model_summary(model)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        width = max(len(k) for k in summary)
        for key, value in summary.items():
            shown = f"{value:,}" if key == "parameters" else value
            print(f"{key:<{width}}  {shown}")
    return 0


def _random_checkpoint(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .benchmarks.random_checkpoint import SHAPES, write_drope_twin, write_random_checkpoint

    out = Path(args.out)
    nbytes = write_random_checkpoint(out, SHAPES[args.shape], seed=args.seed)
    print(f"wrote {out} ({nbytes / 2**20:.1f} MiB of random bf16 weights, shape {args.shape})")
    if args.drope:
        write_drope_twin(out, Path(args.drope), attention_type=args.attention_type)
        print(f"wrote {args.drope} (DroPE twin, attention_type={args.attention_type}, same weights)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drope-lens", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="load a checkpoint and describe it")
    info.add_argument("source", help="checkpoint directory or hub id")
    info.add_argument("--dtype", default="float32", help="float32 (default), bf16 or fp16")
    info.add_argument("--device", default="cpu")
    info.add_argument("--n-ctx", type=int, default=None)
    info.add_argument("--quantization", choices=["nf4"], default=None)
    info.add_argument("--variant", choices=["rope", "drope"], default=None)
    info.add_argument("--revision", default=None)
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=_info)

    rand = sub.add_parser("random-checkpoint", help="write a Llama-shaped checkpoint of random weights")
    rand.add_argument("out", help="directory to write")
    rand.add_argument("--shape", choices=["tiny", "llama2-7b"], default="tiny")
    rand.add_argument("--seed", type=int, default=0)
    rand.add_argument("--drope", default=None, help="also write a DroPE twin (same weights) here")
    rand.add_argument("--attention-type", default="nope", help="attention_type of the DroPE twin")
    rand.set_defaults(func=_random_checkpoint)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"drope-lens: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
