"""Recalibration recipes of the toy pair and the arguments of ``drope-lens train-toy`` (no torch import:
the CLI parser is built without heavy modules)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

ATTENTION_TYPES = ("nope", "qk_norm_nope")


@dataclass(frozen=True)
class Recipe:
    """One DroPE recalibration from the pretrained RoPE model (continued pretraining without rotary).

    ``fraction``: recalibration steps as a share of pretraining steps (the DroPE paper: 10-20%;
    longer is one of issue 20's levers). ``rows``: tokens per training row; the trained context
    unless a recipe recalibrates on longer rows (batch shrinks so that tokens per step stay the
    same). ``documents``: the longest document (corpus ``context``); above the trained context only
    for recipes that train retrieval over longer spans, which then is DroPE's trained length.
    ``attention_type``: ``nope`` (plain DroPE) or ``qk_norm_nope`` (full-width q/k RMSNorms, unit
    weights at the start, trained). ``dilution``: the largest ``ln m`` of the dilution augmentation
    (:func:`drope_lens.toy.train.train`; 0: none): haystack keys' attention scores get ``+ ln m``,
    as if every haystack token were repeated ``m`` times; rows from a fresh document stream
    (``recal``, half the pretraining corpus' size) with their haystack masks.
    """

    name: str = "base"
    fraction: float = 0.4
    lr: float = 3e-3
    rows: Optional[int] = None  # None: the trained context
    documents: Optional[int] = None  # None: the trained context
    attention_type: str = "nope"
    dilution: float = 0.0

    def __post_init__(self) -> None:
        if self.dilution < 0 or (self.dilution and (self.rows or self.documents)):
            raise ValueError(f"recipe {self.name}: dilution={self.dilution} must be >= 0, and is only for rows and "
                             "documents of the trained context (rows=None, documents=None).")
        if not 0 < self.fraction <= 2:
            raise ValueError(f"recipe {self.name}: fraction={self.fraction} must be in (0, 2].")
        if self.attention_type not in ATTENTION_TYPES:
            raise ValueError(f"recipe {self.name}: attention_type={self.attention_type!r}; allowed: {list(ATTENTION_TYPES)}.")


#: Recipes ``drope-lens train-toy --recipe NAME`` knows.
RECIPES: dict[str, Recipe] = {
    "base": Recipe("base"),
    "qknorm": Recipe("qknorm", attention_type="qk_norm_nope"),
    "rows512": Recipe("rows512", rows=512),
    "long512": Recipe("long512", rows=512, documents=512),
    # issue 20, third run: the dilution augmentation (ln 8: up to 8 times the haystack)
    "dilute": Recipe("dilute", dilution=2.08),
    "dilute_qk": Recipe("dilute_qk", attention_type="qk_norm_nope", dilution=2.08),
    "dilute_long": Recipe("dilute_long", fraction=0.6, dilution=2.77),
}


def add_arguments(parser, device: bool = True) -> None:
    """The arguments of ``drope-lens train-toy`` (``device=False``: the caller adds ``--device``)."""
    parser.add_argument("--steps", type=int, default=None, help="pretraining steps (default 2500)")
    parser.add_argument("--documents", type=int, default=1_000_000,
                        help="training documents to generate (default 1,000,000)")
    parser.add_argument("--layers", type=int, default=None, help="layers (default 6)")
    parser.add_argument("--mix", choices=("v1", "v2"), default="v2",
                        help="corpus mix: v2 (default) adds multi-question verification documents")
    parser.add_argument("--recipe", action="append", choices=sorted(RECIPES), default=None,
                        help="recalibration recipe(s), the first is the default choice (default: base)")
    parser.add_argument("--recalibrate-fraction", type=float, default=None,
                        help="recalibration steps as a share of pretraining steps, for every recipe")
    parser.add_argument("--recalibrate-lr", type=float, default=None, help="recalibration learning rate, every recipe")
    parser.add_argument("--evaluate", action="store_true", help="then measure the bars and choose (evaluation.json)")
    parser.add_argument("--trials", type=int, default=50, help="keys per Exp 10 cell in the evaluation (default 50)")
    parser.add_argument("--scalings", type=float, nargs="*", default=[0.1, 0.2, 0.4],
                        help="log-length scaling values c measured beside c = 0")
    parser.add_argument("--workers", type=int, default=None, help="processes for the corpus (default: CPU count)")
    if device:
        parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--tiny", action="store_true", help="a CPU-sized run of every stage (minutes), not a useful model")
