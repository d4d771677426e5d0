"""Stream tensors out of safetensors files one at a time, without memory-mapping whole shards.

``safetensors.safe_open`` memory-maps a shard; every page it touches then counts towards the
process's resident memory until the file is closed, so loading a 10 GB shard onto the CPU costs
the model *plus* the shard. Reading each tensor with ``readinto`` into its own buffer keeps the
peak at the model plus one tensor. The format is simple (8-byte little-endian header length, a
JSON header of ``name -> {dtype, shape, data_offsets}``, then the raw bytes) and is validated here
as strictly as the reference implementation does.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from .checkpoint import CheckpointError

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in a safetensors file."""

    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


def read_header(file: Path) -> dict[str, TensorEntry]:
    """Parse and validate the header of one safetensors file."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{file}: too short to be a safetensors file.")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > size - 8 or header_len > 100_000_000:
            raise CheckpointError(f"{file}: corrupt safetensors header (length {header_len}).")
        try:
            header = json.loads(handle.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{file}: corrupt safetensors header ({exc}).") from exc
    base = 8 + header_len
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise CheckpointError(f"{file}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}.")
        shape = tuple(int(s) for s in info["shape"])
        begin, end = (int(x) for x in info["data_offsets"])
        numel = 1
        for s in shape:
            numel *= s
        itemsize = torch.empty((), dtype=dtype).element_size()
        if end - begin != numel * itemsize or begin < 0 or base + end > size:
            raise CheckpointError(
                f"{file}: tensor {name!r} (shape {list(shape)}, {info.get('dtype')}) has byte range "
                f"[{begin}, {end}) inconsistent with its shape or the file size."
            )
        entries[name] = TensorEntry(name, file, dtype, shape, base + begin, end - begin)
    return entries


def read_tensor(entry: TensorEntry) -> torch.Tensor:
    """Read one tensor into a fresh CPU buffer (no memory map)."""
    buffer = torch.empty(entry.nbytes, dtype=torch.uint8)
    with open(entry.file, "rb", buffering=0) as handle:
        handle.seek(entry.start)
        view = memoryview(buffer.numpy())
        done = 0
        while done < entry.nbytes:
            got = handle.readinto(view[done:])
            if not got:
                raise CheckpointError(f"{entry.file}: unexpected end of file reading {entry.name!r}.")
            done += got
    if entry.dtype == torch.bool:
        return buffer.view(torch.bool).reshape(entry.shape)
    return buffer.view(entry.dtype).reshape(entry.shape)


def index_checkpoint(directory: Path) -> dict[str, TensorEntry]:
    """All tensors of a checkpoint directory: one ``*.safetensors`` file or an indexed set of shards.

    Refuses pickle-based ``.bin``/``.pt`` weights: unpickling can execute arbitrary code.
    """
    index_file = directory / "model.safetensors.index.json"
    files: list[Path]
    if index_file.is_file():
        try:
            weight_map = json.loads(index_file.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index_file}: not a valid safetensors index ({exc}).") from exc
        files = sorted({directory / f for f in weight_map.values()})
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index_file} names shard(s) that are missing: {missing}.")
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if pickles:
            raise CheckpointError(
                f"{directory}: only pickle-format weights found ({pickles}). drope_lens refuses to "
                "unpickle checkpoints (it can execute arbitrary code). Convert them once to "
                "safetensors, e.g. `LlamaForCausalLM.from_pretrained(dir).save_pretrained(dir, "
                "safe_serialization=True)` in a trusted environment."
            )
        raise CheckpointError(f"{directory}: no *.safetensors weight files.")
    entries: dict[str, TensorEntry] = {}
    for file in files:
        for name, entry in read_header(file).items():
            if name in entries:
                raise CheckpointError(f"{directory}: tensor {name!r} appears in two shards.")
            entries[name] = entry
    return entries


def iter_tensors(entries: dict[str, TensorEntry]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` in file order, reading one tensor at a time."""
    for entry in sorted(entries.values(), key=lambda e: (str(e.file), e.start)):
        yield entry.name, read_tensor(entry)


def read_tensors_prefetched(
    entries: list[TensorEntry], workers: int = 4, lookahead: int = 4
) -> Iterator[tuple[TensorEntry, torch.Tensor]]:
    """Yield ``(entry, tensor)`` in the given order while up to ``lookahead`` later tensors are
    being read by ``workers`` threads (file reads release the GIL), so reading overlaps whatever
    the caller does with each tensor (a host-to-device copy, quantisation). At most
    ``lookahead + 1`` tensors are held beyond those the caller keeps."""
    from concurrent.futures import ThreadPoolExecutor

    if workers < 1 or lookahead < 1:
        yield from ((entry, read_tensor(entry)) for entry in entries)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="drope_lens-read") as pool:
        pending = [pool.submit(read_tensor, entry) for entry in entries[:lookahead]]
        for i, entry in enumerate(entries):
            tensor = pending[i].result()
            pending[i] = None  # drop the future's reference to the tensor
            if i + lookahead < len(entries):
                pending.append(pool.submit(read_tensor, entries[i + lookahead]))
            yield entry, tensor

