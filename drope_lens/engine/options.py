"""Command-line options of every ``drope-lens run <experiment>`` command.

This module imports nothing heavier than :mod:`argparse` (no torch, pandas or TransformerLens),
so that ``drope-lens --help``, ``drope-lens run X --help`` and argument errors answer at once:
the experiment module itself is imported only when its command runs. Each experiment module
exposes its function here as its ``add_cli_arguments``; the defaults that both the options and
the experiments use (task and condition lists, length grids) are defined here, once.
"""

from __future__ import annotations

import argparse
from typing import Callable, Sequence

from drope_lens.measurement.passkey import FORMATS

#: Options renamed because ``torchrun`` claims them: its parser reads every option up to the end of
#: the command line, the script's included, and takes abbreviations of its own (``--n`` could be
#: ``--nnodes``, ``--nproc-per-node``, ...). Old spelling -> what to write instead (the CLI names it
#: when the old one is used). tests/test_torchrun_cli.py checks that no option collides.
RENAMED = {"--n": "--prompts (knowledge, bos-ablation, layer1-ablation) or --trials (context-length)"}

# Exp 3 (knowledge)
KNOWLEDGE_TASKS = ("cities", "sports", "reviews", "passkey")
KNOWLEDGE_CONDITIONS = ("baseline", "topk_mean_q_k")
#: Spike-layer rules of :mod:`drope_lens.measurement.analysis` (repeated here so that options import no numpy;
#: tests/test_first_contact.py checks that the two agree).
SPIKE_RULES = ("argmax", "first_above", "jump")
DEFAULT_SPIKE_RULE = "argmax"
# Exp 4/5 and Exp 6 ablations
BOS_ABLATION_CONDITIONS = ("baseline", "bos_mlp", "bos_v_spike", "bos_v_all")
LAYER1_ABLATION_CONDITIONS = ("baseline", "l1_mlp", "l1_attn", "l1_both", "l1_both_bos")
# Exp 10 (context length)
REAL_MODEL_LENGTHS = (512, 1024, 2048, 4096, 6144, 8192, 16384)
DEPTH_GRID = (0.1, 0.3, 0.5, 0.7, 0.9)


