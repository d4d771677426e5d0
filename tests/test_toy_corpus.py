"""The toy corpus generator: deterministic, real fact tables, evaluation facts held out properly."""

from __future__ import annotations

import re

import pytest

from drope_lens.toy import corpus


def test_fact_tables():
    cities = corpus.cities()
    assert len(cities) >= 200 and len({c for c, _ in cities}) == len(cities)
    assert ("Abuja", "Nigeria") in cities
    assert len(corpus.athletes()) >= 80


def test_generator_is_deterministic_and_mixes_every_kind():
    config = corpus.CorpusConfig(n_train=600, n_heldout=50)
    train, heldout = corpus.build_corpus(config)
    assert (train, heldout) == corpus.build_corpus(config)
    assert train != corpus.build_corpus(corpus.CorpusConfig(seed=1, n_train=600, n_heldout=50))[0]
    assert {d.kind for d in train} == set(config.weights)
    assert len(train) == 600 and len(heldout) == 50
    assert not {d.text for d in heldout if d.kind in ("prose", "review", "simple_passkey", "ruler", "verify")} & {d.text for d in train}


def test_evaluation_facts_were_stated_but_never_asked():
    config = corpus.CorpusConfig(n_train=8000, n_heldout=10)
    train, _ = corpus.build_corpus(config)
    split = corpus.fact_split(config)
    evaluation = corpus.evaluation_sets(config)
    assert len(evaluation["cities"]) == len(split.city_eval) >= 80
    trained_questions = {d.text for d in train if d.kind in ("city_qa", "sport_qa")}
    asked_cities = {re.search(r"city of (.+) in ", d.text).group(1) for d in train if d.kind == "city_qa"}
    assert not asked_cities & {c for c, _ in split.city_eval}
    stated = "\n".join(d.text for d in train if d.kind == "city_fact")
    covered = sum(any(t.format(city=c, country=k) in stated for t in corpus.CITY_FACT_TEMPLATES)
                  for c, k in split.city_eval)
    assert covered / len(split.city_eval) > 0.9  # (nearly) every evaluation fact appears as a statement
    assert all(item.prompt + " " + item.answer not in trained_questions for item in evaluation["cities"])
    everything = "\n".join(d.text for d in train)
    assert not any(item.prompt in everything for item in evaluation["cities"] + evaluation["sports"])
    answers = [item.answer for item in evaluation["cities"]]
    assert 0.3 < answers.count("Yes") / len(answers) < 0.7


def test_passkeys_in_evaluation_never_occur_in_training():
    config = corpus.CorpusConfig(n_train=2000, n_heldout=10, weights={**corpus.DEFAULT_WEIGHTS, "passkey": 0.1})
    train, _ = corpus.build_corpus(config)
    train_keys = {d.text.rsplit(" ", 1)[-1] for d in train if d.kind in ("passkey", "simple_passkey")}
    evaluation = corpus.evaluation_sets(config, n_passkey=20)
    assert all(int(k) % 7 for k in train_keys)
    for item in evaluation["passkey"]:
        assert item.answer not in train_keys
        assert f"The secret passkey is {item.answer}. Remember this number." in item.prompt
        assert item.prompt.endswith("What is the secret passkey mentioned above? Answer with just the number:")


def test_config_validation():
    with pytest.raises(ValueError, match="qa_fraction"):
        corpus.CorpusConfig(qa_fraction=1.0)
    with pytest.raises(ValueError, match="unknown kinds"):
        corpus.CorpusConfig(weights={"poetry": 1.0})
    with pytest.raises(ValueError, match="context=64"):
        corpus.CorpusConfig(context=64)


