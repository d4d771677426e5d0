"""Bit-identity of logits and of every hooked activation across two versions of the code.

``dump`` loads a few models (the bundled toy RoPE and DroPE, and two random checkpoints built
here with a fixed seed: a grouped-query one and one of Llama-2-7B's widths with 2 layers), runs
each on fixed token rows and writes the SHA-256 of the bytes, shape and dtype of every tensor it
sees to a JSON file:

* logits of a plain forward (fused paths, nothing hooked);
* ``run_with_cache`` with every hook point (explicit attention, eager norms), logits and cache;
* ``run_with_hooks`` with one hook on a residual stream (that hook point called, the rest skipped);
* a left-padded batch with an attention mask (per-row positions, the mask path);
* a prompt and three one-token steps through TransformerLens's KV cache (offsets, cached keys).

``compare`` prints ``all identical (N tensors)`` when two dumps agree on every entry, else each
entry that differs. The script imports ``drope_lens`` from wherever ``PYTHONPATH`` points, so the
same file runs on the code before and after a change::

    PYTHONPATH=/path/to/old python activation_digest.py dump --device cuda --out before.json
    PYTHONPATH=/path/to/new python activation_digest.py dump --device cuda --out after.json
    python activation_digest.py compare before.json after.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch


def digest(tensor: torch.Tensor) -> str:
    """``dtype shape sha256`` of the tensor's bytes (bit-exact fingerprint)."""
    flat = tensor.detach().contiguous().reshape(-1).cpu()
    raw = flat.view(torch.uint8) if flat.numel() else flat.to(torch.uint8)
    return f"{flat.dtype} {tuple(tensor.shape)} {hashlib.sha256(raw.numpy().tobytes()).hexdigest()}"


def random_checkpoint(directory: Path, **config) -> Path:
    """A random-weight Llama checkpoint with seed 0 (same bytes on every run), with the toy tokenizer."""
    if (directory / "config.json").is_file():
        return directory
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    cfg = LlamaConfig(rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1,
                      eos_token_id=2, max_position_embeddings=4096, **config)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    with torch.no_grad():  # visible q.k and sizable activations
        for param in model.parameters():
            if param.ndim == 2:
                param.mul_(4.0)
    model.save_pretrained(directory)
    from drope_lens.model import bundled

    PreTrainedTokenizerFast.from_pretrained(bundled.root() / "rope").save_pretrained(directory)
    return directory


def cases(workdir: Path) -> dict[str, tuple[Path, int]]:
    from drope_lens.model import bundled

    return {
        "toy_rope": (bundled.root() / "rope", 200),
        "toy_drope": (bundled.root() / "drope", 200),
        "gqa_rope": (random_checkpoint(workdir / "gqa", vocab_size=512, hidden_size=512, intermediate_size=1376,
                                       num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2), 300),
        "wide_rope": (random_checkpoint(workdir / "wide", vocab_size=1024, hidden_size=4096, intermediate_size=11008,
                                        num_hidden_layers=2, num_attention_heads=32, num_key_value_heads=32), 257),
    }


def run_model(model, n_tokens: int, device: str) -> dict[str, str]:
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    out: dict[str, str] = {}
    gen = torch.Generator().manual_seed(1)
    vocab = model.cfg.d_vocab
    tokens = torch.randint(3, vocab, (2, n_tokens), generator=gen).to(device)
    tokens[:, 0] = 1
    with torch.inference_mode():
        out["plain/logits"] = digest(model(tokens))
        logits, cache = model.run_with_cache(tokens)
        out["cache/logits"] = digest(logits)
        for name, value in cache.items():
            out[f"cache/{name}"] = digest(value)
        del cache
        seen = {}
        layer = model.cfg.n_layers // 2

        def keep(value, hook):
            seen[hook.name] = value.clone()

        out["one_hook/logits"] = digest(model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.hook_resid_mid", keep)]))
        for name, value in seen.items():
            out[f"one_hook/{name}"] = digest(value)
        mask = torch.ones_like(tokens)
        mask[1, : n_tokens // 3] = 0  # left padding of the second row
        out["padded/logits"] = digest(model(tokens, attention_mask=mask))
        kv = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 2)
        out["kv/prompt"] = digest(model(tokens[:, : n_tokens - 3], past_kv_cache=kv))
        for step in range(3):
            index = n_tokens - 3 + step
            out[f"kv/step{step}"] = digest(model(tokens[:, index : index + 1], past_kv_cache=kv))
    return out


def dump(args) -> int:
    import drope_lens as dl

    report = {"drope_lens": str(Path(dl.__file__).parent), "torch": torch.__version__, "entries": {}}
    if args.device == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
    for name, (path, n_tokens) in cases(args.workdir).items():
        start = time.perf_counter()
        model = dl.load_model(path, dtype=getattr(torch, args.dtype), device=args.device)
        for key, value in run_model(model, n_tokens, args.device).items():
            report["entries"][f"{name}/{key}"] = value
        del model
        print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"{len(report['entries'])} tensors from {report['drope_lens']} -> {args.out}")
    return 0


def compare(args) -> int:
    a, b = (json.loads(Path(p).read_text())["entries"] for p in (args.before, args.after))
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    for key in differ:
        print(f"DIFFERS {key}: {a.get(key)} vs {b.get(key)}")
    if differ:
        print(f"{len(differ)} of {len(a.keys() | b.keys())} entries differ")
        return 1
    print(f"all identical ({len(a)} tensors)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    d.add_argument("--dtype", default="bfloat16")
    d.add_argument("--workdir", type=Path, default=Path("/tmp/activation_digest"))
    d.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare")
    c.add_argument("before")
    c.add_argument("after")
    args = parser.parse_args(argv)
    return dump(args) if args.command == "dump" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
