"""drope_lens: TransformerLens interpretability for RoPE language models and their DroPE counterparts.

>>> import drope_lens as dl
>>> rope, drope = dl.load_pair("llama2-7b", dtype="bf16", device="cuda")   # doctest: +SKIP
"""

import logging as _logging
import warnings as _warnings

# bitsandbytes (imported by TransformerLens) logs a warning on CPU machines about an optional
# kernels package; it concerns CPU 4-bit matmuls, which drope_lens does not use.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)

# TransformerLens 3.9 marks HookedTransformer deprecated (it is gone in 4.0, which is why
# drope_lens pins <4). Silence that one warning here, in one place.
_warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)

from .checkpoint import DROPE_ATTENTION_TYPES, CheckpointError, CheckpointSpec  # noqa: E402
from .convert import to_drope  # noqa: E402
from .loading import load_model  # noqa: E402
from .saving import save_model  # noqa: E402
from .model import DropeLensTransformer, is_drope  # noqa: E402
from .registry import load_pair, register_pair  # noqa: E402

__all__ = [
    "DROPE_ATTENTION_TYPES",
    "CheckpointError",
    "CheckpointSpec",
    "DropeLensTransformer",
    "is_drope",
    "load_model",
    "load_pair",
    "register_pair",
    "save_model",
    "to_drope",
]
__version__ = "0.1.0"
