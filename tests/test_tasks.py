"""Task data files, sampling, and scoring rules."""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import types
from importlib import resources

import pandas as pd
import pytest

from drope_lens.measurement import scoring, tasks


def test_task_files_match_their_recorded_hashes():
    recorded = tasks.recorded_hashes()
    assert set(recorded) == set(tasks.FILES)
    for name in tasks.FILES:
        raw = resources.files("drope_lens").joinpath(f"data/tasks/{name}").read_bytes()
        assert hashlib.sha256(raw).hexdigest() == recorded[name]
    assert len(tasks.parse_cities(tasks.read_task_file("cities.csv"))) == 1496
    assert len(tasks.parse_sports(tasks.read_task_file("sports_qa.json"))) == 200
    reviews = tasks.parse_reviews(tasks.read_task_file("sentiment_reviews.jsonl"))
    assert len(reviews) >= 100 and len({r["text"] for r in reviews}) == len(reviews)
    assert sum(r["label"] == "Positive" for r in reviews) * 2 == len(reviews)


def test_a_changed_file_is_refused(monkeypatch):
    monkeypatch.setattr(tasks, "recorded_hashes", lambda: {"cities.csv": "0" * 64})
    with pytest.raises(tasks.TaskDataError, match="'cities.csv' does not match its SHA-256"):
        tasks.load_task("cities")


def test_sampling_as_the_study():
    cities = tasks.load_task("cities")
    assert len(cities) == 200 and sum(i.label == "Yes" for i in cities) == 100
    assert cities[0].prompt.startswith("Answer with only 'Yes' or 'No'.\n\nQuestion: Is the city of ")
    assert cities[0].prompt.endswith("?\nAnswer:")
    assert [i.prompt for i in tasks.load_task("cities")] == [i.prompt for i in cities]  # seeded
    assert [i.prompt for i in tasks.load_task("cities", seed=1)] != [i.prompt for i in cities]
    sports = tasks.load_task("sports")
    assert len(sports) == 100 and len({i.prompt for i in sports}) == 100
    reviews = tasks.load_task("reviews")
    assert len(reviews) == 100 and sum(i.label == "Positive" for i in reviews) == 50
    assert reviews[0].prompt.endswith("\n\nSentiment (Positive/Negative):") and reviews[0].kind == "contextual"
    assert {i.task for i in reviews} == {"reviews"}  # never labelled imdb
    passkey = tasks.load_task("passkey")
    assert len(passkey) == 20 and all(re.fullmatch(r"\d{5}", i.label) for i in passkey)
    prompt = passkey[0].prompt
    assert prompt.count(tasks.FILLER.strip()) == 30
    assert f" The secret passkey is {passkey[0].label}. Remember this number. " in prompt
    before = prompt.split("The secret passkey")[0]
    assert before.count("The grass is green.") == 15
    assert prompt.endswith("\n\nWhat is the secret passkey mentioned above? Answer with just the number:")


def test_imdb_from_rows_and_without_a_cache(monkeypatch):
    rows = [{"text": "great " * 400, "label": 1}] * 60 + [{"text": "bad " * 10, "label": 0}] * 60
    items = tasks.imdb_items(100, rows=rows)
    assert sum(i.label == "Positive" for i in items) == 50
    review = items[0].prompt.split("Review: ")[1].split("\n\nSentiment")[0]
    assert len(review) <= tasks.IMDB_CHARS
    fake = types.SimpleNamespace(load_dataset=lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError("not cached")))
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(tasks.TaskDataError, match="task 'imdb' needs the IMDB test split"):
        tasks.load_task("imdb")


def test_imdb_from_a_users_file(tmp_path):
    """--imdb-file / imdb_file=: jsonl, csv and parquet give the same items; bad files are named."""
    rows = [{"text": f"review {i} " * 5, "label": i % 2} for i in range(20)]
    jsonl = tmp_path / "imdb.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    csv_file = tmp_path / "imdb.csv"
    pd.DataFrame([{"text": r["text"], "label": "Positive" if r["label"] else "Negative"} for r in rows]).to_csv(
        csv_file, index=False)
    parquet = tmp_path / "imdb.parquet"
    pd.DataFrame(rows).to_parquet(parquet)
    want = tasks.imdb_items(10, rows=rows)
    for path in (jsonl, csv_file, parquet):
        got = tasks.load_task("imdb", n=10, imdb_file=str(path))
        assert got == want and {i.task for i in got} == {"imdb"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "x", "label": "maybe"}) + "\n")
    with pytest.raises(tasks.TaskDataError, match=r"bad.jsonl' row 1: needs 'text' and 'label'"):
        tasks.load_task("imdb", n=2, imdb_file=str(bad))
    with pytest.raises(tasks.TaskDataError, match=r"suffix '.txt'; allowed: .jsonl, .csv, .parquet"):
        (tmp_path / "imdb.txt").write_text("x")
        tasks.load_task("imdb", n=2, imdb_file=str(tmp_path / "imdb.txt"))
    with pytest.raises(ValueError, match="task 'sentiment' is now called 'reviews'"):
        tasks.load_task("sentiment")


