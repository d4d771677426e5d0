"""Issue 20's bars for a toy RoPE/DroPE pair, measured with Exp 10's own code and the toy evaluator.

Measured per model (``measure_model``):

- ``heldout_ppl``, ``cities``, ``sports``, ``sentiment``: :func:`drope_lens.toy.evaluate.evaluate_model`
  (perplexity of the corpus's held-out stream; logit-comparison accuracies, 0-1);
- ``cells``: Exp 10 retrieval (:func:`drope_lens.experiments.context_length.run`, keys only among
  multiples of 7, which training never contains; needle depth uniform in the middle half; greedy,
  20 new tokens, exact match) at 1x, 2x and 4x the trained context, simple and RULER formats, each
  without log-length scaling and with each ``scalings`` value ``c`` (attention logits of every
  layer times ``1 + c ln(L / L_train)``; the identity at 1x, so 1x is measured once). Accuracy,
  Wilson 95% interval, n;
- ``verification``: at 1x, mean P(Yes | key), mean P(Yes | near-miss) and their difference
  (discrimination, with a normal 95% interval over trials), ranking accuracy.

``check`` compares a pair's measurements with the bars (1x: both >= 90% in both formats,
discrimination's lower bound > 0; 2x simple: DroPE >= 60%, RoPE <= 25%; 4x simple: DroPE >= 30%;
held-out perplexity DroPE <= 1.3x RoPE; cities >= 80% both).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

from .corpus import CorpusConfig
from .evaluate import EvalConfig, evaluate_model

MULTIPLES = (1, 2, 4)


@dataclass(frozen=True)
class BarsConfig:
    """What ``measure_model`` measures: ``n`` keys per cell, Exp 10 ``seed``, the scalings ``c``."""

    n: int = 50
    seed: int = 0
    scalings: tuple[float, ...] = (0.1,)
    formats: tuple[str, ...] = ("simple", "ruler")
    long_formats: tuple[str, ...] = ("simple", "ruler")  # formats measured past 1x
    multiples: tuple[int, ...] = MULTIPLES
    verify: bool = True
    quality: bool = True  # also perplexity, cities, sports, sentiment (the toy evaluator)
    n_sentiment: int = 100

    def __post_init__(self) -> None:
        if self.n < 1 or any(c < 0 for c in self.scalings) or not self.multiples:
            raise ValueError(f"{self}: need n >= 1, scalings >= 0 and at least one multiple.")


def measure_model(model, corpus: CorpusConfig, context: int, config: BarsConfig = BarsConfig(),
                  log=print) -> dict:
    """Every measurement of the module docstring for one model (JSON-ready)."""
    from drope_lens.experiments import context_length as cl

    out: dict = {"variant": model.lens.variant, "cells": [], "verification": []}
    if config.quality:
        quality = evaluate_model(model, corpus, context, EvalConfig(n_passkey=config.n, n_sentiment=config.n_sentiment,
                                                                    context_multiples=(1,)))
        out.update({k: quality[k] for k in ("heldout_ppl", "cities", "sports", "sentiment", "n")})
        out["toy_passkey_1x"] = quality["passkey"]["1x"]
        log(f"  {out['variant']}: ppl {out['heldout_ppl']:.4f} cities {out['cities']:.3f} sports {out['sports']:.3f} "
            f"sentiment {out['sentiment']:.3f} toy passkey 1x {out['toy_passkey_1x']['accuracy']:.2f}")
    for scaling in (0.0, *config.scalings):
        lengths = [m * context for m in config.multiples if scaling == 0.0 or m > 1]
        if not lengths:
            continue
        verify = config.verify and scaling == 0.0
        for length in lengths:
            formats = config.formats if length == context else config.long_formats
            df = cl.run(model, [length], formats=formats, n=config.n, seed=config.seed,
                        verify=verify and length == context, key_divisor=7, scaling=scaling, show_progress=False)
            for row in cl.accuracy(df).itertuples():
                cell = {"format": row.format, "length": int(row.length), "multiple": int(row.length) / context,
                        "scaling": scaling, "accuracy": float(row.accuracy), "low": float(row.low),
                        "high": float(row.high), "n": int(row.n)}
                shares = cl.error_shares(df[df["format"] == row.format]).iloc[0]
                cell["categories"] = {c: float(shares[c]) for c in cl.CATEGORIES}
                out["cells"].append(cell)
                log(f"  {out['variant']} {row.format:6s} {int(row.length):5d} c={scaling:<4} {row.accuracy:.0%} "
                    f"[{row.low:.0%}, {row.high:.0%}]")
            if "p_yes_key" in df:
                for row in cl.verification(df).itertuples():
                    entry = {k: (float(v) if not isinstance(v, str) else v) for k, v in row._asdict().items()
                             if k not in ("Index", "variant")}
                    out["verification"].append(entry)
                    log(f"  {out['variant']} verify {row.format} {int(row.length)}: P(Yes|key) {row.p_yes_key:.3f} "
                        f"P(Yes|near) {row.p_yes_near:.3f} disc {row.discrimination:.3f} "
                        f"[{row.disc_low:.3f}, {row.disc_high:.3f}] ranking {row.ranking:.2f}")
    return out


def cell(measured: dict, fmt: str, multiple: float, scaling: float = 0.0) -> Optional[dict]:
    """The cell of ``measured`` for (format, multiple, scaling); 1x cells serve every scaling."""
    for entry in measured["cells"]:
        if entry["format"] == fmt and entry["multiple"] == multiple and (
                entry["scaling"] == scaling or (multiple == 1 and entry["scaling"] == 0.0)):
            return entry
    return None


def check(rope: dict, drope: dict, scaling: float = 0.0, formats: Sequence[str] = ("simple",)) -> dict[str, dict]:
    """Each bar: ``{"value": ..., "bar": ..., "met": bool}``. 2x/4x bars apply to ``formats``
    (default: the simple format, as Exp 10's headline); the 1x bars to both formats."""
    bars: dict[str, dict] = {}

    def add(name: str, value, bar: str, met: bool) -> None:
        bars[name] = {"value": value, "bar": bar, "met": bool(met)}

    for name, measured in (("rope", rope), ("drope", drope)):
        for fmt in ("simple", "ruler"):
            entry = cell(measured, fmt, 1)
            if entry is not None:
                add(f"{name} {fmt} 1x", entry["accuracy"], ">= 0.90", entry["accuracy"] >= 0.9)
        for entry in measured.get("verification", []):
            if entry["length"] == min(e["length"] for e in measured["cells"]):
                add(f"{name} verification {entry['format']} 1x", entry["discrimination"], "lower bound > 0",
                    entry["disc_low"] > 0)
    for fmt in formats:
        for model, multiple, bar, ok in (("drope", 2, ">= 0.60", lambda a: a >= 0.6),
                                         ("rope", 2, "<= 0.25", lambda a: a <= 0.25),
                                         ("drope", 4, ">= 0.30", lambda a: a >= 0.3)):
            entry = cell(drope if model == "drope" else rope, fmt, multiple, scaling if model == "drope" else 0.0)
            if entry is not None:
                add(f"{model} {fmt} {multiple}x" + (f" c={scaling}" if model == "drope" and scaling else ""),
                    entry["accuracy"], bar, ok(entry["accuracy"]))
    if "heldout_ppl" in rope and "heldout_ppl" in drope:
        ratio = drope["heldout_ppl"] / rope["heldout_ppl"]
        add("held-out perplexity DroPE / RoPE", ratio, "<= 1.3", ratio <= 1.3)
        for name, measured in (("rope", rope), ("drope", drope)):
            add(f"{name} cities", measured["cities"], ">= 0.80", measured["cities"] >= 0.8)
    return bars


def table(rope: dict, drope: dict, scalings: Sequence[float]) -> str:
    """A markdown table of the retrieval cells, RoPE and DroPE side by side, per scaling."""
    lines = ["| format | length | scaling c | RoPE | DroPE |", "|---|---|---|---|---|"]
    multiples = sorted({e["multiple"] for e in drope["cells"]})
    for fmt in ("simple", "ruler"):
        for multiple in multiples:
            for scaling in ((0.0,) if multiple == 1 else (0.0, *scalings)):
                parts = []
                for measured in (rope, drope):
                    entry = cell(measured, fmt, multiple, scaling)
                    parts.append("" if entry is None else
                                 f"{entry['accuracy']:.0%} [{entry['low']:.0%}, {entry['high']:.0%}] (n={entry['n']})")
                if any(parts):
                    length = cell(drope, fmt, multiple, 0.0)
                    lines.append(f"| {fmt} | {length['length'] if length else ''} ({multiple:g}x) | {scaling:g} | "
                                 f"{parts[0]} | {parts[1]} |")
    return "\n".join(lines)


def config_dict(config: BarsConfig) -> dict:
    return asdict(config)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m drope_lens.toy.bars CHECKPOINT --out MEASURED.json [--n 50] [--scalings 0.1] [--device cuda]``:
    :func:`measure_model` of one toy checkpoint (its corpus and context from its ``toy.json``)."""
    import argparse
    import json
    from pathlib import Path

    from ..model.loading import load_model
    from .corpus import toy_metadata

    parser = argparse.ArgumentParser(description="issue 20's measurements of one toy checkpoint")
    parser.add_argument("checkpoint")
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--scalings", type=float, nargs="*", default=[0.1])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    corpus, context = toy_metadata(Path(args.checkpoint))
    model = load_model(args.checkpoint, device=args.device, n_ctx=4 * context + 64)
    measured = measure_model(model, corpus, context, BarsConfig(n=args.n, scalings=tuple(args.scalings)),
                             lambda line: print(line, flush=True))
    Path(args.out).write_text(json.dumps(measured, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
