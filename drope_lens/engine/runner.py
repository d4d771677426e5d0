"""What every ``drope-lens run <experiment>`` command shares: models, texts, results, printing.

An experiment module plugs into the command line by defining two functions::

    def add_cli_arguments(parser: argparse.ArgumentParser) -> None   # its own options
    def run_cli(ctx: RunContext) -> int                              # run, save, print

and a line in :data:`drope_lens.experiments.CLI_EXPERIMENTS`. The common options (model
choice, dtype, device, texts, BOS policy, results root, run id, max tokens) are added here, so
they are spelled the same for every experiment.

Under ``torchrun --nproc-per-node N drope-lens run ...`` the command runs unchanged as N ranks
(see :mod:`drope_lens.engine.distributed`): :meth:`RunContext.from_args` creates the process group,
each rank loads its replica on its own GPU (``cuda:LOCAL_RANK``, or ``LOCAL_RANK * --n-devices``
onwards when one replica spans several GPUs), the experiments share their planned batches
among the ranks, and only rank 0 prints (its stdout is the command's; other ranks' stdout is
discarded, their stderr kept) and writes ``data.parquet``/``meta.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

# Imported where used, not here: `drope-lens --help` and argument errors must not wait for
# torch, pandas or TransformerLens (see drope_lens.engine.options).
if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .results import RunStore


def add_common_arguments(parser: argparse.ArgumentParser, *, texts: bool = True) -> None:
    """Model, text, BOS and results options shared by every experiment command."""
    parser.add_argument("--pair", default=None,
                        help="registry name of a RoPE/DroPE pair (default: toy, the bundled pair; e.g. llama2-7b)")
    parser.add_argument("--rope", default=None, help="RoPE checkpoint directory or hub id")
    parser.add_argument("--drope", default=None, help="DroPE checkpoint directory or hub id")
    parser.add_argument("--dtype", default="float32", help="float32 (default), bf16 or fp16")
    parser.add_argument("--device", type=device_arg, default=None, help=DEVICE_HELP)
    parser.add_argument("--quantization", choices=["nf4"], default=None)
    parser.add_argument("--n-devices", type=int, default=1,
                        help="GPUs per model: split its layers over this many GPUs (default 1); under torchrun "
                             "each rank uses GPUs LOCAL_RANK*N .. LOCAL_RANK*N+N-1")
    parser.add_argument("--out", default="results", help="results root (default: results/)")
    parser.add_argument("--run-id", default=None,
                        help="default: derived from the configuration, the texts' content and the models, so reruns "
                             "resume")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the run directory first and start afresh (without it, a directory that holds "
                             "results of another configuration is refused)")
    parser.add_argument("--bos", choices=["checkpoint", "always"], default="checkpoint",
                        help="position 0: as the checkpoint's tokenizer does (default) or always the BOS token")
    if texts:
        parser.add_argument("--texts", default=None,
                            help="builtin, wikitext, toy (held-out toy-corpus text), or a .txt/.jsonl file or folder "
                                 "(default: toy for the toy pair, builtin otherwise)")
        parser.add_argument("--max-tokens", type=int, default=None,
                            help="tokens per text (default: 512, the study's, capped at the models' trained context)")


DEVICE_HELP = "cpu, cuda, cuda:N or mps (default: cuda if this torch sees a GPU, else cpu)"


def device_arg(value: str) -> str:
    """argparse ``type`` of ``--device``: the spelling only (no torch import); whether this
    machine has that device is checked by :func:`resolve_device` when the command runs."""
    import re

    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a device; allowed: cpu, cuda, cuda:N (N a GPU index), mps")
    return value


def resolve_device(value: Optional[str], flag: str = "--device") -> str:
    """The device a ``--device`` value names, checked against this torch build; None: cuda if
    available, else cpu. Raises ValueError naming the value and what is allowed."""
    import torch

    if value is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise ValueError(f"{flag} {value!r}: not a device; allowed: cpu, cuda, cuda:N (N a GPU index), mps.") from None
    if device.type == "cuda":
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            raise ValueError(f"{flag} {value}: this torch ({torch.__version__}) is built without CUDA; "
                             "use --device cpu, or install a CUDA build of torch.")
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError(f"{flag} {value}: torch {torch.__version__} sees no CUDA GPU; use --device cpu.")
        if device.index is not None and device.index >= count:
            raise ValueError(f"{flag} {value}: this machine has {count} GPU(s): cuda:0 .. cuda:{count - 1}.")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{flag} {value}: MPS is not available on this machine; use --device cpu.")
    elif device.type != "cpu":
        raise ValueError(f"{flag} {value}: drope_lens runs on cpu, cuda, cuda:N or mps, not {device.type}.")
    return value


def trained_context(source: str) -> Optional[int]:
    """``max_position_embeddings`` from a checkpoint's config.json (None if it cannot be read)."""
    try:
        from ..model.loading import resolve_source

        config = json.loads((resolve_source(source) / "config.json").read_text())
        return int(config["max_position_embeddings"])
    except Exception:  # the load itself will report the real problem
        return None