def test_bad_task_inputs_name_the_value():
    with pytest.raises(ValueError, match="task 'weather' is unknown"):
        tasks.load_task("weather")
    with pytest.raises(ValueError, match="source='web'"):
        tasks.load_task("cities", source="web")
    with pytest.raises(ValueError, match="n=0"):
        tasks.load_task("cities", n=0)
    with pytest.raises(tasks.TaskDataError, match="cities.csv: no rows"):
        tasks.city_items(text="statement,label,city,country\n")
    with pytest.raises(tasks.TaskDataError, match="sentiment_reviews.jsonl: no reviews"):
        tasks.review_items(text="")
    with pytest.raises(tasks.TaskDataError, match="line 1: not valid JSON"):
        tasks.review_items(text="{oops\n")
    with pytest.raises(tasks.TaskDataError, match="sports_qa.json: no questions"):
        tasks.sports_items(text='{"data": []}')
    with pytest.raises(ValueError, match="cities: n=2000"):
        tasks.load_task("cities", n=2000)


def test_toy_versions_of_the_tasks():
    for name in ("cities", "sports", "reviews", "passkey"):
        items = tasks.load_task(name, n=6, source="toy")
        assert len(items) == 6 and all(i.task == name for i in items)
    with pytest.raises(ValueError, match="'imdb' has no toy version"):
        tasks.load_task("imdb", source="toy")


# ------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------
class _Tokenizer:
    """Minimal tokenizer: ``merge=True`` gives " Yes" one token with the space (GPT-2 style);
    ``merge=False`` emits the space as its own token, then "Yes" (as some SentencePiece setups do)."""

    def __init__(self, merge: bool):
        self.merge = merge
        self.vocab = {" ": 0, "Yes": 1, "No": 2, " Yes": 3, " No": 4, "Positive": 5, "Negative": 6}
        self.inverse = {v: k for k, v in self.vocab.items()}

    def __call__(self, text, add_special_tokens=False):
        word = text.strip()
        ids = [self.vocab[" " + word]] if self.merge else [self.vocab[" "], self.vocab[word]]
        return {"input_ids": ids}

    def decode(self, ids):
        return "".join(self.inverse[i] for i in ids)


def test_answer_tokens_with_and_without_a_merged_space():
    assert scoring.answer_token_ids(_Tokenizer(merge=True), ["Yes", "No"]) == [3, 4]
    assert scoring.answer_token_ids(_Tokenizer(merge=False), ["Yes", "No"]) == [1, 2]
    clash = _Tokenizer(merge=False)
    clash.vocab["No"] = 1
    with pytest.raises(ValueError, match="share their first token"):
        scoring.answer_token_ids(clash, ["Yes", "No"])


def test_logit_and_generation_scores():
    import torch

    score = scoring.logit_score(torch.tensor([1.5, 3.0]), ("Yes", "No"), "Yes")
    assert score.answer == "No" and not score.correct and score.margin == -1.5
    assert scoring.generation_score(" Yes, it is.", "Yes", ("Yes", "No")) == scoring.GenerationScore("Yes", True, False)
    assert scoring.generation_score(" I think no", "No", ("Yes", "No")).answer == "No"  # substring rule
    assert scoring.generation_score(" maybe yes or no", "No", ("Yes", "No")).unparseable  # both: unparseable
    assert scoring.generation_score(" The grass", "Yes", ("Yes", "No")).unparseable
    assert scoring.generation_score(" Negative.", "Negative", ("Positive", "Negative")).correct
    assert scoring.generation_score(" 48213. Done", "48213", None) == scoring.GenerationScore("48213", True, False)
    assert scoring.generation_score(" 1234", "48213", None) == scoring.GenerationScore("1234", False, False)
    assert scoring.generation_score(" the sky", "48213", None).unparseable


def test_unparseable_answers_stay_in_the_denominator():
    from drope_lens.measurement.summaries import accuracy_table

    df = pd.DataFrame({
        "variant": "rope", "task": "sports", "condition": "baseline", "sample": range(4),
        "correct": [1.0, 0.0, 0.0, 1.0], "correct_logit": [1.0, 0.0, 0.0, 1.0],
        "correct_generation": [1.0, 0.0, 0.0, 0.0], "unparseable": [False, True, True, False],
    })
    row = accuracy_table(df).iloc[0]
    assert row["n"] == 4 and row["unparseable"] == 2
    assert row["generation_accuracy"] == 0.25 and row["accuracy"] == 0.5
    assert math.isclose(scoring.accuracy([1.0, 0.0, 0.0, 0.0]), 0.25)
