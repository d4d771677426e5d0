"""Ways to get the spectra of one Exp 4 forward's Gram matrices on a GPU, timed and checked.

    python -m drope_lens.benchmarks.spectrum_bench --out spectrum_bench.json

One forward of Exp 4 (10 texts x 512 tokens, 32 layers, d_model 4096) has 320 Gram matrices
``X X^T`` of 512 x 512 (float64). Inputs here: bf16 rows with a massive position-0 row, as hidden
states have. Methods (each: median seconds of CUDA-event timings over ``--repeat`` runs after a
warm-up; largest |entropy - float64 LAPACK entropy| over all matrices, both normalisations):

* ``eigvalsh_cuda``: ``torch.linalg.eigvalsh`` on the batch (cuSOLVER, one matrix at a time);
* ``eigvalsh_magma``: the same with ``torch.backends.cuda.preferred_linalg_library("magma")``;
* ``two_stage`` (first; the default on CUDA for n <= 1,024): dense -> band -> tridiagonal,
  :mod:`drope_lens.measurement.spectrum_two_stage`, and each stage alone;
  ``--two-stage BAND,WARPS[,PREFETCH[,SYMMETRIC[,PANELS[,CARRY]]]]`` adds settings; ``--only-two-stage``
  times nothing else;
* ``householder_persistent`` (the default on CUDA for n <= 1,024 until session 30): one kernel launch per batch,
  :mod:`drope_lens.measurement.spectrum_persistent`, also its tridiagonalisation alone;
  ``--quick`` times only two_stage, it, ``householder_blocked`` (LAPACK's panels, in a CUDA graph),
  ``cusolver_batched`` and ``householder_fused``;
* ``householder``: :func:`drope_lens.measurement.spectrum.symmetric_eigenvalues` (batched tridiagonalisation
  + Triton bisection), also split into its two stages; ``householder_fused``: the same with
  :func:`~drope_lens.measurement.spectrum.tridiagonalize_fused` (one pass per column); each with
  the tridiagonalisation replayed as one CUDA graph (the default, ``spectrum.GRAPH``) and
  launched eagerly (``... eager``);
* ``cpu_lapack_threads``: the Gram matrices copied to the host and ``eigvalsh`` per matrix in a
  pool of one thread per core;
* ``eigvalsh_float32``: cuSOLVER in float32 (cheaper, and the entropy error shows why it is not used);
* ``cusolver_batched`` (also under ``--quick``): one ``cusolverDnXsyevBatched`` call for the whole
  batch, eigenvalues only (:mod:`drope_lens.measurement.spectrum_cusolver`), which PyTorch does not
  reach above n = 32; its error is recorded when this cuSOLVER lacks the routine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from . import timing


def add_spectrum_method_argument(parser: argparse.ArgumentParser) -> None:
    """``--spectrum-method``: what the Exp 4 spectra use on CUDA in a benchmark that measures them
    inside experiments (default: :mod:`drope_lens.measurement.spectrum`'s own choice)."""
    from drope_lens.measurement.spectrum import METHODS

    parser.add_argument("--spectrum-method", default=None, choices=[m for m in METHODS if m != "auto"],
                        help="the Exp 4 spectra's method on CUDA (default: drope_lens.measurement.spectrum's own choice)")
    parser.add_argument("--two-stage-settings", default=None, metavar="BAND,WARPS[,PREFETCH[,SYMMETRIC[,PANELS[,CARRY]]]]",
                        help="the two-stage spectra's band, bulge-chasing warps, prefetch, whole diagonal blocks, "
                             "panels per trailing update and carried pivot column")


def use_spectrum_method(args: argparse.Namespace) -> None:
    """Apply ``--spectrum-method`` (:data:`drope_lens.measurement.spectrum.AUTO_CUDA_METHOD`) and
    ``--two-stage-settings``, for the rest of the run."""
    if args.spectrum_method is not None:
        from drope_lens.measurement import spectrum

        spectrum.AUTO_CUDA_METHOD = args.spectrum_method
    if getattr(args, "two_stage_settings", None):
        set_attributes(two_stage_setting(args.two_stage_settings))


#: what ``BAND,WARPS,PREFETCH,SYMMETRIC,PANELS,CARRY`` set, in order (module spectrum_two_stage's constants)
TWO_STAGE_FIELDS = ("BAND", "CHASE_WARPS", "CHASE_PREFETCH", "CHASE_SYMMETRIC_LOAD", "PANELS_PER_UPDATE",
                    "CHASE_CARRY_PIVOT")
_TWO_STAGE_FLAGS = ("CHASE_PREFETCH", "CHASE_SYMMETRIC_LOAD", "CHASE_CARRY_PIVOT")


def two_stage_setting(settings: str) -> dict[str, object]:
    """:mod:`drope_lens.measurement.spectrum_two_stage`'s band, bulge-chasing warps, prefetch (1/0),
    whole diagonal blocks (1/0), stage 1's panels per trailing update and the chase's carried pivot
    column (1/0) from ``"BAND,WARPS[,PREFETCH[,SYMMETRIC[,PANELS[,CARRY]]]]"``, as a setting for
    :func:`set_attributes` / :func:`applied` (fields left out are not set)."""
    values = [int(x) for x in settings.split(",")] if settings else []
    return {f"spectrum_two_stage.{name}": bool(value) if name in _TWO_STAGE_FLAGS else value
            for name, value in zip(TWO_STAGE_FIELDS, values)}


def parse_setting(setting: str) -> dict[str, object]:
    """``"entropy.GRAM_TILE=64;spectrum_two_stage.PANELS_PER_UPDATE=2"`` -> ``{attribute path under
    drope_lens.measurement, or a full path from drope_lens. on: value}`` ("default": no change)."""
    import ast

    out: dict[str, object] = {}
    for part in filter(None, setting.split(";")):
        if part == "default":
            continue
        name, _, value = part.partition("=")
        if not _ or "." not in name:
            raise ValueError(f"{part!r}: expected MODULE.ATTRIBUTE=VALUE (module under drope_lens.measurement, "
                             "or drope_lens.PACKAGE.MODULE).")
        out[name] = ast.literal_eval(value)
    return out


def set_attributes(setting: dict[str, object]) -> list[tuple[object, str, object]]:
    """Set the module attributes of a setting (``{"module.ATTRIBUTE": value}``, modules under
    drope_lens.measurement); returns ``(module, attribute, value before)`` for each."""
    import importlib

    before = []
    try:
        for name, value in setting.items():
            module_name, attribute = name.rsplit(".", 1)
            if not module_name.startswith("drope_lens."):
                module_name = f"drope_lens.measurement.{module_name}"
            module = importlib.import_module(module_name)
            if not hasattr(module, attribute):
                raise AttributeError(f"{module_name} has no {attribute}")
            before.append((module, attribute, getattr(module, attribute)))
            setattr(module, attribute, value)
    except Exception:
        _restore(before)
        raise
    return before


def _restore(before: list[tuple[object, str, object]]) -> None:
    for module, attribute, value in reversed(before):
        setattr(module, attribute, value)


@contextlib.contextmanager
def applied(setting: dict[str, object]):
    """:func:`set_attributes` for the block, then the values before restored."""
    before = set_attributes(setting)
    try:
        yield
    finally:
        _restore(before)


def cuda_median(fn, repeat: int) -> tuple[float, object]:
    """:func:`drope_lens.benchmarks.timing.cuda_median` after one warm-up call (kernel compilation, handles)."""
    fn()
    return timing.cuda_median(fn, repeat)


def grams(n_matrices: int, pos: int, width: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(n_matrices, pos, width, device="cuda", generator=g)
    x = x * torch.logspace(0, -3, pos, device="cuda")[None, :, None]  # a decaying spectrum
    x[:, 0] *= 300.0  # massive position-0 row
    x = x.bfloat16().double()
    return x @ x.mT


def main() -> None:
    from drope_lens.measurement import spectrum
    from drope_lens.measurement.entropy import entropies_from_gram, entropies_from_spectrum

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("spectrum_bench.json"))
    parser.add_argument("--matrices", type=int, default=320)
    parser.add_argument("--pos", type=int, default=512)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--update-tiles", nargs="*", metavar="ROWS,COLUMNS,WARPS",
                        help="also time householder_fused with these tiles of its update kernel")
    parser.add_argument("--persistent-tiles", nargs="*", metavar="ELEMENTS,WARPS[,STAGES]",
                        help="also time householder_persistent with strips of ELEMENTS, WARPS warps and "
                             "STAGES software-pipelining stages of its strip loop")
    parser.add_argument("--blocked-panels", nargs="*", type=int, metavar="COLUMNS",
                        help="also time householder_blocked with these panel widths")
    parser.add_argument("--two-stage", nargs="*", metavar="BAND,CHASE_WARPS[,PREFETCH[,SYMMETRIC[,PANELS[,CARRY]]]]", default=[],
                        help="also time two_stage with these band half-widths, bulge-chasing warps, "
                             "prefetch (1) or not (0), diagonal blocks read whole (1) or as a lower triangle (0), "
                             "stage 1's panels per trailing update and the chase's carried pivot column (1) or not (0)")
    parser.add_argument("--settings", nargs="*", metavar="SETTING", default=[],
                        help="also time two_stage and its stages under these module settings, e.g. "
                             "'spectrum.FAST_RECIPROCAL=False' (see parse_setting)")
    parser.add_argument("--only-two-stage", action="store_true", help="time two_stage's settings only")
    parser.add_argument("--quick", action="store_true",
                        help="only two_stage (the default), householder_persistent, householder_blocked, cusolver_batched and householder_fused")
    parser.add_argument("--skip-slow", action="store_true",
                        help="only householder and cuSOLVER eigvalsh (no MAGMA, host threads or float32)")
    args = parser.parse_args()

    a = grams(args.matrices, args.pos, args.width)
    want = entropies_from_gram(a.cpu(), args.pos, args.width)  # LAPACK float64 on the host
    rows = []

    def save() -> None:
        args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                        "matrices": args.matrices, "pos": args.pos, "width": args.width,
                                        "rows": rows}, indent=2))

    def record(name, seconds, eig=None, note=""):
        row = {"method": name, "seconds": seconds, "per_matrix_ms": seconds / args.matrices * 1e3, "note": note}
        if eig is not None:
            got = entropies_from_spectrum(eig, args.pos, args.width)
            row["max_entropy_error"] = max(float((g.cpu().double() - w).abs().max()) for g, w in zip(got, want))
        rows.append(row)
        err = f", max |entropy error| {row['max_entropy_error']:.1e}" if "max_entropy_error" in row else ""
        print(f"{name:>22}: {seconds * 1e3:9.1f} ms for {args.matrices} matrices ({row['per_matrix_ms']:.3f} ms each)"
              f"{err} {note}", flush=True)

    from drope_lens.measurement import spectrum_two_stage as two_stage

    def stages_under(setting: dict, name: str, tag: str | None = None) -> None:
        """:func:`two_stage_stages` under one setting (restored after); its rows get ``tag`` as their
        ``setting``; a failure is recorded as an error row ``name``, and the other settings go on."""
        first = len(rows)
        try:
            with applied(setting):
                two_stage_stages()
        except Exception as error:  # noqa: BLE001 - one failing setting must not hide the others
            import traceback

            traceback.print_exc()
            rows.append({"method": name, "error": repr(error)})
        if tag is not None:
            for row in rows[first:]:
                row["setting"] = tag
        save()

    def two_stage_stages() -> None:
        """two_stage and its stages alone, with the module's current settings."""
        tag = "two_stage " + ",".join(str(int(getattr(two_stage, name))) for name in TWO_STAGE_FIELDS)
        t, eig = cuda_median(lambda: spectrum.symmetric_eigenvalues(a, method="two_stage"), args.repeat)
        record(tag, t, eig)
        work = a.clone()
        t, _ = cuda_median(lambda: two_stage.reduce_to_band(work.copy_(a), two_stage.BAND), args.repeat)
        record("  dense -> band (copy included)", t)
        banded = work.clone()
        t, (d, e) = cuda_median(lambda: two_stage.band_to_tridiagonal(work.copy_(banded), two_stage.BAND),
                                args.repeat)
        record("  band -> tridiagonal (copy included)", t)
        t, _ = cuda_median(lambda: spectrum.tridiagonal_eigenvalues(d, e), args.repeat)
        record("  bisection", t)

    for settings in [""] + list(args.two_stage):
        stages_under(two_stage_setting(settings), f"two_stage {settings}")
    for setting in args.settings:
        print(f"with {setting}:", flush=True)
        stages_under(parse_setting(setting), f"two_stage with {setting}", setting)
    if args.only_two_stage:
        return
    from drope_lens.measurement.spectrum_persistent import tridiagonalize_persistent

    t, eig = cuda_median(lambda: spectrum.symmetric_eigenvalues(a, method="householder_persistent"), args.repeat)
    record("householder_persistent", t, eig)
    t, _ = cuda_median(lambda: tridiagonalize_persistent(a), args.repeat)
    record("  its tridiagonalisation", t)
    from drope_lens.measurement import spectrum_persistent

    default = (spectrum_persistent.STRIP_ELEMENTS, spectrum_persistent.WARPS, spectrum_persistent.STAGES)
    for tiles in args.persistent_tiles or []:  # the row strip held in registers, the warps per program
        values = [int(x) for x in tiles.split(",")]
        spectrum_persistent.STRIP_ELEMENTS, spectrum_persistent.WARPS, spectrum_persistent.STAGES = (
            values + [default[2]])[:3]
        t, eig = cuda_median(lambda: spectrum.symmetric_eigenvalues(a, method="householder_persistent"), args.repeat)
        record(f"householder_persistent {tiles}", t, eig)
    spectrum_persistent.STRIP_ELEMENTS, spectrum_persistent.WARPS, spectrum_persistent.STAGES = default
    from drope_lens.measurement import spectrum_blocked

    panel = spectrum_blocked.BLOCK
    for columns in [panel] + [c for c in args.blocked_panels or [] if c != panel]:
        spectrum_blocked.BLOCK = columns
        spectrum._GRAPHS.clear()  # a graph holds the panel width it was captured with
        t, eig = cuda_median(lambda: spectrum.symmetric_eigenvalues(a, method="householder_blocked"), args.repeat)
        record(f"householder_blocked {columns}", t, eig)
    spectrum_blocked.BLOCK = panel
    spectrum._GRAPHS.clear()
    try:
        t, eig = cuda_median(lambda: spectrum.symmetric_eigenvalues(a, method="cusolver_batched"), args.repeat)
        record("cusolver_batched", t, eig)
    except Exception as error:  # noqa: BLE001 - a cuSOLVER without cusolverDnXsyevBatched, or a failed call
        rows.append({"method": "cusolver_batched", "error": repr(error)})
        print(f"cusolver_batched: {error!r}", flush=True)
    if args.quick:
        t, eig = cuda_median(lambda: spectrum.symmetric_eigenvalues(a, method="householder_fused"), args.repeat)
        record("householder_fused", t, eig)
        save()
        return
    for graph in (True, False):  # the tridiagonalisation replayed as one CUDA graph, or launched eagerly
        spectrum.GRAPH = graph
        tag = "" if graph else " eager"
        t, eig = cuda_median(lambda: spectrum.symmetric_eigenvalues(a, method="householder"), args.repeat)
        record(f"householder{tag}", t, eig)
        t, eig = cuda_median(lambda: spectrum.symmetric_eigenvalues(a, method="householder_fused"), args.repeat)
        record(f"householder_fused{tag}", t, eig)
    spectrum.GRAPH = True
    default = (spectrum.UPDATE_ROWS, spectrum.UPDATE_COLUMNS, spectrum.UPDATE_WARPS)
    for tiles in args.update_tiles or []:  # the fused update kernel's tile (rows, columns, warps)
        spectrum.UPDATE_ROWS, spectrum.UPDATE_COLUMNS, spectrum.UPDATE_WARPS = map(int, tiles.split(","))
        spectrum._GRAPHS.clear()  # a graph holds the kernel it was captured with
        t, eig = cuda_median(lambda: spectrum.symmetric_eigenvalues(a, method="householder_fused"), args.repeat)
        record(f"householder_fused {tiles}", t, eig)
    spectrum.UPDATE_ROWS, spectrum.UPDATE_COLUMNS, spectrum.UPDATE_WARPS = default
    spectrum._GRAPHS.clear()
    t, (d, e) = cuda_median(lambda: spectrum.tridiagonalize(a), args.repeat)
    record("  tridiagonalize eager", t)
    t, _ = cuda_median(lambda: spectrum.tridiagonal_eigenvalues(d, e), args.repeat)
    record("  bisection (Triton)", t)
    t, eig = cuda_median(lambda: torch.linalg.eigvalsh(a), 1)
    record("eigvalsh_cuda", t, eig)
    if args.skip_slow:
        save()
        return
    try:
        torch.backends.cuda.preferred_linalg_library("magma")
        t, eig = cuda_median(lambda: torch.linalg.eigvalsh(a), 1)
        record("eigvalsh_magma", t, eig)
    except Exception as error:  # noqa: BLE001 - a build without MAGMA
        rows.append({"method": "eigvalsh_magma", "error": repr(error)})
        print(f"eigvalsh_magma: {error!r}")
    finally:
        torch.backends.cuda.preferred_linalg_library("default")
    threads = os.cpu_count() or 1

    def cpu_pool():
        host = a.cpu()
        with ThreadPoolExecutor(threads) as pool:
            return torch.stack(list(pool.map(torch.linalg.eigvalsh, host)))

    torch.set_num_threads(1)
    begin = time.perf_counter()
    eig = cpu_pool()
    record("cpu_lapack_threads", time.perf_counter() - begin, eig, f"({threads} threads, wall time)")
    t, eig = cuda_median(lambda: torch.linalg.eigvalsh(a.float()), 1)
    record("eigvalsh_float32", t, eig)
    save()


if __name__ == "__main__":
    main()