def model_sources(args: argparse.Namespace) -> list[str]:
    """The checkpoints a command runs on: ``--pair`` (default: the bundled toy pair) or ``--rope``/``--drope``."""
    from ..model.registry import lookup

    if args.pair and (args.rope or args.drope):
        raise ValueError("give either --pair NAME or --rope/--drope sources, not both.")
    if not (args.pair or args.rope or args.drope):
        args.pair = "toy"
        print("no --pair/--rope/--drope given: using the bundled toy pair (drope-lens info toy describes it)\n")
    if args.pair:
        entry = lookup(args.pair)
        return [entry.rope, entry.drope]
    return [s for s in (args.rope, args.drope) if s]


@dataclass
class RunContext:
    """One ``drope-lens run`` invocation: parsed arguments, the checkpoints, and helpers."""

    args: argparse.Namespace
    sources: list[str] = field(default_factory=list)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RunContext":
        from . import distributed

        args.device = resolve_device(args.device)
        n_devices = getattr(args, "n_devices", 1)
        if n_devices < 1:
            raise ValueError(f"--n-devices {n_devices}: must be at least 1.")
        distributed.init_from_env(args.device, n_devices=n_devices)  # no-op outside torchrun
        if not distributed.is_main():  # one rank prints: the others' tables would repeat it
            sys.stdout = open(os.devnull, "w")
        ctx = cls(args, model_sources(args))
        if hasattr(args, "max_tokens"):
            if args.max_tokens is None:
                contexts = [c for c in (trained_context(s) for s in ctx.sources) if c]
                args.max_tokens = min([512, *contexts])
            if args.max_tokens < 2:
                raise ValueError(f"--max-tokens {args.max_tokens}: need at least 2 tokens per text.")
        return ctx

    @property
    def is_toy(self) -> bool:
        return all(s.startswith("bundled:toy/") for s in self.sources)

    def texts(self):
        """The texts ``--texts`` names (default: the toy corpus for the toy pair, else builtin)."""
        from ..measurement.texts import load_texts

        source = self.args.texts
        if source is None:  # the toy pair never saw real English: give it text from its own corpus
            source = self.args.texts = "toy" if self.is_toy else "builtin"
        return load_texts(source)

    @property
    def load_key(self) -> dict[str, Any]:
        """What identifies the models of a run (part of the run id)."""
        return {"sources": self.sources, "dtype": self.args.dtype, "quantization": self.args.quantization,
                "bos": self.args.bos}

    def checkpoint_fingerprints(self) -> list[Optional[str]]:
        """:func:`~drope_lens.engine.results.checkpoint_fingerprint` of each source that is on this machine
        (a directory or a bundled checkpoint; None for a hub id not resolved yet: each model's own
        fingerprint is then checked when it is loaded)."""
        from ..model.loading import resolve_source
        from .results import checkpoint_fingerprint

        out = []
        for source in self.sources:
            local = source.startswith("bundled:") or Path(source).expanduser().is_dir()
            out.append(checkpoint_fingerprint(str(resolve_source(source))) if local else None)
        return out

    def store(self, experiment: str, config: Any, key: dict[str, Any]) -> "RunStore":
        """The run's store, bound (scope ``"run"``) to everything that determines its results: the
        experiment's ``config``, ``key`` (lists of :class:`~drope_lens.measurement.texts.Text` are taken by
        content), the sources, dtype, quantisation, BOS policy and the checkpoints' fingerprints.
        The default run id hashes the same fields. A directory that holds another configuration
        is refused here, before any model is loaded (``--overwrite`` starts it afresh)."""
        from .results import RunStore, run_id_for, texts_fingerprint
        from ..measurement.texts import Text

        content = {k: texts_fingerprint(v) if isinstance(v, (list, tuple)) and v and all(isinstance(t, Text) for t in v)
                   else v for k, v in key.items()}
        fields = {"experiment": experiment, "config": config, **content, "load": self.load_key,
                  "checkpoints": self.checkpoint_fingerprints()}
        run_id = self.args.run_id or run_id_for(experiment, fields)
        store = RunStore(self.args.out, experiment, run_id, overwrite=bool(getattr(self.args, "overwrite", False)))
        return store.bind("run", fields, device=self.args.device)

    def models(self) -> Iterator[Any]:
        """Load the models one at a time (only one is in memory), yielding each; inside
        :func:`keep_models`, small models are loaded once and handed to every later command."""
        import torch

        from ..model.loading import load_model

        for source in self.sources:
            key = (source, self.args.dtype, self.args.device, self.args.quantization, getattr(self.args, "n_devices", 1))
            model = _KEPT.get(key) if _KEPT is not None else None
            if model is None:
                model = load_model(source, dtype=self.args.dtype, device=self.args.device,
                                   quantization=self.args.quantization, n_devices=getattr(self.args, "n_devices", 1))
                if _KEPT is not None and _parameter_bytes(model) <= KEEP_MAX_BYTES:
                    _KEPT[key] = model
            else:  # as a fresh load leaves it: no hooks, no cache offset, the RoPE length warning not yet given
                model.reset_hooks(including_permanent=False)
                model.position_offset = 0
                model._warned_rope_length = False
            yield model
            if _KEPT is not None and _KEPT.get(key) is model:
                continue
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def finalize(self, store: RunStore, frames: list[pd.DataFrame], meta: dict[str, Any],
                 identities: list[dict[str, Any]]) -> Path:
        """Write ``data.parquet`` and ``meta.json`` (models and BOS policy added) and say where.

        Under ``torchrun`` every rank calls this with the whole run's frames; rank 0 writes."""
        import pandas as pd

        df = pd.concat(frames, ignore_index=True)
        meta = dict(meta)
        meta["models"] = identities
        meta.setdefault("bos", self.args.bos)
        directory = store.finalize(df, meta)
        print(f"results: {directory}\n")
        return directory


