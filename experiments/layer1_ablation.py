"""Experiment 6: ablating layer 1's writes, measured by perplexity and the four tasks.

Five conditions (:mod:`drope_lens.hooks.conditions`): ``baseline``; ``l1_mlp``
(``blocks.1.hook_mlp_out`` zeroed at every position, generated tokens included); ``l1_attn``
(``blocks.1.hook_attn_out``); ``l1_both``; ``l1_both_bos`` (both at absolute position 0 only:
the prompt's first token, never a generated one). The study reports RoPE 10.26 / 18,630 / 25.8 /
13,824 / 14,422 and DroPE 17.65 / 3,563 / 3,557 / 3,603 / 3,018 perplexity.

``run`` returns perplexity rows and task rows (see :mod:`drope_lens.engine.ablation`).
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
from drope_lens.engine.options import LAYER1_ABLATION_CONDITIONS

EXPERIMENT = "layer1-ablation"
DEFAULT_CONDITIONS = LAYER1_ABLATION_CONDITIONS


def run(model, reference_texts: TextsLike, evaluation_texts: TextsLike, *,
        conditions: Sequence[str] = DEFAULT_CONDITIONS,
        tasks: Sequence[str] = ("cities", "sports", "reviews", "passkey"), n: Optional[int] = None,
        seed: int = 42, source: str = "study", max_tokens: int = 512, batch_size: int = 16,
        bos: BosPolicy = "checkpoint", spike_rule: str = "argmax", store: Optional[RunStore] = None,
        show_progress: bool = True) -> pd.DataFrame:
    """Perplexity of ``evaluation_texts`` and accuracy on ``tasks`` under each condition.
    ``reference_texts`` are only used if a spike-layer condition is added."""
    config = AblationConfig(tuple(conditions), tuple(tasks), n, seed, source, max_tokens, 20, batch_size, bos, spike_rule)
    return ablation_sweep.run_sweep(model, reference_texts, evaluation_texts, config, store=store,
                                    show_progress=show_progress)


from drope_lens.engine.options import layer1_ablation as add_cli_arguments  # noqa: E402  (options importable without torch)


def run_cli(ctx) -> int:
    return ablation_sweep.run_cli(ctx, EXPERIMENT, "Exp 6 layer-1 ablation")