def test_retrieval_documents_teach_the_exp10_formats_with_training_keys_only(tmp_path):
    """Simple and RULER prompts and the verification question, verbatim from drope_lens.measurement.passkey,
    with haystacks from short to the whole context; no number a training document asks about or
    offers as a candidate is a multiple of 7 (every evaluation key is)."""
    from drope_lens.measurement import passkey as pk

    config = corpus.CorpusConfig(n_train=3000, n_heldout=10)
    train, _ = corpus.build_corpus(config)
    by_kind = {k: [d.text for d in train if d.kind == k] for k in ("simple_passkey", "ruler", "verify", "copy_digits")}
    ruler_head, ruler_tail = pk.RULER_TEMPLATE.split("{context}")
    verify_head, verify_tail = pk.VERIFY_TEMPLATE.split("{context}")
    for text in by_kind["simple_passkey"]:
        prompt, key = text.rsplit(" ", 1)
        assert prompt.endswith(pk.SIMPLE_TEMPLATE.split("{text}")[1]) and pk.SIMPLE_NEEDLE.strip().format(key=key) in prompt
        assert int(key) % 7 and len(key) == 5
    for text in by_kind["ruler"]:
        prompt, key = text.rsplit(" ", 1)
        name = re.search(r"The special magic number for (\S+) is:$", prompt).group(1)
        assert prompt.startswith(ruler_head) and prompt.endswith(ruler_tail.format(name=name))
        assert f"The special magic number for {name} is: {key}." in prompt and len(key) == 7
        assert all(int(k) % 7 for k in re.findall(r"is: (\d+)\.", prompt))
    answers = []
    for text in by_kind["verify"]:
        prompt, answer = text.rsplit(" ", 1)
        candidate = re.search(r"Is (\d+) the magic number", prompt).group(1)
        key = re.search(r"(?:passkey is|is:) (\d+)\.", prompt).group(1)
        assert prompt.startswith(verify_head) and prompt.endswith(verify_tail.format(candidate=candidate))
        assert answer == ("Yes" if candidate == key else "No") and int(candidate) % 7 and int(key) % 7
        assert candidate == key or sum(a != b for a, b in zip(candidate, key)) == 1
        answers.append(answer)
    assert 0.35 < answers.count("Yes") / len(answers) < 0.65
    assert by_kind["copy_digits"] and all(int(n) % 7 for text in by_kind["copy_digits"] for n in re.findall(r"\d+", text))
    from drope_lens.toy.tokenizer import train_tokenizer

    tokenizer = train_tokenizer((d.text for d in train), tmp_path, 4096)
    retrieval = by_kind["simple_passkey"] + by_kind["ruler"] + by_kind["verify"]
    lengths = [len(ids) + 1 for ids in tokenizer(retrieval)["input_ids"]]  # BOS and EOS included
    assert max(lengths) <= config.context and min(lengths) < 0.4 * config.context and max(lengths) > 0.85 * config.context
    # needles anywhere: the simple key's share of the haystack before it spans (almost) 0..1
    depths = [t.index("passkey is") / t.index("\n\nWhat is") for t in by_kind["simple_passkey"] if "grass" in t]
    assert min(depths) < 0.1 and max(depths) > 0.9


def test_verify_multi_answers_and_haystack_masks(tmp_path):
    """Multi-question verification documents answer Yes exactly for the key; the haystack mask of
    the dilution augmentation covers filler/prose tokens only: never BOS, needle, template,
    question or answer tokens (read back from the decoded tokens)."""
    import random

    from drope_lens.measurement import passkey as pk
    from drope_lens.toy.tokenizer import train_tokenizer
    from drope_lens.toy.train import PAD, pack_masked

    config = corpus.CorpusConfig(n_train=1500, n_heldout=10, weights=dict(corpus.WEIGHTS_V2))
    train = corpus.training_documents(config)
    multi = [d.text for d in train if d.kind == "verify_multi"]
    assert len(multi) > 50
    head = pk.VERIFY_TEMPLATE.split("{context}")[0]
    answers = []
    for text in multi:
        assert text.startswith(head)
        key = re.search(r"(?:passkey is|is:) (\d+)\.", text).group(1)
        asked = re.findall(r"\n\nIs (\d+) the magic number from the text\? Answer Yes or No: (Yes|No)", text)
        assert 2 <= len(asked) <= 3 and text.endswith(asked[-1][1])
        assert all((answer == "Yes") == (candidate == key) and int(candidate) % 7 for candidate, answer in asked)
        answers += [a for _, a in asked]
    assert 0.35 < answers.count("Yes") / len(answers) < 0.65
    rng = random.Random(0)
    split = corpus.fact_split(config)
    assert corpus.haystack_spans(corpus._GENERATORS["prose"](rng, config, split, "train")) == []
    tokenizer = train_tokenizer((d.text for d in train), tmp_path, 2000)
    kinds = ("simple_passkey", "ruler", "verify", "verify_multi", "prose", "city_qa")
    texts = [d.text for d in train if d.kind in kinds][:400]
    data, mask = pack_masked(tokenizer, texts, 256)
    assert mask.shape == data.shape and not mask[data == PAD].any() and not mask[:, 0].any()
    assert 0.2 < mask.sum() / (data != PAD).sum() < 0.8
    masked = tokenizer.decode(data[mask].tolist())
    assert not re.search(r"\d|passkey|magic|Answer|Remember the|What is", masked)
    unmasked_words = set(tokenizer.decode(data[~mask & (data != PAD)].tolist()).split())
    assert {"passkey", "magic", "Yes", "No"} <= unmasked_words and "grass" in masked
