"""drope_lens: TransformerLens interpretability for RoPE language models and their DroPE counterparts.

>>> import drope_lens as dl
>>> rope, drope = dl.load_pair("llama2-7b", dtype="bf16", device="cuda")   # doctest: +SKIP

The names below are imported on first use (``dl.load_model`` imports torch, transformers and
TransformerLens then), so ``import drope_lens`` and ``drope-lens --help`` start in well under a
second; ``from drope_lens import load_model`` works as usual.
"""

import importlib as _importlib
import logging as _logging
import warnings as _warnings

# bitsandbytes (imported by TransformerLens) logs a warning on CPU machines about an optional
# kernels package; it concerns CPU 4-bit matmuls, which drope_lens does not use.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)

# TransformerLens 3.9 marks HookedTransformer deprecated (it is gone in 4.0, which is why
# drope_lens pins <4). Silence that one warning here, in one place.
_warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)

#: public name -> the submodule that defines it (imported on first access, see ``__getattr__``)
_LAZY = {
    "DROPE_ATTENTION_TYPES": "model.checkpoint",
    "CheckpointError": "model.checkpoint",
    "CheckpointSpec": "model.checkpoint",
    "to_drope": "model.convert",
    "load_model": "model.loading",
    "save_model": "model.saving",
    "DropeLensTransformer": "model.transformer",
    "is_drope": "model.transformer",
    "load_pair": "model.registry",
    "register_pair": "model.registry",
}

#: ``dl.<name>`` for the modules a notebook reaches for, wherever they live in the layers
_SUBMODULES = {
    "figures": "outputs.figures",
    "report": "outputs.report",
    "reproduction": "outputs.reproduction",
    "views": "outputs.views",
    "static": "outputs.static",
    "results": "engine.results",
    "distributed": "engine.distributed",
    "generation": "measurement.generation",
    "analysis": "measurement.analysis",
    "texts": "measurement.texts",
    "tasks": "measurement.tasks",
    "passkey": "measurement.passkey",
    "scoring": "measurement.scoring",
    "attention_stats": "measurement.attention_stats",
    "loading": "model.loading",
    "registry": "model.registry",
    "checkpoint": "model.checkpoint",
}

__all__ = sorted(_LAZY)
__version__ = "0.1.0"


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:  # a submodule (dl.figures, dl.hooks, ...), imported on first access
        try:
            return _importlib.import_module(f".{_SUBMODULES.get(name, name)}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'drope_lens' has no attribute {name!r}") from None
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
