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
    assert not {d.text for d in heldout if d.kind in ("prose", "review", "passkey")} & {d.text for d in train}


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
    config = corpus.CorpusConfig(n_train=2000, n_heldout=10)
    train, _ = corpus.build_corpus(config)
    train_keys = {d.text.rsplit(" ", 1)[-1] for d in train if d.kind == "passkey"}
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
