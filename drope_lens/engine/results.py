"""Result files: ``results/<experiment>/<run-id>/{data.parquet, meta.json, parts/}``.

A run is split into named units (a batch of texts, a condition and seed, ...). Each finished
unit is written to ``parts/<unit>.parquet`` at once, so an interrupted sweep keeps what it
finished and a rerun with the same configuration (hence the same run id) skips it.
``finalize`` concatenates the parts into ``data.parquet`` and writes ``meta.json`` with the
configuration, seed, model identities, dtype, quantisation, package versions and git commit.

Under ``torchrun`` (see :mod:`drope_lens.engine.distributed`) every rank writes its own units' parts into
the same directory (a filesystem all ranks share is required). Parts are keyed by unit name,
never by rank, so a directory written by one world size resumes under any other. A planned batch
whose rows belong to units finished by several ranks is checkpointed as
``batches/<key>.parquet`` (:meth:`RunStore.save_batch`) until its units are written.
``save_extra`` and ``finalize`` write on rank 0 only; ``finalize`` waits for every rank first and
records the world size in ``meta.json``.

**Fingerprints: a run directory never mixes configurations.** Everything that determines a run's
rows (the experiment's configuration, the content of its texts and task items, the model's
identity, dtype and quantisation, the BOS policy and :data:`RESULT_SCHEMA_VERSION`) is its
*fingerprint*, a JSON object. :meth:`RunStore.bind` records it in ``fingerprint.json`` under a
*scope* (the command line binds scope ``"run"`` before loading any model; each experiment's
``run`` binds one scope per model before computing anything) and returns a view of the store
bound to it. Binding a scope already recorded with other values raises :class:`RunMismatchError`,
naming every differing field with both values; ``RunStore(..., overwrite=True)`` deletes the
directory at its first bind and starts afresh. Each part and batch checkpoint carries its scope's
fingerprint hash in its parquet metadata, and a part whose hash differs from the bound scope's is
never read (it is recomputed). ``meta.json`` records the fingerprints of the scopes bound in the
process that wrote ``data.parquet``.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import pandas as pd

from ..model import cpu_matmul
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


def run_id_for(experiment: str, fields: Any) -> str:
    """Deterministic id from a run's fingerprint fields (configuration, text CONTENT, models): the
    same fields give the same id, an edited text (same name) another."""
    return f"{experiment}-{fingerprint_hash({'experiment': experiment, 'fields': fields})[:10]}"


#: Version of the rows the experiments write. Raise it whenever a change of the code changes what
#: a finished part holds (a column added, a formula corrected): parts written under another
#: version are then never read back, and a run directory of another version is refused.
RESULT_SCHEMA_VERSION = 2  # 2: spike_rule in task/perplexity rows, bos_norm_pre in sinks, BOS norms in bos_write
FINGERPRINT_FILE = "fingerprint.json"
#: Parquet schema-metadata key under which parts, batch checkpoints and data.parquet carry their hash.
FINGERPRINT_KEY = b"drope_lens.fingerprint"


class RunMismatchError(ValueError):
    """A run directory holds results of another configuration than the one asked for."""


def canonical(value: Any) -> Any:
    """``value`` as plain JSON data (dicts, lists, str, int, float, bool, None), in a canonical form.

    Dataclasses become dicts of their fields, tuples and lists become lists, sets sorted lists,
    paths and dtypes strings, NaN and infinities the strings ``"nan"``/``"inf"``/``"-inf"``.
    Anything else (a function, a tensor) raises ``TypeError``: a fingerprint must not depend on
    object addresses.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((canonical(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return canonical(value.value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        return canonical(value.item())
    if hasattr(value, "tolist") and hasattr(value, "dtype") and not hasattr(value, "is_floating_point"):
        return canonical(value.tolist())  # numpy arrays
    if type(value).__module__ == "torch" and type(value).__name__ in ("dtype", "device"):
        return str(value).replace("torch.", "")
    raise TypeError(f"cannot fingerprint a {type(value).__name__} ({value!r:.80}): give plain values.")


def fingerprint_hash(fields: Any) -> str:
    """sha256 (hex) of the canonical JSON of ``fields`` (keys sorted, no whitespace)."""
    text = json.dumps(canonical(fields), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def texts_fingerprint(texts: Iterable[Any]) -> dict[str, Any]:
    """A list of :class:`~drope_lens.measurement.texts.Text` by content: count, names, the sha256 of every text's
    name, register and text together (an edited text with an unchanged name changes it) and, per
    name, a short hash of that text (so that a refusal names the edited text)."""
    texts = list(texts)
    rows = [[t.name, t.register, t.text] for t in texts]
    return {"count": len(texts), "names": [t.name for t in texts], "sha256": fingerprint_hash(rows),
            "by_name": {t.name: fingerprint_hash([t.register, t.text])[:16] for t in texts}}


def items_fingerprint(items: Iterable[Any]) -> dict[str, Any]:
    """Task items (or any dataclasses) by content: count and the sha256 of all their fields."""
    items = [canonical(item) for item in items]
    return {"count": len(items), "sha256": fingerprint_hash(items)}


def weights_sha256(model) -> str:
    """sha256 over every parameter and buffer of ``model`` (name, dtype, shape and bytes).

    For models with no checkpoint directory to fingerprint (built in memory); reads every weight."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not isinstance(tensor, torch.Tensor):
            continue
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tokenizer_sha256(tokenizer) -> Optional[str]:
    """sha256 of a tokenizer's full serialisation (fast tokenizers) or of its vocabulary and
    special tokens; None without a tokenizer."""
    if tokenizer is None:
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        text = json.dumps({"vocab": tokenizer.get_vocab(), "special": tokenizer.special_tokens_map}, sort_keys=True,
                          default=str)
    extra = json.dumps({"class": type(tokenizer).__name__, "bos": getattr(tokenizer, "bos_token_id", None),
                        "eos": getattr(tokenizer, "eos_token_id", None),
                        "add_bos": getattr(tokenizer, "add_bos_token", None)}, sort_keys=True, default=str)
    return hashlib.sha256((text + extra).encode()).hexdigest()


def model_fingerprint(model) -> dict[str, Any]:
    """What identifies a model's results: :func:`model_identity` (source, checkpoint fingerprint,
    variant, attention type, dtype, quantisation), the tokenizer's hash and whether it prepends
    BOS; for a model with no checkpoint fingerprint (built in memory) also the hash of its weights."""
    identity = dict(model_identity(model))
    if identity.get("fingerprint") is None:
        identity["weights_sha256"] = weights_sha256(model)
    identity["tokenizer_sha256"] = tokenizer_sha256(getattr(model, "tokenizer", None))
    identity["prepend_bos"] = getattr(model.cfg, "default_prepend_bos", None)
    return identity


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


_ABSENT = "(absent)"


def fingerprint_differences(recorded: Mapping[str, Any], asked: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(field, recorded value, asked value)`` for every (dotted) field that differs."""
    old, new = _flatten(canonical(dict(recorded))), _flatten(canonical(dict(asked)))
    return [(key, old.get(key, _ABSENT), new.get(key, _ABSENT)) for key in sorted(old.keys() | new.keys())
            if old.get(key, _ABSENT) != new.get(key, _ABSENT)]


def _show(value: Any) -> str:
    text = value if value == _ABSENT else json.dumps(value, sort_keys=True)
    return text if len(text) <= 200 else text[:197] + "..."


@dataclass
class _Session:
    """State shared by a RunStore and its bound views within one process."""

    wiped: bool = False
    bound: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class RunStore:
    """One run's directory; parts written as units finish.

    ``overwrite=True``: the directory is deleted at the first :meth:`bind` (of this object or its
    views) and the run starts afresh. ``scope``: set on the views :meth:`bind` returns.
    """

    root: Path
    experiment: str
    run_id: str
    overwrite: bool = False
    scope: Optional[str] = None
    _session: _Session = field(default_factory=_Session, repr=False, compare=False)

    @property
    def directory(self) -> Path:
        return Path(self.root) / self.experiment / self.run_id

    @property
    def parts(self) -> Path:
        return self.directory / "parts"

    # -- fingerprints ------------------------------------------------------------------------
    @property
    def fingerprint_path(self) -> Path:
        return self.directory / FINGERPRINT_FILE

    def recorded(self) -> dict[str, dict[str, Any]]:
        """The scopes recorded in the directory's ``fingerprint.json`` (empty when none)."""
        if not self.fingerprint_path.is_file():
            return {}
        return json.loads(self.fingerprint_path.read_text()).get("scopes", {})

    def bind(self, scope: str, fields: Mapping[str, Any], *, device=None) -> "RunStore":
        """Record ``fields`` as the fingerprint of ``scope``, or check them against the recorded
        one; a view of this store whose parts carry (and must carry) their hash.

        Raises :class:`RunMismatchError` before anything is written when ``scope`` was recorded
        with other values (every differing field is named with both values). With
        ``overwrite=True`` the directory is first deleted (once per store object). Under
        ``torchrun``, rank 0 reads and writes and every rank gets its verdict. ``device``: where
        the model computes (for creating the process group, as :func:`~drope_lens.engine.sweep.plan_sweep`).
        """
        fields = canonical(dict(fields))
        fields.setdefault("schema_version", RESULT_SCHEMA_VERSION)
        if distributed.world().size > 1:
            distributed.init_from_env(device)
        error = self._record(scope, fields) if distributed.is_main() else None
        error = distributed.broadcast(error)
        if error:
            raise RunMismatchError(error)
        self._session.bound[scope] = fields
        return dataclasses.replace(self, scope=scope)

    def _record(self, scope: str, fields: dict[str, Any]) -> Optional[str]:
        if self.overwrite and not self._session.wiped:
            if self.directory.exists():
                shutil.rmtree(self.directory)
            self._session.wiped = True
        recorded = self.recorded()
        if scope in recorded:
            differences = fingerprint_differences(recorded[scope], fields)
            if not differences:
                return None
            lines = "\n".join(f"  {key}: {_show(old)} in the directory, {_show(new)} asked" for key, old, new in differences)
            return (f"{self.directory}: this run directory holds results of another configuration "
                    f"(scope {scope!r}); refusing to mix them. Differences:\n{lines}\n"
                    "Pass overwrite=True (on the command line: --overwrite) to delete it and start afresh, "
                    "or choose another run id.")
        recorded[scope] = fields
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = {"experiment": self.experiment, "run_id": self.run_id, "schema_version": RESULT_SCHEMA_VERSION,
                   "scopes": recorded}
        tmp = self.fingerprint_path.with_name(f".{FINGERPRINT_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
        tmp.replace(self.fingerprint_path)
        return None

    @property
    def fingerprint(self) -> Optional[str]:
        """The hash every part of this view carries (None: an unbound store, whose parts carry none)."""
        if self.scope is None:
            return None
        return fingerprint_hash(self._session.bound[self.scope])

    def session_fingerprint(self) -> dict[str, Any]:
        """The scopes bound in this process, as ``meta.json`` records them, and their hash."""
        scopes = dict(self._session.bound)
        return {"schema_version": RESULT_SCHEMA_VERSION, "hash": fingerprint_hash(scopes), "scopes": scopes}

    def _matches(self, path: Path) -> bool:
        if not path.is_file():
            return False
        return _stored_hash(path) == self.fingerprint

    def _read(self, path: Path) -> pd.DataFrame:
        stored = _stored_hash(path)
        if stored != self.fingerprint:
            raise RunMismatchError(f"{path}: written under fingerprint {stored}, not this run's {self.fingerprint}; "
                                   "it is not read (delete it, or rerun: has() reports it missing).")
        return pd.read_parquet(path)

    # -- parts: one per finished unit ---------------------------------------------------------
    def part_path(self, unit: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in unit)
        return self.parts / f"{safe}.parquet"

    def has(self, unit: str) -> bool:
        """Whether ``unit``'s part exists AND was written under this view's fingerprint."""
        return self._matches(self.part_path(unit))

    def save_part(self, unit: str, frame: pd.DataFrame) -> None:
        _write_atomic(frame, self.part_path(unit), self.fingerprint)

    def load_part(self, unit: str) -> pd.DataFrame:
        return self._read(self.part_path(unit))

    # -- batch checkpoints: rows of one planned batch, kept until their units are written ----
    @property
    def batches(self) -> Path:
        return self.directory / "batches"

    def batch_path(self, key: str) -> Path:
        return self.batches / self.part_path(key).name

    def has_batch(self, key: str) -> bool:
        return self._matches(self.batch_path(key))

    def save_batch(self, key: str, frame: pd.DataFrame) -> None:
        _write_atomic(frame, self.batch_path(key), self.fingerprint)

    def load_batch(self, key: str) -> pd.DataFrame:
        return self._read(self.batch_path(key))

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
            _write_atomic(frame, target, self.fingerprint)
        return target

    def finalize(self, frame: pd.DataFrame, meta: dict[str, Any]) -> Path:
        """Write ``data.parquet`` (``frame``: the whole run's rows) and ``meta.json``.

        ``meta.json`` gets ``fingerprint``: the scopes bound in this process (see :meth:`bind`)
        and their hash, which ``data.parquet`` carries too (:func:`load_run` checks that they agree).
        Under ``torchrun`` every rank calls this with the same gathered ``frame``: all ranks meet
        at a barrier (every part is on disk), rank 0 writes both files, and all ranks meet again
        so that the files exist on return everywhere. ``meta.json`` records ``world_size``.
        """
        distributed.barrier()
        if distributed.is_main():
            self.directory.mkdir(parents=True, exist_ok=True)
            fingerprint = self.session_fingerprint() if self._session.bound else None
            (self.directory / "meta.json").unlink(missing_ok=True)  # never a meta.json of other data
            _write_atomic(frame, self.directory / "data.parquet", fingerprint["hash"] if fingerprint else None)
            full = {
                "experiment": self.experiment,
                "run_id": self.run_id,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "packages": package_versions(),
                "git_commit": git_commit(),
                "python": platform.python_version(),
                "cpu_float32_products": cpu_matmul.library(),
                "world_size": distributed.world().size,
                **meta,
            }
            if fingerprint:
                full["fingerprint"] = fingerprint
            tmp = self.directory / f".meta.json.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(full, indent=2, default=str))
            tmp.replace(self.directory / "meta.json")
        distributed.barrier()
        return self.directory


def _stored_hash(path: Path) -> Optional[str]:
    """The fingerprint hash a parquet file carries (None: none; ``"unreadable"`` for a broken file)."""
    import pyarrow.parquet as pq

    try:
        metadata_ = pq.read_schema(path).metadata or {}
    except Exception:  # a truncated or foreign file: never matches
        return "unreadable"
    value = metadata_.get(FINGERPRINT_KEY)
    return value.decode() if value is not None else None


def _write_atomic(frame: pd.DataFrame, target: Path, fingerprint: Optional[str] = None) -> None:
    """Write ``target`` through a temporary file of this rank and process, then rename: a crash
    never leaves a half-written file, and two ranks writing the same file never share a temporary.
    ``fingerprint``: stored in the parquet schema metadata (see :data:`FINGERPRINT_KEY`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{distributed.world().rank}-{os.getpid()}.tmp")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if fingerprint is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), FINGERPRINT_KEY: fingerprint.encode()})
    pq.write_table(table, tmp)
    tmp.replace(target)


def load_run(directory: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``(data, meta)`` of a finished run directory."""
    directory = Path(directory)
    data = directory / "data.parquet"
    meta = directory / "meta.json"
    if not data.is_file() or not meta.is_file():
        raise FileNotFoundError(f"{directory}: not a finished run (needs data.parquet and meta.json).")
    frame, described = pd.read_parquet(data), json.loads(meta.read_text())
    recorded = (described.get("fingerprint") or {}).get("hash")
    stored = _stored_hash(data)
    if recorded != stored:
        raise RunMismatchError(f"{directory}: meta.json describes fingerprint {recorded} but data.parquet holds "
                               f"{stored}; the run was not finished by one process (rerun it with --overwrite).")
    return frame, described
