"""The package's layout rules, read from the source (ast), not from running it.

Issue 21: a reader of one experiment must not have to read others. No module of
``drope_lens.experiments`` that is an experiment (a command of ``CLI_EXPERIMENTS``) imports
another experiment; ``experiments/`` holds those modules and ``__init__.py`` only; what several
experiments need lives below them (:mod:`drope_lens.measurement.analysis`, ``.tokens``,
``.summaries``; the engine, :mod:`drope_lens.engine`), which tests/test_layers.py keeps from
importing ``drope_lens.experiments``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from drope_lens.experiments import CLI_EXPERIMENTS

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"
PACKAGE = "drope_lens.experiments"
EXPERIMENTS = {module for module, _ in CLI_EXPERIMENTS.values()}


def imported_modules(source: str, module: str) -> set[str]:
    """Modules of ``drope_lens.experiments`` that ``source`` (the module ``module`` of that
    package) imports anywhere (function bodies included), by their short names."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y / from ..experiments.x import y
                base = PACKAGE if node.level == 1 else "drope_lens"
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{alias.name}" for alias in node.names]  # from pkg import module
        else:
            continue
        for name in names:
            if name.startswith(PACKAGE + "."):
                short = name[len(PACKAGE) + 1:].split(".")[0]
                if short != module:
                    found.add(short)
    return found


def _modules() -> dict[str, str]:
    return {p.stem: p.read_text() for p in sorted(EXPERIMENTS_DIR.glob("*.py")) if p.stem != "__init__"}


def test_the_reader_sees_every_kind_of_import():
    source = ("from .disruption import identify_massive\nfrom . import ablation_sweep, knowledge\n"
              "def f():\n    import drope_lens.experiments.sinks\n    from drope_lens.experiments.bos_write import x\n"
              "    from drope_lens.experiments import layer_balance\nfrom drope_lens import analysis\n")
    assert imported_modules(source, "knowledge") == {"disruption", "ablation_sweep", "sinks", "bos_write",
                                                      "layer_balance"}


@pytest.mark.parametrize("module", sorted(_modules()))
def test_no_experiment_imports_another_experiment(module):
    assert EXPERIMENTS <= set(_modules())  # every experiment is a module of the folder
    others = imported_modules(_modules()[module], module) & EXPERIMENTS
    kind = "the experiment" if module in EXPERIMENTS else "the shared module"
    assert not others, (f"{kind} {module} imports the experiment(s) {sorted(others)}: move what they share into "
                        "drope_lens.measurement.analysis (or a shared module) and import it from there")


def test_experiments_folder_holds_one_module_per_experiment_and_nothing_else():
    files = {p.name for p in EXPERIMENTS_DIR.iterdir() if p.name != "__pycache__"}
    allowed = {"__init__.py"} | {f"{module}.py" for module in EXPERIMENTS}
    assert files == allowed, (f"experiments/ must hold one module per experiment of CLI_EXPERIMENTS and __init__.py; "
                              f"extra: {sorted(files - allowed)}, missing: {sorted(allowed - files)}. Shared code "
                              "belongs in drope_lens.engine or drope_lens.measurement (analysis, tokens, summaries).")


#: An experiment module holds only its experiment's definition (config, units, hooks, rows,
#: summaries, CLI arguments); statistics and plumbing live below it (issue 21: "under ~250 lines").
MAX_EXPERIMENT_LINES = 260


@pytest.mark.parametrize("module", sorted(_modules()))
def test_experiment_modules_stay_small(module):
    lines = len(_modules()[module].splitlines())
    assert lines <= MAX_EXPERIMENT_LINES, (
        f"experiments/{module}.py has {lines} lines, more than {MAX_EXPERIMENT_LINES}: move what is not the "
        "experiment's own definition (shared statistics, generic helpers, execution plumbing) into "
        "drope_lens.measurement (summaries, analysis, entropy, ...) or drope_lens.engine")
