"""Experiments 4 and 5: ablating the BOS token's writes, measured by perplexity and task accuracy.

Conditions (:mod:`drope_lens.hooks.conditions`): ``baseline``; ``bos_mlp`` (``hook_mlp_out``
zeroed at absolute position 0 in the model's own spike layer, chosen by ``spike_rule``
(:mod:`drope_lens.measurement.analysis`: ``argmax`` of the BOS-norm ratio ||resid_post[0]|| /
mean_{t>=1} ||resid_post[t]|| by default, the study's; ``first_above`` 2; ``jump``, the block that
raises ||resid[0]|| most) on the models' mean profile over reference texts, recorded in
``condition_layer`` / ``spike_rule`` of every row, the run's meta.json and ``conditions-*.parquet``
(with every rule's layer); no spike under the rule is an error); ``bos_v_spike`` / ``bos_v_all`` (``hook_v`` zeroed at position 0 in the
spike layer / every layer). Under generation only the prompt's position 0 is touched.

``run`` returns perplexity rows and task rows (see :mod:`drope_lens.engine.ablation`); the study's headline
is the perplexity ratio to baseline (RoPE 1249x vs DroPE 1.00x for ``bos_mlp``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import pandas as pd

from drope_lens.engine.results import RunStore
from drope_lens.measurement.texts import TextsLike

from drope_lens.engine import ablation as ablation_sweep
from drope_lens.engine.ablation import AblationConfig
from drope_lens.measurement.summaries import perplexity_summary, task_summary, wide_table  # noqa: F401
from drope_lens.measurement.tokens import BosPolicy
from drope_lens.engine.options import BOS_ABLATION_CONDITIONS

EXPERIMENT = "bos-ablation"
DEFAULT_CONDITIONS = BOS_ABLATION_CONDITIONS


def run(model, reference_texts: TextsLike, evaluation_texts: TextsLike, *,
        conditions: Sequence[str] = DEFAULT_CONDITIONS,
        tasks: Sequence[str] = ("cities", "sports", "reviews", "passkey"), n: Optional[int] = None,
        seed: int = 42, source: str = "study", max_tokens: int = 512, batch_size: int = 16,
        bos: BosPolicy = "checkpoint", spike_rule: str = "argmax", store: Optional[RunStore] = None,
        show_progress: bool = True) -> pd.DataFrame:
    """Perplexity of ``evaluation_texts`` and accuracy on ``tasks`` under each condition; the spike
    layer comes from ``reference_texts`` (disjoint from the evaluation texts)."""
    config = AblationConfig(tuple(conditions), tuple(tasks), n, seed, source, max_tokens, 20, batch_size, bos, spike_rule)
    return ablation_sweep.run_sweep(model, reference_texts, evaluation_texts, config, store=store,
                                    show_progress=show_progress)


from drope_lens.engine.options import bos_ablation as add_cli_arguments  # noqa: E402  (options importable without torch)


def run_cli(ctx) -> int:
    return ablation_sweep.run_cli(ctx, EXPERIMENT, "Exp 4/5 BOS ablations")
