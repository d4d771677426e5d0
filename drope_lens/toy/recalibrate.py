"""Recalibration recipes for the toy DroPE model, starting from an existing toy RoPE checkpoint.

``python -m drope_lens.toy.recalibrate ROPE_DIR OUT --recipe NAME [--recipe NAME ...]`` drops rotary
from ``ROPE_DIR`` (:func:`drope_lens.to_drope`), recalibrates once per recipe, measures each result
with Exp 10's own code (:mod:`drope_lens.experiments.context_length`, simple format, keys that are
multiples of 7, which the corpus never contains) and the corpus's held-out perplexity, and keeps the
best DroPE checkpoint (highest accuracy at 2x the trained length on selection seed 1; the numbers
reported are those of seed 0). Recipes:

- ``base``: the bundled recipe (corpus mix of :mod:`.corpus`, lr 3e-3, 20% of pretraining steps);
- ``long``: the same data, twice the steps;
- ``curriculum``: the base mix plus as many extra passkey documents in Exp 10's layout (first filler
  repeat cut short, needle between repeats at any depth 0-100%, 1-17 repeats: up to the whole
  256-token context), twice the steps.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .corpus import FILLER, NEEDLE, PASSKEY_QUESTION, CorpusConfig, _documents, fact_split, passkey_key
from .train import pack, train

RECIPES = ("base", "long", "curriculum")


@dataclass(frozen=True)
class Recipe:
    name: str
    steps: int
    lr: float = 3e-3
    extra_passkeys: float = 0.0  # extra passkey documents per corpus document


def recipe(name: str, base_steps: int) -> Recipe:
    if name == "base":
        return Recipe(name, base_steps)
    if name == "long":
        return Recipe(name, 2 * base_steps)
    if name == "curriculum":
        return Recipe(name, 2 * base_steps, extra_passkeys=0.25)
    raise ValueError(f"recipe={name!r}: allowed values are {list(RECIPES)}.")


def curriculum_passkey(rng: random.Random) -> str:
    """A training passkey in Exp 10's layout: the first filler repeat cut short, the needle between
    whole repeats at any depth, 1-17 repeats; training keys only (never multiples of 7)."""
    key = passkey_key(rng, "train")
    unit = FILLER.split()
    repeats = rng.randint(1, 17)
    cut = rng.randrange(len(unit))
    words = unit[cut:] + unit * (repeats - 1) if repeats > 1 or cut == 0 else unit[cut:]
    boundaries = [0] + list(range(len(unit) - cut if cut else len(unit), len(words) + 1, len(unit)))
    before = rng.choice(boundaries)
    left, right = " ".join(words[:before]), " ".join(words[before:])
    text = ((left + " " if left else "") + NEEDLE.format(key=key) + right).strip()
    return f"{PASSKEY_QUESTION.format(text=text)} {key}"


def _shard(args) -> list[str]:
    config, n, stream, extra = args
    split = fact_split(config)
    texts = [d.text for d in _documents(config, n, stream, split)]
    rng = random.Random(f"{stream}-curriculum")
    texts += [curriculum_passkey(rng) for _ in range(int(extra * n))]
    rng.shuffle(texts)
    return texts


def recalibration_data(tokenizer, n_docs: int, extra: float, context: int, workers: int = 16) -> torch.Tensor:
    """Packed rows of ``n_docs`` fresh corpus documents (seed streams disjoint from training's and
    held-out's; the QA split of seed 0) plus ``extra * n_docs`` curriculum passkeys."""
    config = CorpusConfig()
    per = math.ceil(n_docs / workers)
    with ProcessPoolExecutor(workers) as pool:
        shards = list(pool.map(_shard, [(config, per, f"recal-{i}", extra) for i in range(workers)]))
        packed = list(pool.map(_pack_shard, [(tokenizer, s, context) for s in shards]))
    return torch.cat(packed)


def _pack_shard(args) -> torch.Tensor:
    tokenizer, texts, context = args
    return pack(tokenizer, texts, context)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rope")
    parser.add_argument("out")
    parser.add_argument("--recipe", action="append", choices=RECIPES)
    parser.add_argument("--base-steps", type=int, default=1200)
    parser.add_argument("--docs", type=int, default=640_000)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    from drope_lens import load_model, to_drope
    from drope_lens.experiments import context_length as cl
    from drope_lens.saving import save_model
    from drope_lens.toy.evaluate import heldout_perplexity

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.rope)
    context = json.loads((Path(args.rope) / "config.json").read_text())["max_position_embeddings"]
    recipes = [recipe(r, args.base_steps) for r in (args.recipe or ["base"])]
    data = {extra: recalibration_data(tok, args.docs, extra, context, args.workers)
            for extra in sorted({r.extra_passkeys for r in recipes})}
    rope = load_model(args.rope, device=args.device, requires_grad=True)
    eos = rope.tokenizer.eos_token_id
    print(f"data {time.perf_counter() - started:.1f}s rows {[d.shape for d in data.values()]}", flush=True)
    report: dict = {"rope": args.rope, "recipes": {}}
    lengths = [context, 2 * context, 4 * context]

    def measure(model) -> dict:
        model.eval()
        result = {"heldout_ppl": heldout_perplexity(model, CorpusConfig(), context)}
        for seed in (1, 0):
            df = cl.run(model, lengths, formats=("simple", "ruler"), n=args.n, seed=seed, verify=seed == 0,
                        key_divisor=7, show_progress=False, skip_too_short=True)
            acc = cl.accuracy(df)
            result[f"seed{seed}"] = {f"{r.format}@{r.length}": r.accuracy for r in acc.itertuples()}
            if seed == 0:
                result["categories"] = cl.error_shares(df).to_dict(orient="records")
                result["verification"] = cl.verification(df).to_dict(orient="records")
        return result

    with torch.inference_mode(False):
        report["rope_measured"] = measure(rope)
        print(json.dumps(report["rope_measured"]["seed0"]), flush=True)
        best = None
        for r in recipes:
            t0 = time.perf_counter()
            drope = to_drope(rope)
            log = train(drope, data[r.extra_passkeys], r.steps, batch_size=128, lr=r.lr, warmup=200, weight_decay=0.1,
                        seed=1, eos_token_id=eos, desc=f"recalibrate {r.name}")
            seconds = time.perf_counter() - t0
            result = {"recipe": asdict(r), "seconds": seconds, "tokens": log.tokens,
                      "final_loss": sum(log.losses[-100:]) / len(log.losses[-100:]), **measure(drope)}
            report["recipes"][r.name] = result
            print(r.name, json.dumps({k: result[k] for k in ("seconds", "heldout_ppl", "seed1", "seed0")}), flush=True)
            score = result["seed1"].get(f"simple@{2 * context}", 0.0)
            if best is None or score > best[0]:
                best = (score, r.name, drope)
            del drope
            torch.cuda.empty_cache()
            report["losses_" + r.name] = log.losses
    report["chosen"] = best[1]
    save_model(best[2], out / "drope", dtype="float16")
    report["total_seconds"] = time.perf_counter() - started
    (out / "recalibration.json").write_text(json.dumps(report, indent=2))
    print("chosen", best[1], f"total {report['total_seconds']:.1f}s", flush=True)


if __name__ == "__main__":
    main()
