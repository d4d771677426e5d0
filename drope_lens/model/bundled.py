"""Checkpoints shipped inside the package: the toy RoPE/DroPE pair trained by ``drope-lens train-toy``.

A bundled checkpoint is named ``bundled:<pair>/<variant>`` (``bundled:toy/rope``,
``bundled:toy/drope``); :func:`drope_lens.load_model` and the registry accept that name. Every
shipped file's SHA-256 is recorded in ``data/<pair>/SHA256SUMS`` and checked by :func:`verify`.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

PREFIX = "bundled:"


def root(pair: str = "toy") -> Path:
    """The folder that holds a bundled pair (``rope/``, ``drope/``, ``SHA256SUMS``, reports)."""
    path = Path(str(resources.files("drope_lens").joinpath("data").joinpath(pair)))  # one name per call: Python 3.10
    if not (path / "SHA256SUMS").is_file():
        raise FileNotFoundError(f"no bundled pair {pair!r} in this installation ({path}).")
    return path


def resolve(name: str) -> Path:
    """The directory of ``bundled:<pair>/<variant>``."""
    if not name.startswith(PREFIX):
        raise ValueError(f"{name!r} is not a bundled checkpoint name (they start with {PREFIX!r}).")
    pair, _, variant = name[len(PREFIX):].partition("/")
    if variant not in ("rope", "drope"):
        raise ValueError(f"{name!r}: expected {PREFIX}<pair>/rope or {PREFIX}<pair>/drope.")
    return root(pair) / variant


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recorded_hashes(pair: str = "toy") -> dict[str, str]:
    """``{relative path: sha256}`` from ``SHA256SUMS`` (``sha256sum`` format)."""
    out = {}
    for line in (root(pair) / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            out[name.lstrip("*")] = digest
    return out


def verify(pair: str = "toy") -> None:
    """Raise ``ValueError`` naming every shipped file that is missing or differs from its hash."""
    base = root(pair)
    bad = []
    for name, digest in recorded_hashes(pair).items():
        path = base / name
        if not path.is_file():
            bad.append(f"{name} (missing)")
        elif sha256(path) != digest:
            bad.append(f"{name} (SHA-256 differs)")
    if bad:
        raise ValueError(f"bundled pair {pair!r} in {base} is damaged: {', '.join(bad)}. Reinstall drope_lens.")


def write_hashes(pair_dir: Path) -> Path:
    """Record the SHA-256 of every file under ``pair_dir`` (except ``SHA256SUMS``) beside them."""
    pair_dir = Path(pair_dir)
    files = sorted(p for p in pair_dir.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    lines = [f"{sha256(p)}  {p.relative_to(pair_dir).as_posix()}" for p in files]
    (pair_dir / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return pair_dir / "SHA256SUMS"
