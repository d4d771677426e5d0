"""Exp 10: prompts, answer categories, Wilson intervals, verification vs Hugging Face, determinism, errors."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

import drope_lens as dl
from drope_lens.measurement import passkey as pk
from drope_lens.experiments import context_length as cl
from drope_lens.engine.results import RunStore

CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,?:!'-\n"


def char_tokenizer(directory) -> PreTrainedTokenizerFast:
    """One token per character (<unk>=0, <s>=1, </s>=2, BOS prepended): 'Yes' and 'No' differ."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for ch in CHARS:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(directory)
    return fast


@pytest.fixture(scope="module")
def char_checkpoint(checkpoint_factory, tmp_path_factory):
    """A tiny RoPE checkpoint (and its HF reference) whose tokenizer is per character."""
    path, ref = checkpoint_factory(seed=3)
    directory = tmp_path_factory.mktemp("char")
    for item in path.iterdir():
        if item.is_file() and not item.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(item, directory / item.name)
    char_tokenizer(directory)
    return directory, ref


# ------------------------------------------------------------------------------------------
# Answers and categories (hand-written cases)
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("generated, category", [
    (" 52871", "exact"),
    (" The key is 52871.", "exact"),
    (" 52861", "near_miss"),          # one digit
    (" 12861", "near_miss"),          # two digits
    (" 12361", "wrong_digits"),       # three digits
    (" 528710", "off_by_one_length"),
    (" 5287", "off_by_one_length"),
    (" 528", "wrong_length"),
    (" 5287100", "wrong_length"),
    (" The sky is blue.", "no_number"),
    ("", "no_number"),
])
def test_categories(generated, category):
    assert pk.categorize(generated, "52871") == category


def test_answer_is_the_number_closest_in_length_first_on_ties():
    assert pk.extract_answer("7 then 52861 then 999", "52871") == "52861"
    # 5287 and 528711 are both one digit off: the first one wins
    assert pk.extract_answer("5287 or 528711", "52871") == "5287"
    assert pk.categorize("5287 or 528711", "52871") == "off_by_one_length"
    # two same-length numbers: the first one is the answer, unless the key itself is there
    assert pk.categorize("12345 52871", "52871") == "exact"
    assert pk.categorize("12361 52861", "52871") == "wrong_digits"
    assert pk.extract_answer("no digits", "52871") is None


def test_near_misses_differ_in_one_digit():
    import random

    misses = pk.near_misses("52871", random.Random(0))
    assert len(set(misses)) == 3 and "52871" not in misses
    for miss in misses:
        assert len(miss) == 5 and miss[0] != "0" and sum(a != b for a, b in zip(miss, "52871")) == 1
        assert pk.categorize(miss, "52871") == "near_miss"


# ------------------------------------------------------------------------------------------
# Wilson intervals (closed-form values, and scipy's implementation)
# ------------------------------------------------------------------------------------------
def test_wilson_values():
    low, high = pk.wilson_interval(10, 20)
    assert low == pytest.approx(0.299298, abs=1e-5) and high == pytest.approx(0.700702, abs=1e-5)
    low, high = pk.wilson_interval(0, 20)
    assert low == 0.0 and high == pytest.approx(0.161125, abs=1e-5)
    low, high = pk.wilson_interval(20, 20)
    assert low == pytest.approx(0.838875, abs=1e-5) and high == 1.0
    from scipy.stats import binomtest  # an independent implementation

    for k, n in ((3, 50), (7, 20), (1, 5)):
        reference = binomtest(k, n).proportion_ci(method="wilson")
        assert pk.wilson_interval(k, n) == pytest.approx((reference.low, reference.high), abs=1e-12)
    with pytest.raises(ValueError, match="n >= 1"):
        pk.wilson_interval(0, 0)


