"""Experiment 2: disrupting massive Q/K dims, measured by perplexity.

1. Identification (:func:`drope_lens.measurement.analysis.identify_massive`): M (see :mod:`.massive_values`)
   of ``hook_q`` and ``hook_k`` averaged over the identification texts; entries above
   ``threshold`` x the layer mean are massive.
2. Conditions on the evaluation texts (disjoint from the identification texts):
   ``baseline``; ``massive``: those entries zeroed in ``hook_q`` and ``hook_k`` at every position;
   ``random`` (one per seed): the same NUMBER of entries per layer and tensor, drawn uniformly
   from the non-massive entries (``random_pool="all"`` draws from all entries).
3. Perplexity of a text = exp(mean NLL of tokens 1..T-1 given their prefix).

All conditions are batched: rows of one forward may belong to different conditions (one
``batched_zero_dims`` hook per layer and tensor), with results identical to running each
condition alone. Statistics are over evaluation texts (paired tests, bootstrap CIs), never over
repetitions of a deterministic condition.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Optional, Sequence

import numpy as np
import pandas as pd

# identification is shared with the ablation conditions of Exp 3-6 (importable here as before)
from drope_lens.measurement.analysis import (Masks, identification_frame, identify_massive, massive_mask,  # noqa: F401
                                             masks_on_devices, random_masks, sequence_norms)
# statistics over evaluation texts (importable here as before)
from drope_lens.measurement.summaries import condition_tests as statistics, increase_pct  # noqa: F401
from drope_lens.engine.distributed import is_main
from drope_lens.hooks import batched_zero_qk
from drope_lens.engine.results import RunStore, texts_fingerprint
from drope_lens.measurement.texts import Text, TextsLike, as_texts, require_disjoint

from drope_lens.engine.perplexity import balanced_batch_size, condition_perplexity  # noqa: F401
from drope_lens.engine.sweep import bind_store, unit_prefix
from drope_lens.measurement.tokens import (BosPolicy, check_bos, default_texts, model_name, model_variant, resolve_max_tokens,
                               tokenize, warn_if_out_of_distribution)

EXPERIMENT = "disruption"


@dataclass(frozen=True)
class DisruptionConfig:
    threshold: float = 5.0
    seeds: int = 10
    max_tokens: int = 512
    rotary: Literal["pre", "post"] = "pre"
    seed: int = 0
    batch_size: int = 16
    random_pool: Literal["non_massive", "all"] = "non_massive"
    bos: BosPolicy = "checkpoint"

    def __post_init__(self) -> None:
        check_bos(self.bos)
        if not self.threshold > 0:
            raise ValueError(f"threshold={self.threshold}: must be positive.")
        if self.seeds < 1:
            raise ValueError(f"seeds={self.seeds}: need at least one random-control seed.")
        if self.rotary not in ("pre", "post"):
            raise ValueError(f"rotary={self.rotary!r}: allowed values are 'pre', 'post'.")
        if self.random_pool not in ("non_massive", "all"):
            raise ValueError(f"random_pool={self.random_pool!r}: allowed values are 'non_massive', 'all'.")
        if self.max_tokens < 2 or self.batch_size < 1:
            raise ValueError("max_tokens must be >= 2 and batch_size >= 1.")

    @property
    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]


def _conditions(massive: Masks, config: DisruptionConfig) -> list[tuple[str, int, Optional[Masks]]]:
    conditions: list[tuple[str, int, Optional[Masks]]] = [("baseline", -1, None), ("massive", -1, massive)]
    conditions += [("random", s, random_masks(massive, s, config.random_pool)) for s in config.seed_list]
    return conditions


def run(
    model,
    identification_texts: Optional[TextsLike] = None,
    evaluation_texts: Optional[TextsLike] = None,
    *,
    threshold: float = 5.0,
    seeds: int = 10,
    max_tokens: Optional[int] = None,
    rotary: Literal["pre", "post"] = "pre",
    seed: int = 0,
    batch_size: int = 16,
    random_pool: Literal["non_massive", "all"] = "non_massive",
    bos: BosPolicy = "checkpoint",
    batched: bool = True,
    store: Optional[RunStore] = None,
    show_progress: bool = True,
) -> pd.DataFrame:
    """Perplexity of every evaluation text under baseline, massive and random conditions.

    Columns: ``model``, ``variant``, ``condition``, ``seed`` (-1 unless random), ``sample``
    (index into ``evaluation_texts``), ``text``, ``n_tokens``, ``nll`` (nats/token), ``ppl``,
    ``n_zeroed_q``, ``n_zeroed_k`` (entries zeroed over all layers). ``batched=False`` runs each
    condition alone (one forward per condition and batch of texts), the reference loop.

    Without texts, 3 identification and 9 evaluation texts are drawn (:func:`split_texts`, seed 0)
    from :func:`~drope_lens.measurement.tokens.default_texts` (the toy corpus's held-out text for
    the toy pair, the built-in English texts otherwise). ``max_tokens``: default the study's 512
    capped at the model's trained context (a larger value warns, naming the cap). When the median
    baseline perplexity is above the vocabulary size (worse than a uniform guess) an
    :class:`~drope_lens.measurement.tokens.OutOfDistributionWarning` says the texts are not the
    model's kind of text.

    Under ``torchrun`` each rank runs whole planned batches (see :mod:`drope_lens.engine.sweep`; identification
    runs on every rank) and every rank returns the whole DataFrame, equal to a single-process
    run's; with ``store``, rank 0 writes the condition parts.
    """
    if (identification_texts is None) != (evaluation_texts is None):
        raise ValueError("give both identification_texts and evaluation_texts, or neither (then 3 + 9 of "
                         "default_texts(model) are used).")
    if identification_texts is None:
        from drope_lens.measurement.texts import split_texts

        identification_texts, evaluation_texts = split_texts(default_texts(model), 3, 9)
    max_tokens = resolve_max_tokens(model, max_tokens)
    config = DisruptionConfig(threshold, seeds, max_tokens, rotary, seed, batch_size, random_pool, bos)
    identification_texts = as_texts(identification_texts, name_prefix="identification")
    evaluation_texts = as_texts(evaluation_texts, name_prefix="evaluation")
    require_disjoint(evaluation_texts, identification_texts, "identification")
    store = bind_store(store, model, EXPERIMENT, config, identification_texts=texts_fingerprint(identification_texts),
                       evaluation_texts=texts_fingerprint(evaluation_texts), batched=bool(batched))
    massive = identify_massive(model, identification_texts, threshold=config.threshold, max_tokens=config.max_tokens,
                               rotary=config.rotary, batch_size=config.batch_size, bos=config.bos)
    if store is not None and is_main():
        store.save_extra(f"identification-{unit_prefix(model)}", identification_frame(model, massive))
    conditions = _conditions(massive, config)
    device_masks = [masks_on_devices(model, c[2]) for c in conditions]  # no host->device copy inside hooks
    tokens = tokenize(model, evaluation_texts, config.max_tokens, bos=config.bos)
    prefix = unit_prefix(model)
    unit_of = lambda ci: f"{prefix}-{conditions[ci][0]}-{conditions[ci][1]}"  # noqa: E731

    hooks_for = lambda rows: batched_zero_qk([device_masks[ci] for ci in rows], config.rotary)  # noqa: E731
    rows_of = lambda ci, nlls: _frame(model, conditions[ci], nlls, evaluation_texts, tokens)  # noqa: E731
    frames = condition_perplexity(model, tokens, [unit_of(ci) for ci in range(len(conditions))], hooks_for, rows_of,
                                  store=store, batch_size=config.batch_size, batched=batched,
                                  label=f"disruption {model_variant(model)}", show_progress=show_progress)
    warn_if_out_of_distribution(model, frames[0]["nll"].tolist())  # conditions[0] is the baseline
    return pd.concat(frames, ignore_index=True)


def _frame(model, condition, nlls: dict[int, float], texts: Sequence[Text], tokens) -> pd.DataFrame:
    name, seed, masks = condition
    zeroed = {t: (sum(int(m.sum()) for m in masks[t].values()) if masks is not None else 0) for t in ("q", "k")}
    return pd.DataFrame([{
        "model": model_name(model), "variant": model_variant(model), "condition": name, "seed": seed,
        "sample": sample, "text": texts[sample].name, "n_tokens": int(len(tokens[sample])),
        "nll": nll, "ppl": float(np.exp(nll)), "n_zeroed_q": zeroed["q"], "n_zeroed_k": zeroed["k"],
    } for sample, nll in sorted(nlls.items())])


# ------------------------------------------------------------------------------------------
# Summaries and statistics: DataFrame in, DataFrame out.
# ------------------------------------------------------------------------------------------
def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per model: mean PPL over texts per condition, % increases and the M-R difference.

    ``random_ppl`` is the mean over seeds of the mean-over-texts PPL (``random_ppl_std`` its
    spread over seeds); ``massive_pct`` / ``random_pct`` are % increases of the mean PPL over
    baseline; ``m_minus_r`` = massive_pct - random_pct.
    """
    rows = []
    for (model, variant), group in df.groupby(["model", "variant"]):
        base = group[group.condition == "baseline"]["ppl"].to_numpy()
        mass = group[group.condition == "massive"]["ppl"].to_numpy()
        per_seed = group[group.condition == "random"].groupby("seed")["ppl"].mean().to_numpy()
        massive_pct = increase_pct(mass, base)
        random_pct = 100.0 * (per_seed.mean() / base.mean() - 1.0)
        rows.append({
            "model": model, "variant": variant, "n_texts": len(base), "n_seeds": len(per_seed),
            "baseline_ppl": base.mean(), "massive_ppl": mass.mean(),
            "random_ppl": per_seed.mean(), "random_ppl_std": per_seed.std(ddof=1) if len(per_seed) > 1 else 0.0,
            "massive_pct": massive_pct, "random_pct": random_pct, "m_minus_r": massive_pct - random_pct,
            "n_zeroed_q": int(group[group.condition == "massive"]["n_zeroed_q"].iloc[0]),
            "n_zeroed_k": int(group[group.condition == "massive"]["n_zeroed_k"].iloc[0]),
        })
    return pd.DataFrame(rows)


