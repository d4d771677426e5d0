"""The engine's ablation-sweep mode, measured by perplexity and task accuracy: the shared body of
Exp 4/5 (:mod:`drope_lens.experiments.bos_ablation`) and Exp 6 (:mod:`drope_lens.experiments.layer1_ablation`).

For each model: the conditions are prepared on reference texts (spike layer from the BOS-norm
ratio, recorded), then (1) perplexity of every evaluation text under every condition and (2) the
tasks under every condition (:func:`.tasks.task_rows`, its generation batches shared among ranks). One DataFrame, ``measure`` =
``"perplexity"`` rows (``text``, ``nll``, ``ppl``) or ``"task"`` rows (the task columns).
Reference and evaluation texts must be disjoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Optional, Sequence

import pandas as pd

from drope_lens.measurement import analysis
from drope_lens.measurement.analysis import prepare_conditions
from drope_lens.engine.distributed import is_main
from drope_lens.hooks.conditions import check_conditions
from drope_lens.engine.results import RunStore, items_fingerprint, texts_fingerprint
from drope_lens.measurement.summaries import condition_layers, perplexity_summary, wide_table
from drope_lens.measurement.tasks import check_tasks, load_task
from drope_lens.measurement.texts import TextsLike, as_texts, require_disjoint
from drope_lens.measurement.tokens import BosPolicy, check_bos, model_variant, tokenize

from .sweep import bind_store, unit_prefix
from .tasks import condition_meta, perplexity_rows, task_rows


@dataclass(frozen=True)
class AblationConfig:
    conditions: tuple[str, ...]
    tasks: tuple[str, ...] = ("cities", "sports", "reviews", "passkey")
    n: Optional[int] = None
    seed: int = 42
    source: Literal["study", "toy"] = "study"
    max_tokens: int = 512
    new_tokens: int = 20
    batch_size: int = 16
    bos: BosPolicy = "checkpoint"
    spike_rule: str = analysis.DEFAULT_SPIKE_RULE

    def __post_init__(self) -> None:
        object.__setattr__(self, "conditions", check_conditions(tuple(self.conditions)))
        analysis.check_spike_rule(self.spike_rule)
        object.__setattr__(self, "tasks", check_tasks(tuple(self.tasks)) if self.tasks else ())
        check_bos(self.bos)
        if self.source not in ("study", "toy"):
            raise ValueError(f"source={self.source!r}: allowed values are 'study', 'toy'.")
        if self.n is not None and self.n < 1:
            raise ValueError(f"n={self.n}: need at least one prompt per task.")
        if self.max_tokens < 2 or self.new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_tokens must be >= 2, new_tokens and batch_size >= 1.")


def run_sweep(model, reference_texts: TextsLike, evaluation_texts: TextsLike, config: AblationConfig, *,
              store: Optional[RunStore] = None, show_progress: bool = True) -> pd.DataFrame:
    """Perplexity and task rows of ``model`` under ``config.conditions`` (see the module docstring)."""
    reference = as_texts(reference_texts, name_prefix="reference")
    evaluation = as_texts(evaluation_texts, name_prefix="evaluation")
    require_disjoint(evaluation, reference, "reference")
    items = {task: load_task(task, config.n, config.seed, config.source) for task in config.tasks}
    store = bind_store(store, model, "ablation_sweep", config, reference_texts=texts_fingerprint(reference),
                       evaluation_texts=texts_fingerprint(evaluation),
                       task_items={task: items_fingerprint(v) for task, v in items.items()})
    prepared = prepare_conditions(model, config.conditions, reference, max_tokens=config.max_tokens, bos=config.bos,
                                  spike_rule=config.spike_rule)
    prefix = unit_prefix(model)
    if store is not None and is_main():
        store.save_extra(f"conditions-{prefix}", pd.DataFrame([condition_meta(prepared)]).astype(str))

    unit = f"{prefix}-perplexity"  # a finished sweep is read back; otherwise its batches are shared among ranks
    if store is not None and store.has(unit):
        frames = [store.load_part(unit).assign(measure="perplexity")]
    else:
        tokens = tokenize(model, evaluation, config.max_tokens, bos=config.bos)
        frames = [perplexity_rows(model, tokens, [t.name for t in evaluation], prepared.conditions,
                                  batch_size=config.batch_size, show_progress=show_progress, store=store,
                                  unit=unit).assign(measure="perplexity")]
    for name in config.tasks:  # a finished task is read back; the others' batches are shared among ranks
        unit = f"{prefix}-task-{name}"
        frames.append((store.load_part(unit) if store is not None and store.has(unit) else task_rows(
            model, items[name], prepared.conditions, new_tokens=config.new_tokens, batch_size=config.batch_size,
            bos=config.bos, show_progress=show_progress, store=store, unit=unit)).assign(measure="task"))
    return pd.concat(frames, ignore_index=True)


def run_cli(ctx, experiment: str, title: str) -> int:
    from drope_lens.engine.results import model_identity
    from drope_lens.engine.runner import print_table
    from drope_lens.measurement.texts import split_texts

    args = ctx.args
    config = AblationConfig(tuple(s for s in args.conditions.split(",") if s),
                            tuple(s for s in args.tasks.split(",") if s), args.n, args.seed,
                            args.source or ("toy" if ctx.is_toy else "study"), args.max_tokens, 20, args.batch_size,
                            args.bos, args.spike_rule)
    reference, evaluation = split_texts(ctx.texts(), args.n_reference, args.n_evaluation, seed=0)
    store = ctx.store(experiment, config, {"reference": reference, "evaluation": evaluation,
                                           "task_items": {task: items_fingerprint(load_task(task, config.n, config.seed,
                                                                                            config.source))
                                                          for task in config.tasks}})
    frames, identities = [], []
    for model in ctx.models():
        frames.append(run_sweep(model, reference, evaluation, config, store=store))
        identities.append(model_identity(model))
    df = pd.concat(frames, ignore_index=True)
    ctx.finalize(store, frames, {"config": asdict(config), "seed": config.seed,
                                 "reference_texts": [t.name for t in reference],
                                 "evaluation_texts": [t.name for t in evaluation],
                                 "condition_layers": condition_layers(df)}, identities)
    print_table(f"{title}: perplexity over evaluation texts and task accuracy per condition:", wide_table(df))
    print_table("Perplexity ratio to baseline, 95% bootstrap CI over texts, Wilcoxon p on per-text NLL:",
                perplexity_summary(df))
    return 0