#: Largest model (parameter bytes) that :func:`keep_models` keeps loaded between commands: the
#: bundled toy pair (21 MB in float32 per model) is kept; a 7B model is loaded by each command.
KEEP_MAX_BYTES = 2**30
_KEPT: Optional[dict] = None


def _parameter_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@contextlib.contextmanager
def keep_models() -> Iterator[None]:
    """Inside, :meth:`RunContext.models` loads each model of at most :data:`KEEP_MAX_BYTES` once
    and hands the same object to every later command (``drope-lens study`` runs its ten
    experiments in it: on the toy pair, 20 loads and 20 ``gc.collect`` calls of about 0.3-1 s each
    become 2 loads). Experiments only attach hooks in context managers, so the model they get is
    the one a fresh load gives."""
    global _KEPT
    outer, _KEPT = _KEPT, ({} if _KEPT is None else _KEPT)
    try:
        yield
    finally:
        if outer is None:
            _KEPT = None
            gc.collect()


def identities_of(models: list[Any]) -> list[dict[str, Any]]:
    from .results import model_identity

    return [model_identity(m) for m in models]


def print_table(title: str, frame: pd.DataFrame) -> None:
    """A titled table, wide enough not to wrap (printed by rank 0 only under torchrun)."""
    import pandas as pd

    from . import distributed

    if not distributed.is_main():
        return
    with pd.option_context("display.width", 160, "display.max_columns", 30):
        print(title)
        print(frame.to_string(index=False))
        print()