def reliance_ratio(summary_frame: pd.DataFrame) -> float:
    """RoPE's M-R difference over DroPE's (how much more RoPE relies on its massive dims).

    NaN when DroPE's difference is zero to within 1e-6 percentage points (for instance when no
    DroPE dim passed the threshold, so both conditions equal the baseline): the ratio is then
    undefined, not large.
    """
    by_variant = summary_frame.set_index("variant")["m_minus_r"]
    if not {"rope", "drope"} <= set(by_variant.index):
        raise ValueError("reliance_ratio needs one RoPE and one DroPE model in the summary.")
    denominator = float(by_variant["drope"])
    return float(by_variant["rope"]) / denominator if abs(denominator) > 1e-6 else float("nan")


def meta_for(config: DisruptionConfig, identification: Sequence[Text], evaluation: Sequence[Text]) -> dict:
    """meta.json content of a run (the caller adds the models' identities)."""
    return {"config": asdict(config), "seed": config.seed, "seeds": config.seed_list,
            "identification_texts": [t.name for t in identification],
            "evaluation_texts": [t.name for t in evaluation]}


# ------------------------------------------------------------------------------------------
# Command line: ``drope-lens run disruption`` (see drope_lens.engine.runner).
# ------------------------------------------------------------------------------------------
from drope_lens.engine.options import disruption as add_cli_arguments  # noqa: E402  (options importable without torch)


