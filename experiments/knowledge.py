"""Experiment 3: parametric vs contextual knowledge under disruption of the top Q/K dims.

Tasks (:mod:`drope_lens.measurement.tasks`): cities and sports (parametric: facts in the weights), IMDB
(the study's; from a local ``datasets`` cache or ``imdb_file``) or the package's own written
``reviews`` (not IMDB, reported under their own name), and passkey (contextual: read from the
prompt). Conditions
(:mod:`drope_lens.hooks.conditions`): by default ``baseline`` and ``topk_mean_q_k`` (per layer
and head, the top-1 dim of Q and K replaced by its mean over the prompt, pre-rotary as in the
study; ``rotary="post"`` for Jin et al.'s variant); any other condition name may be added.

Scoring (:mod:`drope_lens.measurement.scoring`): logit comparison of the answers' first tokens (primary for
two-choice tasks), greedy 20-token generation (primary for passkey; unparseable answers counted
and kept in the denominator). Degradation = (baseline - disrupted) / baseline of the primary
accuracy, with bootstrap CIs over prompts and an exact McNemar test per task; the study's headline
is per category (:func:`categories`): contextual vs parametric degradation (its RoPE: 94.3% vs
24.5%, 3.8x), with bootstrap CIs over items.

The conditions are prepared (spike layer, massive dims) on the first ``reference_tokens`` (512,
as Exp 4-6 measure; capped at the model's trained context) tokens of reference texts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Optional, Sequence

import pandas as pd

from drope_lens.measurement import analysis
from drope_lens.measurement.analysis import prepare_conditions
from drope_lens.engine.options import KNOWLEDGE_CONDITIONS, KNOWLEDGE_TASKS
from drope_lens.engine.distributed import is_main
from drope_lens.engine.sweep import bind_store, unit_prefix
from drope_lens.engine.tasks import condition_meta, reference_texts_for, task_rows
from drope_lens.hooks.conditions import check_conditions
from drope_lens.engine.results import RunStore, items_fingerprint, texts_fingerprint
from drope_lens.measurement.summaries import accuracy_table, category_degradation, condition_layers, degradation
from drope_lens.measurement.tasks import check_tasks, load_task
from drope_lens.measurement.texts import as_texts
from drope_lens.measurement.tokens import BosPolicy, check_bos

EXPERIMENT = "knowledge"
DEFAULT_TASKS = KNOWLEDGE_TASKS
REFERENCE_TOKENS = 512
DEFAULT_CONDITIONS = KNOWLEDGE_CONDITIONS


@dataclass(frozen=True)
class KnowledgeConfig:
    tasks: tuple[str, ...] = DEFAULT_TASKS
    conditions: tuple[str, ...] = DEFAULT_CONDITIONS
    n: Optional[int] = None
    seed: int = 42
    source: Literal["study", "toy"] = "study"
    rotary: Literal["pre", "post"] = "pre"
    new_tokens: int = 20
    batch_size: int = 16
    max_tokens: int = 2048
    bos: BosPolicy = "checkpoint"
    spike_rule: str = analysis.DEFAULT_SPIKE_RULE
    reference_tokens: int = REFERENCE_TOKENS
    imdb_file: Optional[str] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", check_tasks(tuple(self.tasks)))
        analysis.check_spike_rule(self.spike_rule)
        if self.reference_tokens < 2:
            raise ValueError(f"reference_tokens={self.reference_tokens}: need at least 2 tokens per reference text.")
        object.__setattr__(self, "conditions", check_conditions(tuple(self.conditions)))
        check_bos(self.bos)
        if self.source not in ("study", "toy"):
            raise ValueError(f"source={self.source!r}: allowed values are 'study', 'toy'.")
        if self.rotary not in ("pre", "post"):
            raise ValueError(f"rotary={self.rotary!r}: allowed values are 'pre', 'post'.")
        if self.n is not None and self.n < 1:
            raise ValueError(f"n={self.n}: need at least one prompt per task.")
        if self.new_tokens < 1 or self.batch_size < 1 or self.max_tokens < 2:
            raise ValueError("new_tokens and batch_size must be >= 1, max_tokens >= 2.")


def run(
    model,
    tasks: Sequence[str] = DEFAULT_TASKS,
    conditions: Sequence[str] = DEFAULT_CONDITIONS,
    n: Optional[int] = None,
    seed: int = 42,
    *,
    source: Literal["study", "toy"] = "study",
    rotary: Literal["pre", "post"] = "pre",
    new_tokens: int = 20,
    batch_size: int = 16,
    max_tokens: int = 2048,
    bos: BosPolicy = "checkpoint",
    spike_rule: str = analysis.DEFAULT_SPIKE_RULE,
    reference_tokens: int = REFERENCE_TOKENS,
    imdb_file: Optional[str] = None,
    reference_texts=None,
    store: Optional[RunStore] = None,
    show_progress: bool = True,
) -> pd.DataFrame:
    """Every prompt of every task under every condition (columns: ``task_eval.TASK_COLUMNS``).

    ``n``: prompts per task (default: the study's, see ``drope_lens.measurement.tasks.DEFAULT_N``).
    ``reference_texts``: texts the spike layer / massive dims are computed on, when a condition
    needs them (default: builtin texts; the toy corpus for the toy pair), on their first
    ``reference_tokens`` tokens (capped at the model's context ``n_ctx``). ``spike_rule``: how
    ``bos_mlp`` / ``bos_v_spike`` choose their layer (:data:`drope_lens.measurement.analysis.SPIKE_RULES`).
    ``imdb_file``: IMDB rows for task ``imdb`` (default: the local ``datasets`` cache).
    Resumable per generation batch; under ``torchrun`` the batches are shared among ranks.
    """
    config = KnowledgeConfig(tuple(tasks), tuple(conditions), n, seed, source, rotary, new_tokens, batch_size,
                             max_tokens, bos, spike_rule, reference_tokens, imdb_file)
    reference = reference_texts if reference_texts is not None else reference_texts_for(model)
    items = {task: load_task(task, config.n, config.seed, config.source, imdb_file=config.imdb_file)
             for task in config.tasks}
    store = bind_store(store, model, EXPERIMENT, config, reference_texts=texts_fingerprint(as_texts(reference)),
                       task_items={task: items_fingerprint(v) for task, v in items.items()})
    prepared = prepare_conditions(model, config.conditions, reference, rotary=config.rotary, bos=config.bos,
                                  spike_rule=config.spike_rule,
                                  max_tokens=min(config.reference_tokens, int(model.cfg.n_ctx)))
    if store is not None and is_main():
        store.save_extra(f"conditions-{unit_prefix(model)}", pd.DataFrame([condition_meta(prepared)]).astype(str))

    frames = []
    for name in config.tasks:  # a finished task is read back; the others' batches are shared among ranks
        unit = f"{unit_prefix(model)}-{name}"
        frames.append(store.load_part(unit) if store is not None and store.has(unit) else task_rows(
            model, items[name], prepared.conditions, new_tokens=config.new_tokens, batch_size=config.batch_size,
            bos=config.bos, max_tokens=config.max_tokens, show_progress=show_progress, store=store, unit=unit))
    return pd.concat(frames, ignore_index=True)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per model, task and condition (see ``task_eval.accuracy_table``)."""
    return accuracy_table(df)


def statistics(df: pd.DataFrame, n_bootstrap: int = 5000, seed: int = 0) -> pd.DataFrame:
    """Degradation per model, task and condition with bootstrap CI and McNemar p (``task_eval.degradation``)."""
    return degradation(df, n_bootstrap=n_bootstrap, seed=seed)


def categories(df: pd.DataFrame, column: str = "correct", n_bootstrap: int = 5000, seed: int = 0) -> pd.DataFrame:
    """The study's headline: contextual vs parametric degradation and their ratio per model and
    condition, 95% bootstrap CIs over items (``task_eval.category_degradation``)."""
    return category_degradation(df, column=column, n_bootstrap=n_bootstrap, seed=seed)


STUDY_KINDS = {"cities": "parametric", "sports": "parametric", "imdb": "contextual", "passkey": "contextual"}


def study_categories() -> pd.DataFrame:
    """The study's category headline recomputed from its per-task accuracies
    (``drope_lens/data/study_numbers.json``, Exp 3 rows): per model, ``parametric`` and
    ``contextual`` = mean over the category's tasks of (baseline - disrupted) / baseline
    (fractions), ``ratio`` = contextual / parametric (RoPE: 0.943, 0.245, 3.8x)."""
    from drope_lens.measurement.study import study_numbers

    numbers = study_numbers()
    numbers = numbers[numbers.experiment == EXPERIMENT].set_index(["key", "variant"])["value"]
    rows = []
    for variant in ("rope", "drope"):
        row = {"variant": variant}
        for kind in ("parametric", "contextual"):
            values = [(numbers[(f"{t}_baseline", variant)] - numbers[(f"{t}_disrupted", variant)])
                      / numbers[(f"{t}_baseline", variant)] for t, k in STUDY_KINDS.items() if k == kind]
            row[kind] = float(sum(values) / len(values))
        row["ratio"] = row["contextual"] / row["parametric"]
        rows.append(row)
    return pd.DataFrame(rows)


def category_table(df: pd.DataFrame, n_bootstrap: int = 2000) -> pd.DataFrame:
    """:func:`categories` for display (percent, ``value [low, high]``) next to the study's
    numbers for the disruption (``topk_mean_q_k``), both scorings."""
    study = study_categories().set_index("variant")
    rows = []
    for column in [c for c in ("correct", "correct_generation") if c in df.columns]:
        for r in categories(df, column=column, n_bootstrap=n_bootstrap).itertuples():
            cell = lambda v, lo, hi, scale=100: f"{scale * v:.3g} [{scale * lo:.3g}, {scale * hi:.3g}]"  # noqa: E731
            row = {"variant": r.variant, "condition": r.condition,
                   "scoring": "primary" if column == "correct" else "generation",
                   "parametric_pct": cell(r.parametric, r.parametric_low, r.parametric_high),
                   "contextual_pct": cell(r.contextual, r.contextual_low, r.contextual_high),
                   "ratio": cell(r.ratio, r.ratio_low, r.ratio_high, 1),
                   "tasks": f"parametric: {r.parametric_tasks or '-'}; contextual: {r.contextual_tasks or '-'}"}
            if r.condition == "topk_mean_q_k" and r.variant in study.index:
                s = study.loc[r.variant]
                row["study"] = f"{100 * s.parametric:.3g}% vs {100 * s.contextual:.3g}%, {s.ratio:.2g}x (cities, sports vs imdb, passkey)"
            rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------
# Command line: ``drope-lens run knowledge``.
# ------------------------------------------------------------------------------------------
CLI_TAKES_TEXTS = False


from drope_lens.engine.options import knowledge as add_cli_arguments  # noqa: E402  (options importable without torch)


def config_from_args(ctx) -> KnowledgeConfig:
    args = ctx.args
    from drope_lens.engine.runner import trained_context

    source = args.source or ("toy" if ctx.is_toy else "study")
    reference_tokens = args.reference_tokens
    if reference_tokens is None:
        reference_tokens = min([REFERENCE_TOKENS, *(c for c in map(trained_context, ctx.sources) if c)])
    return KnowledgeConfig(tuple(s for s in args.tasks.split(",") if s), tuple(s for s in args.conditions.split(",") if s),
                           args.n, args.seed, source, args.rotary, args.new_tokens, args.batch_size, args.max_tokens,
                           args.bos, args.spike_rule, reference_tokens, args.imdb_file)


def run_cli(ctx) -> int:
    from drope_lens.engine.results import model_identity
    from drope_lens.engine.runner import print_table

    config = config_from_args(ctx)
    store = ctx.store(EXPERIMENT, config, {"task_items": {task: items_fingerprint(load_task(
        task, config.n, config.seed, config.source, imdb_file=config.imdb_file)) for task in config.tasks}})
    frames, identities = [], []
    for model in ctx.models():
        frames.append(run(model, config.tasks, config.conditions, config.n, config.seed, source=config.source,
                          rotary=config.rotary, new_tokens=config.new_tokens, batch_size=config.batch_size,
                          max_tokens=config.max_tokens, bos=config.bos, spike_rule=config.spike_rule,
                          reference_tokens=config.reference_tokens, imdb_file=config.imdb_file, store=store))
        identities.append(model_identity(model))
    df = pd.concat(frames, ignore_index=True)
    ctx.finalize(store, frames, {"config": asdict(config), "seed": config.seed,
                                 "condition_layers": condition_layers(df)}, identities)
    print_table("Accuracy (primary: logit comparison; passkey: key in the greedy continuation):", summary(df))
    if len(config.conditions) > 1:
        print_table("Degradation = (baseline - condition) / baseline, 95% bootstrap CI over prompts, McNemar p:",
                    statistics(df))
        print_table("Per category (the study's headline; RoPE 94.3% contextual vs 24.5% parametric, 3.8x): mean "
                    "degradation of the category's tasks, 95% bootstrap CI over items:", categories(df))
    return 0
