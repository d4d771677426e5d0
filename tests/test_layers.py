"""drope_lens's layers, read from the source (ast): every import points down or sideways.

The data path is checkpoint -> model -> measurement -> engine -> experiments -> result files ->
outputs, and the package's folders are those layers::

    1 drope_lens.model          checkpoint -> faithful HookedTransformer
    2 drope_lens.measurement    what a forward/generation measures, and its inputs
      drope_lens.hooks          interventions and captures (TransformerLens hooks)
      drope_lens.toy.corpus     the toy pair's corpus (an input: its held-out texts and tasks)
    3 drope_lens.engine         runs units on ranks, stores rows (RunStore)
    4 drope_lens.experiments    one module per experiment of the study
    5 drope_lens.outputs        result files -> figures, report, reproduction table, views
    6 drope_lens.cli, drope_lens.benchmarks, drope_lens.toy (training)   the applications

A module may import its own layer and those below, never one above (function-level imports
included). The test fails on an import that points up, naming it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {
    "drope_lens.model": 1,
    "drope_lens.measurement": 2,
    "drope_lens.hooks": 2,
    "drope_lens.toy.corpus": 2,
    "drope_lens.toy.tokenizer": 2,
    "drope_lens.engine": 3,
    "drope_lens.experiments": 4,
    "drope_lens.outputs": 5,
    "drope_lens.cli": 6,
    "drope_lens.benchmarks": 6,
    "drope_lens.toy": 6,
}
#: Upward imports still being removed (issue 21); each must still exist, so the list only shrinks.
KNOWN_UPWARD: set[tuple[str, str]] = set()


def layer(module: str) -> int:
    """The layer of a dotted module name (0: the package's top, ``drope_lens/__init__``)."""
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYERS[prefix]
    return 0


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[0] in ("hooks", "experiments"):  # installed as drope_lens.hooks / drope_lens.experiments
        parts = ("drope_lens",) + parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, is_package: bool) -> set[str]:
    """Every ``drope_lens`` module (or module.attribute) that ``source`` imports, anywhere."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names if target in ("drope_lens",) or not node.module}
    return {name for name in found if name.startswith("drope_lens.")}


def _sources() -> list[Path]:
    return sorted(p for folder in ("drope_lens", "hooks", "experiments") for p in (ROOT / folder).rglob("*.py"))


def upward_imports() -> set[tuple[str, str]]:
    out = set()
    for path in _sources():
        module = module_name(path)
        for target in imports(path.read_text(), module, path.name == "__init__.py"):
            if layer(target) > layer(module):
                out.add((module, target))
    return out


def test_the_reader_resolves_relative_and_function_level_imports():
    source = ("from ..engine.results import RunStore\nfrom . import kernels\n"
              "def f():\n    from drope_lens.outputs import figures\n    import drope_lens.cli\n")
    assert imports(source, "drope_lens.model.attention.layer", False) == {
        "drope_lens.model.engine.results", "drope_lens.model.attention", "drope_lens.model.attention.kernels",
        "drope_lens.outputs", "drope_lens.cli"}
    assert layer("drope_lens.outputs.figures.exp01_massive_values") == 5 and layer("drope_lens") == 0
    assert layer("drope_lens.toy.corpus") == 2 and layer("drope_lens.toy.train") == 6


def test_imports_point_only_down():
    found = upward_imports()
    new = sorted(found - KNOWN_UPWARD)
    assert not new, "imports that point up a layer (see this module's docstring):\n" + "\n".join(
        f"  {a} (layer {layer(a)}) imports {b} (layer {layer(b)})" for a, b in new)


@pytest.mark.parametrize("pair", sorted(KNOWN_UPWARD))
def test_known_exceptions_still_exist(pair):
    assert pair in upward_imports(), f"{pair[0]} no longer imports {pair[1]}: remove it from KNOWN_UPWARD"


def test_every_module_has_a_layer():
    assert all(layer(module_name(p)) or module_name(p) == "drope_lens" for p in _sources())
