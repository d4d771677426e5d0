"""Ship a pair trained by drope_lens/toy/gpu_stages.sh: python -m drope_lens.toy.ship FILES_AT [--dest drope_lens/data/toy]

FILES_AT holds what the GPU call returned (ckpt.tar.part-*, evaluation.json, log.txt). Unpacks the
checkpoints, copies rope/ and the chosen recipe's drope-<recipe>/ (as drope/), training.json (with the
chosen recipe summarised) and evaluation.json into DEST, writes SHA256SUMS, and prints the chosen
recipe, the table and every bar. Refuses when evaluation.json has no choice (the evaluation did not finish).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files_at")
    parser.add_argument("--dest", default="drope_lens/data/toy")
    args = parser.parse_args()
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
