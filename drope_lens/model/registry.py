"""Named RoPE/DroPE pairs: the package's ``registry.json`` plus the user's own file.

A user file (``$DROPE_LENS_REGISTRY``, default ``~/.config/drope_lens/registry.json``) holds
entries of the same form, ``{"name": {"rope": SOURCE, "drope": SOURCE}}``, and may override
package entries. ``register_pair`` adds one for the running session.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

_SESSION: dict[str, "PairEntry"] = {}


@dataclass(frozen=True)
class PairEntry:
    name: str
    rope: str
    drope: str
    note: str = ""


def user_registry_path() -> Path:
    return Path(os.environ.get("DROPE_LENS_REGISTRY", "~/.config/drope_lens/registry.json")).expanduser()


def _read(text: str, origin: str) -> dict[str, PairEntry]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{origin}: not valid JSON ({exc}).") from exc
    pairs = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict) or not {"rope", "drope"} <= entry.keys():
            raise ValueError(f"{origin}: entry {name!r} needs 'rope' and 'drope' sources, got {entry!r}.")
        pairs[name] = PairEntry(name, str(entry["rope"]), str(entry["drope"]), str(entry.get("note", "")))
    return pairs


def pairs() -> dict[str, PairEntry]:
    """All known pairs: package entries, then the user file, then ``register_pair`` calls."""
    found = _read(resources.files("drope_lens").joinpath("data/registry.json").read_text(), "drope_lens/data/registry.json")
    user = user_registry_path()
    if user.is_file():
        found.update(_read(user.read_text(), str(user)))
    found.update(_SESSION)
    return found


def register_pair(name: str, rope: str, drope: str, note: str = "") -> None:
    """Make ``load_pair(name)`` return these two sources for the rest of the session."""
    _SESSION[name] = PairEntry(name, rope, drope, note)


def lookup(name: str) -> PairEntry:
    known = pairs()
    if name not in known:
        raise KeyError(
            f"unknown pair {name!r}; known pairs are {sorted(known)}. Add one with "
            f"drope_lens.register_pair(name, rope=..., drope=...) or in {user_registry_path()}."
        )
    return known[name]


def load_pair(name: str, **load_kwargs):
    """``(rope_model, drope_model)`` for a registry name; keyword arguments go to ``load_model``."""
    from .loading import load_model

    entry = lookup(name)
    return load_model(entry.rope, **load_kwargs), load_model(entry.drope, **load_kwargs)


def describe(name: Optional[str] = None) -> str:
    rows = [pairs()[name]] if name else list(pairs().values())
    return "\n".join(f"{p.name}: rope={p.rope} drope={p.drope}" for p in rows)
