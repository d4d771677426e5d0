"""Texts as users pass them, the BOS policy, and bad text input (issue: the first-contact API)."""

from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest

import drope_lens as dl
from drope_lens.experiments import disruption, massive_values
from drope_lens.measurement.tokens import tokenize
from drope_lens.measurement.texts import Text, TextInputError, as_texts, load_texts

SENTENCES = [
    "the city of paris is in france",
    "the secret passkey is remember this number",
    "the grass is green the sky is blue",
    "rome is in italy the city of rome",
]


def test_as_texts_accepts_what_users_pass():
    one = as_texts("the city of paris")
    assert [t.name for t in one] == ["text_000"] and one[0].text == "the city of paris"
    listed = as_texts(SENTENCES)
    assert [t.name for t in listed] == ["text_000", "text_001", "text_002", "text_003"]
    assert [t.text for t in listed] == SENTENCES
    mixed = as_texts([Text("mine", "notes", "a b c"), "plain string"])
    assert [t.name for t in mixed] == ["mine", "text_001"] and mixed[0].register == "notes"
    assert as_texts(Text("x", "y", "z"))[0].name == "x"
    assert [t.text for t in as_texts(s for s in SENTENCES)] == SENTENCES  # any iterable of strings
    series = pd.Series(SENTENCES[:2], index=["first", "second"])
    assert [(t.name, t.text) for t in as_texts(series)] == [("first", SENTENCES[0]), ("second", SENTENCES[1])]
    assert [t.name for t in as_texts(pd.Series(SENTENCES[:2]))] == ["text_000", "text_001"]  # default index
    frame = pd.DataFrame({"name": ["a", "b"], "text": SENTENCES[:2]})
    assert [t.name for t in as_texts(frame)] == ["a", "b"]


def test_as_texts_accepts_a_datasets_column_and_dataset():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": SENTENCES[:3], "label": [0, 1, 0]})
    assert [t.text for t in as_texts(ds["text"])] == SENTENCES[:3]
    assert [t.text for t in as_texts(ds)] == SENTENCES[:3]


@pytest.mark.parametrize(
    "bad,match",
    [
        (["fine", 3], r"texts\[1\] is a int"),
        (["fine", None], r"texts\[1\] is a NoneType"),
        ([], "no texts given"),
        (["fine", "   "], r"texts\[1\] .* is empty"),
        ([Text("a", "r", "x"), Text("a", "r", "y")], "both named 'a'"),
        (b"bytes", "texts is a bytes"),
        (42, "texts is a int"),
    ],
)
def test_as_texts_names_the_offending_item(bad, match):
    with pytest.raises(TextInputError, match=match):
        as_texts(bad)