# ------------------------------------------------------------------------------------------
# Prompt lengths: within 1% of the target for every tokenizer the tests use
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", pk.FORMATS)
def test_prompt_length_within_one_percent(checkpoint_factory, char_checkpoint, fmt):
    from drope_lens.model.bundled import root

    path, _ = checkpoint_factory()
    tokenizers = {"word-level": AutoTokenizer.from_pretrained(path),
                  "per-character": AutoTokenizer.from_pretrained(char_checkpoint[0]),
                  "toy-bpe": AutoTokenizer.from_pretrained(root("toy") / "rope")}
    for name, tokenizer in tokenizers.items():
        count = lambda text, t=tokenizer: len(t(text)["input_ids"])  # noqa: E731
        for length in (400, 512, 1000, 2048):
            trial = pk.make_trial(fmt, length, None, 0, 0, count)
            assert abs(count(trial.prompt) - length) <= 0.01 * length, (name, length)
            assert trial.prompt_tokens == count(trial.prompt)
            assert abs(count(trial.verification_prompts()[0]) - length) <= 0.01 * length, (name, length)
            assert trial.needle.key in trial.prompt and len(trial.needle.key) == pk.KEY_DIGITS[fmt]


def test_trials_are_built_once_for_models_that_share_a_tokenizer(checkpoint_factory, monkeypatch):
    """The toy pair's two models load the same tokenizer twice: the second model's cell comes from the
    first one's (no tokenisation), equal to a fresh build; another tokenizer or BOS policy builds anew."""
    from types import SimpleNamespace

    from drope_lens.model.bundled import root

    monkeypatch.setattr(pk, "_MADE", {})
    rope, drope = (SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(root("toy") / v)) for v in ("rope", "drope"))
    first = pk.make_trials("ruler", 300, None, 3, 0, pk.token_counter(rope), 7)
    calls = []
    counter = pk.token_counter(drope)
    assert counter.key == pk.token_counter(rope).key  # read before the tokenizer is wrapped to count calls
    monkeypatch.setattr(counter, "tokenizer", lambda *a, **k: calls.append(a) or drope.tokenizer(*a, **k))
    assert pk.make_trials("ruler", 300, None, 3, 0, counter, 7) == first and calls == []
    monkeypatch.setattr(pk, "_MADE", {})
    assert pk.make_trials("ruler", 300, None, 3, 0, counter, 7) == first and calls  # built afresh: the same trials
    other = SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(checkpoint_factory()[0]))
    assert pk.token_counter(other).key != pk.token_counter(rope).key
    assert pk.token_counter(rope, "always").key != pk.token_counter(rope).key


def test_prompts_follow_the_study_verbatim():
    count = lambda text: len(text.split())  # noqa: E731
    simple = pk.make_trial("simple", 400, 0.5, 0, 0, count)
    assert simple.prompt.endswith("\n\nWhat is the secret passkey mentioned above? Answer with just the number:")
    assert f"yellow.  The secret passkey is {simple.needle.key}. Remember this number. The grass" in simple.prompt
    assert simple.prompt.split("\n\n")[0].endswith("The sun is yellow.")  # the haystack ends with a whole repeat
    ruler = pk.make_trial("ruler", 400, 0.5, 0, 0, count)
    assert ruler.prompt.startswith("Some special magic numbers are hidden within the following text. Make sure to "
                                   "memorize it. I will quiz you about the numbers afterwards.\n\n")
    name = ruler.needle.name
    assert f"The special magic number for {name} is: {ruler.needle.key}" in ruler.prompt
    assert ruler.prompt.endswith(f"What is the special magic number for {name} mentioned in the provided text? "
                                 f"The special magic number for {name} is:")
    verify = simple.verification_prompts()
    assert len(verify) == 4 and verify[0].startswith("Remember the magic number in the text below.\n\n")
    assert verify[0].endswith(f"\n\nIs {simple.needle.key} the magic number from the text? Answer Yes or No:")
    assert pk.random_key(__import__("random").Random(1), 5, 7).isdigit()
    assert int(pk.make_trial("simple", 400, None, 3, 0, count, key_divisor=7).needle.key) % 7 == 0


