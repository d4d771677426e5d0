"""Quality of a toy RoPE/DroPE pair on prompts its corpus never contained.

Measures, per model:

- ``heldout_ppl``: exp of the mean next-token loss (nats/token) over the held-out stream of the
  corpus generator, packed like the training data;
- ``cities`` / ``sports`` / ``sentiment``: accuracy (0-1) of the study's logit comparison at the
  last prompt position (" Yes" vs " No", " Positive" vs " Negative"; see ``yes_no_accuracy``);
- ``passkey``: share of prompts whose greedy continuation (20 new tokens, the study's setting)
  contains the key, at the trained context and at 2x and 4x of it; each length reports the
  filler count and the prompt's token length.

    python -m drope_lens.toy.evaluate ROPE_DIR DROPE_DIR [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from jaxtyping import Int
from tqdm.auto import tqdm

from .corpus import FILLER, CorpusConfig, EvalItem, evaluation_sets, heldout_documents
from .corpus import corpus_config_from_dict, toy_metadata  # noqa: F401  (re-exported)
from .train import PAD, evaluate_loss, pack

ANSWER_TOKENS_RESERVED = 8  # room left for the answer when a prompt must fit a context


@dataclass(frozen=True)
class EvalConfig:
    """What :func:`evaluate_model` measures; ``context_multiples`` scale the trained context."""

    n_passkey: int = 50
    n_sentiment: int = 100
    context_multiples: tuple[int, ...] = (1, 2, 4)
    passkey_new_tokens: int = 20
    batch_size: int = 25

    def __post_init__(self) -> None:
        if min(self.n_passkey, self.n_sentiment, self.passkey_new_tokens, self.batch_size) < 1:
            raise ValueError(f"{self}: counts, new tokens and batch size must be at least 1.")
        if not self.context_multiples or min(self.context_multiples) < 1:
            raise ValueError(f"context_multiples={self.context_multiples}: need positive integers.")


def _answer_ids(tokenizer, word: str) -> list[int]:
    return tokenizer(" " + word, add_special_tokens=False)["input_ids"]


@torch.inference_mode()
def answer_logprob(model, prompt: Int[torch.Tensor, "1 pos"], answer: Sequence[int]) -> float:
    """log P(answer tokens | prompt) in nats, teacher-forced."""
    answer_t = torch.tensor([list(answer)], device=prompt.device)
    logits = model(torch.cat([prompt, answer_t[:, :-1]], dim=1))[0, prompt.shape[1] - 1 :]
    return float(logits.float().log_softmax(-1).gather(-1, answer_t[0, :, None]).sum())


@torch.inference_mode()
def yes_no_accuracy(model, items: Sequence[EvalItem], yes: str, no: str) -> float:
    """Share of ``items`` whose answer is the likelier of the two.

    When both answers are one token (" Yes"/" No" with the toy and Llama tokenizers) this is the
    study's logit comparison at the last prompt position; otherwise the teacher-forced
    log-probabilities of the whole answers are compared.
    """
    if not items:
        raise ValueError("no evaluation items.")
    yes_ids, no_ids = _answer_ids(model.tokenizer, yes), _answer_ids(model.tokenizer, no)
    if yes_ids == no_ids:
        raise ValueError(f"' {yes}' and ' {no}' tokenize identically; they cannot be told apart.")
    single = len(yes_ids) == 1 and len(no_ids) == 1
    correct = 0
    for item in items:
        prompt = model.to_tokens(item.prompt, truncate=False)
        if single:
            logits = model(prompt)[0, -1]
            yes_wins = bool(logits[yes_ids[0]] > logits[no_ids[0]])
        else:
            yes_wins = answer_logprob(model, prompt, yes_ids) > answer_logprob(model, prompt, no_ids)
        correct += (yes if yes_wins else no) == item.answer
    return correct / len(items)


@torch.inference_mode()
def greedy_continuations(model, tokens: Int[torch.Tensor, "batch pos"], new_tokens: int) -> list[str]:
    """Greedy continuations (decoded text) of equal-length prompts, KV cache on."""
    out = model.generate(tokens, max_new_tokens=new_tokens, do_sample=False, verbose=False,
                         stop_at_eos=False, use_past_kv_cache=True)
    return [model.tokenizer.decode(row[tokens.shape[1]:]) for row in out]


@torch.inference_mode()
def passkey_accuracy(model, items: Sequence[EvalItem], new_tokens: int = 20, batch_size: int = 25) -> float:
    """Share of prompts whose greedy continuation contains the key (the study's scoring)."""
    if not items:
        raise ValueError("no evaluation items.")
    correct = 0
    groups: dict[int, list[tuple[torch.Tensor, str]]] = {}
    for item in items:
        tokens = model.to_tokens(item.prompt, truncate=False)[0]
        groups.setdefault(tokens.shape[0], []).append((tokens, item.answer))
    for rows in groups.values():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            texts = greedy_continuations(model, torch.stack([t for t, _ in chunk]), new_tokens)
            correct += sum(answer in text for text, (_, answer) in zip(texts, chunk))
    return correct / len(items)


def passkey_repeats_for(tokenizer, config: CorpusConfig, length: int) -> tuple[int, int]:
    """The largest filler count whose passkey prompt, plus room for the answer, fits ``length``
    tokens; returns ``(repeats, prompt_tokens)``."""
    filler_tokens = len(tokenizer(FILLER, add_special_tokens=False)["input_ids"])
    repeats = max(1, length // max(1, filler_tokens))
    while repeats > 1:
        prompt = evaluation_sets(config, n_sentiment=0, n_passkey=1, passkey_repeats=repeats)["passkey"][0].prompt
        n = len(tokenizer(prompt)["input_ids"])
        if n + ANSWER_TOKENS_RESERVED <= length:
            return repeats, n
        repeats -= 1
    prompt = evaluation_sets(config, n_sentiment=0, n_passkey=1, passkey_repeats=1)["passkey"][0].prompt
    return 1, len(tokenizer(prompt)["input_ids"])


def heldout_perplexity(model, config: CorpusConfig, context: int) -> float:
    """exp(mean next-token loss) over the corpus's held-out documents, packed into ``context`` rows."""
    data = pack(model.tokenizer, [d.text for d in heldout_documents(config)], context)
    if not (data[:, 1:] != PAD).any():
        raise ValueError("the held-out stream has no target tokens.")
    return math.exp(evaluate_loss(model, data, model.tokenizer.eos_token_id))


def evaluate_model(model, corpus: CorpusConfig, context: int, config: EvalConfig = EvalConfig()) -> dict:
    """Every measurement of the module docstring for one model, as a JSON-ready dict."""
    sets = evaluation_sets(corpus, n_sentiment=config.n_sentiment, n_passkey=1)
    result: dict = {
        "heldout_ppl": heldout_perplexity(model, corpus, context),
        "cities": yes_no_accuracy(model, sets["cities"], "Yes", "No"),
        "sports": yes_no_accuracy(model, sets["sports"], "Yes", "No"),
        "sentiment": yes_no_accuracy(model, sets["sentiment"], "Positive", "Negative"),
        "n": {"cities": len(sets["cities"]), "sports": len(sets["sports"]), "sentiment": len(sets["sentiment"]),
              "passkey": config.n_passkey},
        "passkey": {},
    }
    for multiple in tqdm(config.context_multiples, desc="passkey lengths", leave=False):
        repeats, n_tokens = passkey_repeats_for(model.tokenizer, corpus, multiple * context)
        items = evaluation_sets(corpus, n_sentiment=0, n_passkey=config.n_passkey, passkey_repeats=repeats)["passkey"]
        result["passkey"][f"{multiple}x"] = {
            "accuracy": passkey_accuracy(model, items, config.passkey_new_tokens, config.batch_size),
            "filler_repeats": repeats, "prompt_tokens": n_tokens, "context_tokens": multiple * context,
        }
    return result


def evaluate_pair(rope_dir: Path, drope_dir: Path, *, device: Optional[str] = None,
                  config: EvalConfig = EvalConfig()) -> dict:
    """Load both checkpoints (float32) and evaluate them on the corpus recorded in ``toy.json``
    beside them (or the default corpus), with ``heldout_ppl_ratio`` = DroPE / RoPE."""
    from ..model.loading import load_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    corpus, context = toy_metadata(Path(rope_dir))
    n_ctx = max(config.context_multiples) * context + config.passkey_new_tokens + 8
    out: dict = {"trained_context": context}
    for name, directory in (("rope", rope_dir), ("drope", drope_dir)):
        model = load_model(directory, device=device, n_ctx=n_ctx)
        out[name] = evaluate_model(model, corpus, context, config)
        del model
    out["heldout_ppl_ratio"] = out["drope"]["heldout_ppl"] / out["rope"]["heldout_ppl"]
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rope")
    parser.add_argument("drope")
    parser.add_argument("--device", default=None)
    parser.add_argument("--n-passkey", type=int, default=EvalConfig.n_passkey)
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    result = evaluate_pair(Path(args.rope), Path(args.drope), device=args.device,
                           config=EvalConfig(n_passkey=args.n_passkey))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