def massive_values(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threshold", type=float, default=5.0)
    parser.add_argument("--rotary", choices=["pre", "post"], default="pre")
    parser.add_argument("--n-texts", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=10,
                        help="texts per forward (default 10: the study's 10 texts at once)")


def disruption(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threshold", type=float, default=5.0)
    parser.add_argument("--rotary", choices=["pre", "post"], default="pre")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-identification", type=int, default=3)
    parser.add_argument("--n-evaluation", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=16)


def knowledge(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", default=",".join(KNOWLEDGE_TASKS), help="comma-separated task names")
    parser.add_argument("--conditions", default=",".join(KNOWLEDGE_CONDITIONS), help="comma-separated condition names")
    parser.add_argument("--prompts", dest="n", metavar="PROMPTS", type=int, default=None, help="prompts per task (default: the study's)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--source", choices=["study", "toy"], default=None,
                        help="task data: the study's files, or the toy corpus's (default: toy for the toy pair)")
    parser.add_argument("--rotary", choices=["pre", "post"], default="pre")
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=2048, help="longest prompt allowed, in tokens (default 2048)")
    parser.add_argument("--reference-tokens", type=int, default=None,
                        help="tokens of each reference text the conditions are prepared on (default: 512 as in "
                             "Exp 4-6, capped at the models' trained context)")
    parser.add_argument("--spike-rule", choices=list(SPIKE_RULES), default=DEFAULT_SPIKE_RULE,
                        help="how bos_mlp / bos_v_spike choose the spike layer (default argmax, the study's)")
    parser.add_argument("--imdb-file", default=None,
                        help="IMDB rows for task imdb (.jsonl/.csv/.parquet with text, label); default: local "
                             "datasets cache")


def ablation(parser: argparse.ArgumentParser, default_conditions: Sequence[str]) -> None:
    """Options shared by the ablation sweeps (Exp 4/5 BOS ablations, Exp 6 layer-1 ablations)."""
    parser.add_argument("--conditions", default=",".join(default_conditions), help="comma-separated condition names")
    parser.add_argument("--tasks", default="cities,sports,reviews,passkey", help="comma-separated tasks ('' for none)")
    parser.add_argument("--prompts", dest="n", metavar="PROMPTS", type=int, default=None, help="prompts per task (default: the study's)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--source", choices=["study", "toy"], default=None,
                        help="task data (default: toy for the toy pair, study otherwise)")
    parser.add_argument("--n-reference", type=int, default=3, help="texts for the spike layer (disjoint from evaluation)")
    parser.add_argument("--n-evaluation", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--spike-rule", choices=list(SPIKE_RULES), default=DEFAULT_SPIKE_RULE,
                        help="how bos_mlp / bos_v_spike choose the spike layer: argmax of the BOS ratio (default, the "
                             "study's), first_above 2, or jump (the block that raises ||resid[0]|| most)")


def bos_ablation(parser: argparse.ArgumentParser) -> None:
    ablation(parser, BOS_ABLATION_CONDITIONS)


def layer1_ablation(parser: argparse.ArgumentParser) -> None:
    ablation(parser, LAYER1_ABLATION_CONDITIONS)


def add_text_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the attention-statistics experiments (Exp 4/5 statistics, 7, 8-9)."""
    parser.add_argument("--n-texts", type=int, default=10, help="texts to measure (default 10, the study's)")
    parser.add_argument("--batch-size", type=int, default=10, help="texts per forward (default 10)")


def sinks(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tau", type=float, default=0.3, help="sink threshold on the sink score (default 0.3)")
    parser.add_argument("--spike-ratio", type=float, default=2.0, help="BOS ratio that marks the spike (default 2)")
    add_text_arguments(parser)


def attention_structure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--window", type=int, default=5, help="local window in keys (default 5)")
    parser.add_argument("--max-distance", type=int, default=50, help="distances 0..D-1 profiled (default 50)")
    parser.add_argument("--sink-tau", type=float, default=0.3)
    parser.add_argument("--local-tau", type=float, default=0.3)
    parser.add_argument("--local-counts-bos", action="store_true", help="count BOS in the local window")
    add_text_arguments(parser)


def context_length(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help="target prompt lengths in tokens (default: 0.5x..8x the trained context for the toy "
                             f"pair, else {list(REAL_MODEL_LENGTHS)})")
    parser.add_argument("--formats", nargs="+", choices=list(FORMATS), default=list(FORMATS))
    parser.add_argument("--trials", dest="n", metavar="TRIALS", type=int, default=20, help="trials per cell (default 20)")
    parser.add_argument("--depths", type=float, nargs="+", default=None,
                        help=f"needle depth grid, e.g. {' '.join(map(str, DEPTH_GRID))} (default: uniform in the middle half)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--no-verify", action="store_true", help="skip verification and ranking")
    parser.add_argument("--key-divisor", type=int, default=None,
                        help="keys only among multiples of this (default: 7 for the toy pair, whose corpus has none)")
    parser.add_argument("--batch-tokens", type=int, default=65_536)
    parser.add_argument("--scaling", type=float, default=0.0,
                        help="log-length softmax scaling beta (0: off); see the module docstring")
    parser.add_argument("--scaling-layers", type=int, nargs="+", default=None)


#: ``drope-lens run <command>`` -> (its options, whether it takes --texts/--max-tokens). A command
#: of :data:`drope_lens.experiments.CLI_EXPERIMENTS` missing here has its module imported for its
#: ``add_cli_arguments`` and ``CLI_TAKES_TEXTS`` instead (slower to start, same behaviour).
OPTIONS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], bool]] = {
    "massive-values": (massive_values, True),
    "disruption": (disruption, True),
    "knowledge": (knowledge, False),
    "bos-ablation": (bos_ablation, True),
    "layer1-ablation": (layer1_ablation, True),
    "sinks": (sinks, True),
    "bos-write": (add_text_arguments, True),
    "attention-structure": (attention_structure, True),
    "layer-balance": (add_text_arguments, True),
    "context-length": (context_length, False),
}