def run_cli(ctx) -> int:
    from drope_lens.engine.results import model_identity
    from drope_lens.engine.runner import print_table
    from drope_lens.measurement.texts import split_texts

    args = ctx.args
    config = DisruptionConfig(args.threshold, args.seeds, args.max_tokens, args.rotary, args.seed, args.batch_size,
                              bos=args.bos)
    ident, evaluation = split_texts(ctx.texts(), args.n_identification, args.n_evaluation, seed=args.seed)
    store = ctx.store(EXPERIMENT, config, {"identification": ident, "evaluation": evaluation})
    frames, identities = [], []
    for model in ctx.models():
        frames.append(run(model, ident, evaluation, threshold=config.threshold, seeds=config.seeds,
                          max_tokens=config.max_tokens, rotary=config.rotary, seed=config.seed,
                          batch_size=config.batch_size, bos=config.bos, store=store))
        identities.append(model_identity(model))
    ctx.finalize(store, frames, meta_for(config, ident, evaluation), identities)
    if not is_main():  # under torchrun, rank 0 prints the summaries
        return 0
    df = pd.concat(frames, ignore_index=True)
    table = summary(df)
    print_table("Perplexity over evaluation texts (mean over texts; random: mean +- std over seeds):", table)
    if set(table.variant) >= {"rope", "drope"}:
        ratio = reliance_ratio(table)
        shown = f"{ratio:.2f}" if ratio == ratio else "undefined (DroPE's M-R difference is zero)"
        print(f"RoPE/DroPE reliance ratio (M-R difference): {shown}\n")
    print("Paired tests and 95% bootstrap CIs over evaluation texts:")
    print(statistics(df).T.to_string(header=False))
    return 0
