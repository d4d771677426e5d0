"""Result files: ``results/<experiment>/<run-id>/{data.parquet, meta.json, parts/}``.

A run is split into named units (a batch of texts, a condition and seed, ...). Each finished
unit is written to ``parts/<unit>.parquet`` at once, so an interrupted sweep keeps what it
finished and a rerun with the same configuration (hence the same run id) skips it.
``finalize`` concatenates the parts into ``data.parquet`` and writes ``meta.json`` with the
configuration, seed, model identities, dtype, quantisation, package versions and git commit.

Under ``torchrun`` (see :mod:`drope_lens.distributed`) every rank writes its own units' parts into
the same directory (a filesystem all ranks share is required). Parts are keyed by unit name,
never by rank, so a directory written by one world size resumes under any other. A planned batch
whose rows belong to units finished by several ranks is checkpointed as
``batches/<key>.parquet`` (:meth:`RunStore.save_batch`) until its units are written.
``save_extra`` and ``finalize`` write on rank 0 only; ``finalize`` waits for every rank first and
records the world size in ``meta.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from . import distributed

PACKAGES = ("drope_lens", "torch", "transformers", "transformer-lens", "safetensors", "pandas", "scipy", "bitsandbytes")


def package_versions() -> dict[str, Optional[str]]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> Optional[str]:
    """The drope_lens source tree's commit (None when not run from a git checkout)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def checkpoint_fingerprint(path: Optional[str]) -> Optional[str]:
    """sha256 of a checkpoint directory's config and safetensors headers plus file sizes.

    Identifies the exact files without reading gigabytes of weights (headers hold every
    tensor's name, dtype, shape and byte range).
    """
    if not path or not Path(path).is_dir():
        return None
    digest = hashlib.sha256()
    directory = Path(path)
    for file in sorted(directory.iterdir()):
        if file.name == "config.json" or file.name.endswith(".index.json"):
            digest.update(file.name.encode() + file.read_bytes())
        elif file.suffix == ".safetensors":
            with open(file, "rb") as handle:
                header_len = int.from_bytes(handle.read(8), "little")
                digest.update(file.name.encode() + handle.read(header_len))
            digest.update(str(file.stat().st_size).encode())
    return digest.hexdigest()


def model_identity(model) -> dict[str, Any]:
    """Source, revision, fingerprint, variant, dtype and quantisation of a drope_lens model."""
    spec = getattr(model, "lens", None)
    if spec is None:
        return {"source": getattr(model.cfg, "model_name", "unknown"), "dtype": str(model.cfg.dtype)}
    return {
        "source": spec.source,
        "revision": spec.revision,
        "fingerprint": checkpoint_fingerprint(spec.path),
        "variant": spec.variant,
        "attention_type": spec.attention_type,
        # the multiplier of q.k the model applies: config.json's softmax_scale, else 1/sqrt(d_head)
        "softmax_scale": float(spec.attn_scale),
        "softmax_scale_from": "config softmax_scale" if spec.softmax_scale is not None else f"1/sqrt(d_head={spec.d_head})",
        "dtype": str(model.cfg.dtype).replace("torch.", ""),
        "quantization": getattr(model, "quantization", None),
    }


def config_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)


def run_id_for(experiment: str, config: Any, models: dict[str, dict]) -> str:
    """Deterministic id: the same experiment, configuration and models give the same run id."""
    payload = json.dumps({"experiment": experiment, "config": config_dict(config), "models": models},
                         sort_keys=True, default=str)
    return f"{experiment}-{hashlib.sha256(payload.encode()).hexdigest()[:10]}"


@dataclass
class RunStore:
    """One run's directory; parts written as units finish."""

    root: Path
    experiment: str
    run_id: str

    @property
    def directory(self) -> Path:
        return Path(self.root) / self.experiment / self.run_id

    @property
    def parts(self) -> Path:
        return self.directory / "parts"

    def part_path(self, unit: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in unit)
        return self.parts / f"{safe}.parquet"

    def has(self, unit: str) -> bool:
        return self.part_path(unit).is_file()

    def save_part(self, unit: str, frame: pd.DataFrame) -> None:
        _write_atomic(frame, self.part_path(unit))

    def load_part(self, unit: str) -> pd.DataFrame:
        return pd.read_parquet(self.part_path(unit))

    # -- batch checkpoints: rows of one planned batch, kept until their units are written ----
    @property
    def batches(self) -> Path:
        return self.directory / "batches"

    def batch_path(self, key: str) -> Path:
        return self.batches / self.part_path(key).name

    def has_batch(self, key: str) -> bool:
        return self.batch_path(key).is_file()

    def save_batch(self, key: str, frame: pd.DataFrame) -> None:
        _write_atomic(frame, self.batch_path(key))

    def load_batch(self, key: str) -> pd.DataFrame:
        return pd.read_parquet(self.batch_path(key))

    def drop_batches(self, keys) -> None:
        """Delete batch checkpoints (once the units they feed are saved as parts)."""
        for key in keys:
            self.batch_path(key).unlink(missing_ok=True)
        if self.batches.is_dir() and not any(self.batches.iterdir()):
            self.batches.rmdir()

    def save_extra(self, name: str, frame: pd.DataFrame) -> Path:
        """A side table of the run (e.g. the identified massive dims): ``<run>/<name>.parquet``.

        Written by rank 0 only (every rank computes the same table)."""
        target = self.directory / f"{name}.parquet"
        if distributed.is_main():
            _write_atomic(frame, target)
        return target

    def finalize(self, frame: pd.DataFrame, meta: dict[str, Any]) -> Path:
        """Write ``data.parquet`` (``frame``: the whole run's rows) and ``meta.json``.

        Under ``torchrun`` every rank calls this with the same gathered ``frame``: all ranks meet
        at a barrier (every part is on disk), rank 0 writes both files, and all ranks meet again
        so that the files exist on return everywhere. ``meta.json`` records ``world_size``.
        """
        distributed.barrier()
        if distributed.is_main():
            self.directory.mkdir(parents=True, exist_ok=True)
            _write_atomic(frame, self.directory / "data.parquet")
            full = {
                "experiment": self.experiment,
                "run_id": self.run_id,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "packages": package_versions(),
                "git_commit": git_commit(),
                "python": platform.python_version(),
                "world_size": distributed.world().size,
                **meta,
            }
            (self.directory / "meta.json").write_text(json.dumps(full, indent=2, default=str))
        distributed.barrier()
        return self.directory


def _write_atomic(frame: pd.DataFrame, target: Path) -> None:
    """Write ``target`` through a temporary file of this rank and process, then rename: a crash
    never leaves a half-written file, and two ranks writing the same file never share a temporary."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{distributed.world().rank}-{os.getpid()}.tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(target)


def load_run(directory: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``(data, meta)`` of a finished run directory."""
    directory = Path(directory)
    data = directory / "data.parquet"
    meta = directory / "meta.json"
    if not data.is_file() or not meta.is_file():
        raise FileNotFoundError(f"{directory}: not a finished run (needs data.parquet and meta.json).")
    return pd.read_parquet(data), json.loads(meta.read_text())