# ------------------------------------------------------------------------------------------
# The grid on a tiny model: verification vs Hugging Face, determinism, resume, errors
# ------------------------------------------------------------------------------------------
def test_verification_probabilities_match_hugging_face(char_checkpoint):
    directory, ref = char_checkpoint
    model = dl.load_model(directory)
    df = cl.run(model, [512], formats=("simple",), n=2, depths=[0.5], max_new_tokens=3, show_progress=False)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    yes, no = tokenizer.convert_tokens_to_ids("Y"), tokenizer.convert_tokens_to_ids("N")
    count = lambda text: len(tokenizer(text)["input_ids"])  # noqa: E731
    for row in df.itertuples():
        trial = pk.make_trial("simple", 512, 0.5, row.trial, 0, count)
        expected = []
        for prompt in trial.verification_prompts():
            ids = torch.tensor([tokenizer(prompt)["input_ids"]])
            with torch.no_grad():
                logits = ref(ids).logits[0, -1]
            expected.append(float(torch.softmax(logits[[yes, no]].double(), dim=0)[0]))
        assert row.p_yes_candidates == pytest.approx(expected, abs=1e-4)
        assert row.p_yes_key == pytest.approx(expected[0], abs=1e-4)
        assert row.p_yes_near == pytest.approx(sum(expected[1:]) / 3, abs=1e-4)
        assert row.rank_correct == (expected[0] > max(expected[1:]))
        assert row.prompt_tokens == count(trial.prompt)


