"""Byte-level BPE tokenizers trained by the project (Hugging Face format, BOS prepended)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

BOS, EOS, UNK = "<s>", "</s>", "<unk>"


def train_tokenizer(texts: Iterable[str], directory: Path, vocab_size: int = 4096):
    """Train a byte-level BPE on ``texts`` and save it to ``directory`` in Hugging Face format.

    Special tokens: ``<unk>`` = 0, ``<s>`` = 1 (BOS, prepended to every encoded text),
    ``</s>`` = 2 (EOS). Digits are split one per token before the byte-level step, so a passkey
    is the same token sequence wherever it appears. Returns the ``PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 260:
        raise ValueError(f"vocab_size={vocab_size}: a byte-level BPE needs at least 259 (256 bytes + 3 specials).")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[UNK, BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, unk_token=UNK)
    Path(directory).mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(directory)
    return fast
