"""A quick read of toy-pair quality on the held-out evaluation sets (not the final evaluation code).

    python -m drope_lens.toy.probe OUT_DIR   # OUT_DIR from drope-lens train-toy
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import drope_lens as dl

from .corpus import CorpusConfig, evaluation_sets


@torch.inference_mode()
def yes_no_accuracy(model, items, yes: str, no: str) -> float:
    """Share of items where the answer token's logit beats the other's at the prompt's last position."""
    yes_id = model.tokenizer(" " + yes, add_special_tokens=False)["input_ids"][0]
    no_id = model.tokenizer(" " + no, add_special_tokens=False)["input_ids"][0]
    correct = 0
    for item in items:
        logits = model(model.to_tokens(item.prompt, truncate=False))[0, -1]
        predicted = yes if logits[yes_id] > logits[no_id] else no
        correct += predicted == item.answer
    return correct / len(items)


@torch.inference_mode()
def passkey_accuracy(model, items, new_tokens: int = 8) -> float:
    """Share of prompts whose greedy continuation contains the key."""
    correct = 0
    for item in items:
        tokens = model.to_tokens(item.prompt, truncate=False)
        out = model.generate(tokens, max_new_tokens=new_tokens, do_sample=False, verbose=False)
        correct += item.answer in model.tokenizer.decode(out[0, tokens.shape[1]:])
    return correct / len(items)


def main() -> None:
    out = Path(sys.argv[1])
    report = json.loads((out / "training.json").read_text())
    config = CorpusConfig(**{k: (tuple(v) if k == "filler_repeats" else v) for k, v in report["corpus"].items()})
    context = report["model"]["context"]
    results = {}
    for name in ("rope", "drope"):
        model = dl.load_model(out / name, device="cuda" if torch.cuda.is_available() else "cpu")
        sets = {repeats: evaluation_sets(config, passkey_repeats=repeats)["passkey"] for repeats in (8, 20, 40)}
        base = evaluation_sets(config)
        lengths = {r: int(model.to_tokens(items[0].prompt, truncate=False).shape[1]) for r, items in sets.items()}
        results[name] = {
            "cities": yes_no_accuracy(model, base["cities"], "Yes", "No"),
            "sports": yes_no_accuracy(model, base["sports"], "Yes", "No"),
            "sentiment": yes_no_accuracy(model, base["sentiment"], "Positive", "Negative"),
            "passkey": {f"{lengths[r]} tokens": passkey_accuracy(model, items) for r, items in sets.items()},
            "trained_context": context,
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