def test_deterministic_and_resumable(char_checkpoint, tmp_path, monkeypatch):
    """Rows against Hugging Face greedy decoding, and a resume that never mixes configurations.

    Planted bugs this catches: (1) ``generated``, ``key`` or ``category`` of another trial, or a
    continuation cut differently (compared with HF ``generate`` on each trial's prompt, categorised
    by the hand-checked :func:`categorize`); (2) parts found by cell name only: a seed-6, n=3 run in
    the directory of a seed-5, n=2 run returned the seed-5 rows (now refused before any generation,
    naming both fields with both values); (3) a part of another seed, planted under a cell's name,
    read back on resume, or a finished cell recomputed; (4) ``overwrite`` that keeps old parts, or a
    meta.json of the first configuration."""
    from drope_lens.engine.results import RunMismatchError, load_run

    directory, ref = char_checkpoint
    model = dl.load_model(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    count = lambda text: len(tokenizer(text)["input_ids"])  # noqa: E731
    kwargs = dict(formats=("simple", "ruler"), n=2, seed=5, max_new_tokens=4, verify=False, show_progress=False)
    first = cl.run(model, [400], **kwargs)
    assert len(first) == 4
    for row in first.itertuples():
        trial = pk.make_trial(row.format, 400, None, row.trial, 5, count, verification=False)
        ids = torch.tensor([tokenizer(trial.prompt)["input_ids"]])
        with torch.no_grad():
            out = ref.generate(ids, max_new_tokens=4, do_sample=False, eos_token_id=2, pad_token_id=2)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert (row.key, row.prompt_tokens, row.generated) == (trial.needle.key, ids.shape[1], text)
        assert row.category == pk.categorize(text, trial.needle.key) and row.correct == (row.category == "exact")
    shares = cl.error_shares(first).set_index("format")
    for fmt, group in first.groupby("format"):
        for category in pk.CATEGORIES:
            assert shares.loc[fmt, category] == sum(c == category for c in group.category) / len(group)

    store = RunStore(tmp_path, "context_length", "t")
    pd.testing.assert_frame_equal(cl.run(model, [400], store=store, **kwargs), first, check_exact=True)
    assert len(list(store.parts.iterdir())) == 2  # one part per cell
    calls = []
    original = cl._cell_rows
    monkeypatch.setattr(cl, "_cell_rows", lambda *a: calls.append(a[1][0].format) or original(*a))
    with pytest.raises(RunMismatchError) as info:
        cl.run(model, [400], store=RunStore(tmp_path, "context_length", "t"), **(kwargs | {"seed": 6, "n": 3}))
    assert "config.seed: 5 in the directory, 6 asked" in str(info.value)
    assert "config.n: 2 in the directory, 3 asked" in str(info.value) and calls == []
    other_store = RunStore(tmp_path, "context_length", "other")
    other = cl.run(model, [400], store=other_store, **(kwargs | {"seed": 6}))
    assert list(other.key) != list(first.key)
    ruler = [p.name for p in store.parts.iterdir() if "ruler" in p.name]
    assert len(ruler) == 1
    shutil.copy(other_store.parts / ruler[0], store.parts / ruler[0])  # seed 6's rows under seed 5's cell name
    calls.clear()
    resumed = cl.run(model, [400], store=RunStore(tmp_path, "context_length", "t"), **kwargs)
    assert calls == ["ruler"]  # the simple cell was read, the foreign part recomputed
    pd.testing.assert_frame_equal(resumed, first, check_exact=True)
    fresh = RunStore(tmp_path, "context_length", "t", overwrite=True)
    again = cl.run(model, [400], store=fresh, **(kwargs | {"seed": 6}))
    pd.testing.assert_frame_equal(again, other, check_exact=True)
    fresh.finalize(again, {})
    data, meta = load_run(fresh.directory)
    (scope,) = meta["fingerprint"]["scopes"].values()
    assert scope["config"]["seed"] == 6 and list(data.key) == list(other.key)
    table = cl.accuracy(first)
    assert set(table.columns) >= {"accuracy", "low", "high", "n"} and (table.n == 2).all()


def test_bad_inputs_are_named(char_checkpoint):
    model = dl.load_model(char_checkpoint[0])
    with pytest.raises(pk.PromptError, match="shorter than the prompt without filler"):
        cl.run(model, [40], formats=("simple",), n=1, show_progress=False)
    with pytest.raises(ValueError, match="format='haystack'"):
        cl.run(model, [300], formats=("haystack",), n=1, show_progress=False)
    with pytest.raises(ValueError, match="n=0"):
        cl.run(model, [300], n=0, show_progress=False)
    with pytest.raises(ValueError, match="depths"):
        cl.run(model, [300], depths=[1.5], show_progress=False)
    with pytest.raises(ValueError, match="scaling_layers"):
        cl.run(model, [300], formats=("simple",), n=1, scaling=1.0, scaling_layers=[9], show_progress=False)
    assert cl.run(model, [40, 300], formats=("simple",), n=1, verify=False, max_new_tokens=2,
                  skip_too_short=True, show_progress=False).length.tolist() == [300]


def test_scaling_hooks_only_past_the_trained_context(char_checkpoint):
    model = dl.load_model(char_checkpoint[0])  # trained context 128
    assert cl.scaling_hooks(model, 100, 1.0, None) == []
    hooks = cl.scaling_hooks(model, 256, 1.0, [1])
    assert [name for name, _ in hooks] == ["blocks.1.attn.hook_rot_q"]
    q = torch.ones(1, 2, 4, 16)
    assert torch.allclose(hooks[0][1](q, None), q * (1 + torch.log(torch.tensor(2.0))))


def test_rope_past_its_context_warns_once_and_the_cli_runs(char_checkpoint, tmp_path, capsys):
    import warnings

    from drope_lens.cli import main

    model = dl.load_model(char_checkpoint[0])  # trained context 128
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = cl.run(model, [300, 400], formats=("simple",), n=2, verify=False, max_new_tokens=2, show_progress=False)
    assert len(df) == 4
    assert sum("exceed the RoPE model's trained context" in str(w.message) for w in caught) == 1
    code = main(["run", "context-length", "--rope", str(char_checkpoint[0]), "--device", "cpu", "--lengths", "300",
                 "--formats", "simple", "--trials", "2", "--max-new-tokens", "2", "--out", str(tmp_path)])
    assert code in (0, None)
    printed = capsys.readouterr().out
    assert "Passkey accuracy, simple format, by length" in printed and "Verification" in printed
    assert len(list(tmp_path.glob("context_length/*/data.parquet"))) == 1