def test_text_files_with_bad_content_name_file_and_line(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(TextInputError, match=r"empty.txt: the file is empty"):
        load_texts(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n\nnot json\n')
    with pytest.raises(TextInputError, match=r"bad.jsonl:3: not a JSON object"):
        load_texts(bad)
    no_text = tmp_path / "no_text.jsonl"
    no_text.write_text('{"body": "x"}\n')
    with pytest.raises(TextInputError, match=r"no_text.jsonl:1: .*'text' field"):
        load_texts(no_text)
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    with pytest.raises(TextInputError, match=r"blank.jsonl: no texts"):
        load_texts(blank)


@pytest.fixture(scope="module")
def models(checkpoint_factory):
    """A tiny RoPE model whose tokenizer prepends BOS and one whose tokenizer does not (SmolLM2/Qwen-like)."""
    with_bos = dl.load_model(checkpoint_factory()[0])
    without_bos = dl.load_model(checkpoint_factory(prepend_bos=False, attention_type="nope")[0])
    return with_bos, without_bos


def test_experiments_take_plain_strings(models):
    for model in models:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            df = massive_values.run(model, SENTENCES[:2], max_tokens=16, show_progress=False)
            assert sorted(df["text"].unique()) == ["text_000", "text_001"]
            one = massive_values.run(model, "the city of paris is in france", max_tokens=16, show_progress=False)
            assert set(one["sample"]) == {0}
            ppl = disruption.run(model, SENTENCES[:2], pd.Series(SENTENCES[2:]), seeds=1, max_tokens=16,
                                 show_progress=False)
            assert set(ppl["text"]) == {"evaluation_000", "evaluation_001"}


def test_bos_policy(models):
    with_bos, without_bos = models
    bos_id = without_bos.tokenizer.bos_token_id
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checkpoint prepends BOS: no warning
        (ids,) = tokenize(with_bos, ["the city of paris"], 16)
    assert int(ids[0]) == with_bos.tokenizer.bos_token_id
    with pytest.warns(UserWarning, match="position 0 is not a special token"):
        (plain,) = tokenize(without_bos, ["the city of paris"], 16, bos="checkpoint")
    assert int(plain[0]) != bos_id and len(plain) == 4  # the text's own first token
    (always,) = tokenize(without_bos, ["the city of paris"], 16, bos="always")
    assert int(always[0]) == bos_id and always[1:].tolist() == plain.tolist()
    (same,) = tokenize(with_bos, ["the city of paris"], 16, bos="always")
    assert same.tolist() == ids.tolist()  # never a second BOS
    with pytest.raises(ValueError, match=r"bos='sometimes'.*'checkpoint', 'always'"):
        tokenize(with_bos, ["x"], 16, bos="sometimes")
    with pytest.raises(ValueError, match="bos='sometimes'"):
        massive_values.MassiveValuesConfig(bos="sometimes")


def test_texts_too_short_are_refused_by_name(models):
    with_bos, without_bos = models
    with pytest.raises(TextInputError, match=r"text 'text_001' has 1 token"):
        tokenize(without_bos, ["the city", "paris"], 16)
    with pytest.raises(TextInputError, match=r"'tiny' has 2 token.*at least 3"):
        tokenize(with_bos, [Text("tiny", "r", "paris")], 16, min_tokens=3)


class _Result:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _cli(*args):
    """``drope-lens ARGS`` in this process (as the console script calls it): exit code and output."""
    import contextlib
    import io

    from drope_lens.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse errors
            code = exc.code
    return _Result(code, out.getvalue(), err.getvalue())


def test_cli_bad_text_input_writes_nothing(checkpoint_factory, tmp_path):
    rope = str(checkpoint_factory(prepend_bos=False)[0])  # "paris" is then one token
    out = tmp_path / "results"
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "the city of paris"}\n{oops\n')
    short = tmp_path / "short.txt"
    short.write_text("paris")
    common = ["--rope", rope, "--out", str(out), "--device", "cpu"]
    for path, message in ((empty, "empty.txt: the file is empty"), (bad, "bad.jsonl:2: not a JSON object"),
                          (short, "text 'short' has")):
        result = _cli("run", "massive-values", *common, "--texts", str(path), "--bos", "checkpoint")
        assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not out.exists() or not any(out.rglob("*.parquet"))
    zero = _cli("run", "massive-values", *common, "--texts", str(bad), "--max-tokens", "0")
    assert zero.returncode == 2 and "--max-tokens 0" in zero.stderr
    dtype = _cli("run", "massive-values", *common, "--dtype", "int3")
    assert dtype.returncode == 2 and "dtype='int3'" in dtype.stderr
    unknown = _cli("run", "no-such-experiment")
    assert unknown.returncode == 2 and "invalid choice: 'no-such-experiment'" in unknown.stderr
    assert not out.exists() or not any(out.rglob("*.parquet"))


def test_cli_records_the_bos_policy(checkpoint_factory, tmp_path):
    rope = str(checkpoint_factory()[0])
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"name": f"s{i}", "text": s}) + "\n" for i, s in enumerate(SENTENCES)))
    result = _cli("run", "massive-values", "--rope", rope, "--out", str(tmp_path / "r"), "--device", "cpu",
                  "--texts", str(texts), "--max-tokens", "16", "--bos", "always")
    assert result.returncode == 0, result.stderr
    (meta_path,) = (tmp_path / "r" / "massive_values").glob("*/meta.json")
    meta = json.loads(meta_path.read_text())
    assert meta["bos"] == "always" and meta["config"]["bos"] == "always"
    assert meta["texts"] == ["s0", "s1", "s2", "s3"]
