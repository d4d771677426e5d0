"""The original study's published numbers and the sources they come from, as shipped.

``drope_lens/data/study_numbers.json`` holds one entry per experiment, key and variant, with its
source (a METHODS.md section or a file of the study's results) and a note where METHODS.md says
the original was flawed. The sources ship in ``drope_lens/data/study/`` (``PROVENANCE.json`` there
gives each original's name, size and SHA-256). Experiments compare against these numbers and
:mod:`drope_lens.outputs.reproduction` tabulates them next to ours.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Optional, Union

import pandas as pd

STUDY_NUMBERS = "study_numbers.json"
SCHEMA = 1
STUDY_FOLDER = "study"  # drope_lens/data/study: the cited sources, shipped


def provenance() -> dict:
    """``drope_lens/data/study/PROVENANCE.json``: per cited source, the shipped copy and its original."""
    text = resources.files("drope_lens").joinpath("data", STUDY_FOLDER, "PROVENANCE.json").read_text(encoding="utf-8")
    return json.loads(text)["files"]


def shipped_source(name: str) -> Path:
    """The shipped copy (or extract) of a cited source: ``METHODS.md`` or ``reference/seed-study/<file>``."""
    entry = provenance().get(name)
    if entry is None:
        raise KeyError(f"{name}: not a source shipped in drope_lens/data/{STUDY_FOLDER} (see its PROVENANCE.json).")
    return Path(str(resources.files("drope_lens").joinpath("data", STUDY_FOLDER, entry["shipped"])))


def study_numbers(path: Optional[Union[str, Path]] = None) -> pd.DataFrame:
    """The study's headline numbers as a DataFrame (experiment, key, variant, value, unit, source, flaw)."""
    if path is None:
        text = resources.files("drope_lens").joinpath("data", STUDY_NUMBERS).read_text(encoding="utf-8")
        where = f"drope_lens/data/{STUDY_NUMBERS}"
    else:
        text, where = Path(path).read_text(encoding="utf-8"), str(path)
    doc = json.loads(text)
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{where}: schema {doc.get('schema')!r}, this drope_lens reads schema {SCHEMA}.")
    frame = pd.DataFrame(doc["numbers"])
    for column in ("spread", "flaw"):
        if column not in frame.columns:
            frame[column] = None
    frame["source_text"] = [source_text(s) for s in frame["source"]]
    return frame


def source_text(source: dict) -> str:
    """Where a study number can be read: the shipped file (in the package) and the place in it."""
    files = provenance()
    if "file" in source:
        scale = f" x {source['scale']}" if "scale" in source else ""
        entry = files.get(source["file"], {})
        shipped = f"drope_lens/data/{STUDY_FOLDER}/{entry.get('shipped', source['file'])}"
        note = (f" (extract of the study's {Path(source['file']).name})" if entry.get("kind") == "extract"
                else f" (the study's {Path(source['file']).name})")
        return f"{shipped} : {'/'.join(map(str, source['path']))}{scale}{note}"
    document = source["document"]
    if document in files:
        document = f"drope_lens/data/{STUDY_FOLDER}/{files[document]['shipped']}"
    return f"{document}, section \"{source['section']}\""


def study_models() -> dict[str, str]:
    """The study's models, by variant (``{"rope": "meta-llama/Llama-2-7b-hf", "drope": ...}``)."""
    text = resources.files("drope_lens").joinpath("data", STUDY_NUMBERS).read_text(encoding="utf-8")
    return dict(json.loads(text)["models"])
