"""Ship a pair trained by drope_lens/toy/gpu_stages.sh: python -m drope_lens.toy.ship FILES_AT [--dest drope_lens/data/toy]

FILES_AT holds what the GPU call returned (ckpt.tar.part-*, evaluation.json, log.txt). Unpacks the
checkpoints, copies rope/ and the chosen recipe's drope-<recipe>/ (as drope/), training.json (with the
chosen recipe summarised) and evaluation.json into DEST, writes SHA256SUMS, and prints the chosen
recipe, the table and every bar. Refuses when evaluation.json has no choice (the evaluation did not finish).

``python -m drope_lens.toy.ship --assemble ROPE.json DROPE.json --recipe NAME --out evaluation.json``
builds that evaluation.json from two :func:`drope_lens.toy.bars.measure_model` results measured
apart (issue 20's third run: the device time ran out after RoPE's evaluation, so the DroPE model
was measured in a second call); the recipe is then chosen beforehand, not by a selection seed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def assemble(rope: dict, drope: dict, recipe: str, scalings: tuple[float, ...], chosen_scaling: float = 0.0,
             note: str = "") -> dict:
    """An evaluation.json (the layout of :func:`drope_lens.toy.train.evaluate_and_select`) from two
    measurements, with the bars at ``c = 0`` and at every scaling, the table, and the quality
    measurements under ``rope`` / ``drope`` (held-out perplexity, cities, sports, sentiment)."""
    from drope_lens.toy import bars

    result = {"report_seed": 0, "measured": {"rope": rope, f"drope-{recipe}": drope},
              "chosen": {"recipe": recipe, "scaling": chosen_scaling, "how": note},
              "bars": {f"scaling {c:g}": bars.check(rope, drope, c, ("simple", "ruler")) for c in (0.0, *scalings)},
              "table": bars.table(rope, drope, scalings)}
    for name, measured in (("rope", rope), ("drope", drope)):
        result[name] = {k: measured[k] for k in ("heldout_ppl", "cities", "sports", "sentiment", "n")}
    result["heldout_ppl_ratio"] = drope["heldout_ppl"] / rope["heldout_ppl"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files_at", nargs="?")
    parser.add_argument("--dest", default="drope_lens/data/toy")
    parser.add_argument("--assemble", nargs=2, metavar=("ROPE_JSON", "DROPE_JSON"))
    parser.add_argument("--recipe", default=None)
    parser.add_argument("--scalings", type=float, nargs="*", default=[0.1])
    parser.add_argument("--note", default="")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.assemble:
        if not (args.recipe and args.out):
            parser.error("--assemble needs --recipe and --out.")
        rope, drope = (json.loads(Path(p).read_text()) for p in args.assemble)
        result = assemble(rope, drope, args.recipe, tuple(args.scalings), note=args.note)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(result["table"])
        for label, checks in result["bars"].items():
            for key, value in checks.items():
                print(f"[{label}] {key}: {value['value']:.3f} ({value['bar']}) {'MET' if value['met'] else 'NOT MET'}")
        return 0
    if not args.files_at:
        parser.error("FILES_AT is required (or --assemble).")
    source, dest = Path(args.files_at), Path(args.dest)
    evaluation = json.loads((source / "evaluation.json").read_text())
    if "chosen" not in evaluation:
        print(f"{source}/evaluation.json has no 'chosen': the evaluation did not finish; nothing shipped.")
        return 1
    recipe = evaluation["chosen"]["recipe"]
    work = Path(tempfile.mkdtemp())
    parts = sorted(source.glob("ckpt.tar.part-*"))
    with open(work / "ckpt.tar", "wb") as out:
        for part in parts:
            out.write(part.read_bytes())
    subprocess.run(["tar", "-xf", str(work / "ckpt.tar"), "-C", str(work)], check=True)
    from drope_lens.model.bundled import write_hashes
    from drope_lens.toy.train import summarize

    for name in ("rope", "drope"):
        if (dest / name).exists():
            shutil.rmtree(dest / name)
    shutil.copytree(work / "rope", dest / "rope")
    shutil.copytree(work / f"drope-{recipe}", dest / "drope")
    training = summarize(json.loads((work / "training.json").read_text()), recipe)
    (dest / "training.json").write_text(json.dumps(training, indent=2))
    (dest / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
    write_hashes(dest)
    print(f"shipped rope + drope-{recipe} (scaling c={evaluation['chosen']['scaling']}) into {dest}")
    print(evaluation["table"])
    for label, checks in evaluation["bars"].items():
        for key, value in checks.items():
            print(f"[{label}] {key}: {value['value']:.3f} ({value['bar']}) {'MET' if value['met'] else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
