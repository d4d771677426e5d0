"""GPU evidence for streaming attention statistics on a Llama-2-7B-shaped random bf16 DroPE model.

    python -m drope_lens.benchmarks.attention_stats_bench --workdir /tmp/bench --out attn_stats.json

1. Long context: one sequence of 4k, 8k, 16k and 32k tokens. The bare forward
   (``model(tokens, return_type=None)``) against the same forward with all five statistics of every
   layer and head (:func:`drope_lens.hooks.capture_attention_stats` with ``received=True``: sink
   score, entropy, local masses, distance profile, attention received): CUDA-event medians and peak
   GPU memory, the ratios printed. At 4k the Triton path is also compared with the chunked PyTorch
   path (max |difference| per statistic, all layers) and with statistics from ``hook_pattern``.
2. Study size: Exp 4 + 5 + 7 + 8-9 together (one :func:`drope_lens.engine.measure.measure`
   call, 10 texts x 512 tokens, one batch) against bare forwards over the same token rows.
   ``--profile`` adds a ``torch.profiler`` table and timeline of one call; ``--phases`` the host's
   and the GPU's position at each phase of a call without a profiler (:func:`phase_timeline`).
   ``--compare SETTING ...`` times the same call under several module settings, interleaved round
   by round with the bare forward (:func:`compare_settings`).

Random weights: speed and memory do not depend on the values (DESIGN.md).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import statistics
import time
from pathlib import Path

import torch

from .random_checkpoint import write_random_checkpoint, write_tokenizer
from .timing import event_seconds
from .spectrum_bench import add_spectrum_method_argument, applied, parse_setting, use_spectrum_method

FIELDS = ("sink_score", "entropy", "local_mass", "local_mass_no_bos", "distance", "received")


def call_seconds(fn) -> tuple[float, object]:
    """Seconds of one ``fn()`` call (CUDA events; without CUDA, for a smoke run, wall time) and its result."""
    if torch.cuda.is_available():
        return event_seconds(fn)
    begin = time.perf_counter()
    result = fn()
    return time.perf_counter() - begin, result


def cuda_time(fn, repeat: int = 3) -> tuple[float, float, object]:
    """Median seconds over ``repeat`` runs (:func:`call_seconds`, after one warm-up) and peak GiB
    allocated during them (0 without CUDA); also the last result."""
    result = fn()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeat):
        seconds, result = call_seconds(fn)
        times.append(seconds)
    return statistics.median(times), (torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0), result


def long_context(model, lengths, repeat: int) -> list[dict]:
    from drope_lens.hooks import capture_attention_stats

    rows = []
    generator = torch.Generator().manual_seed(0)
    for length in lengths:
        tokens = torch.randint(3, model.cfg.d_vocab, (1, length), generator=generator)
        tokens[0, 0] = 1
        tokens = tokens.to(model.cfg.device)

        def bare():
            with torch.inference_mode():
                return model(tokens, return_type=None)

        def with_stats():
            store: dict = {}
            with torch.inference_mode():
                model.run_with_hooks(tokens, return_type=None,
                                     fwd_hooks=capture_attention_stats(store, model, received=True))
            return store

        _empty_cache()
        bare_s, bare_gib, _ = cuda_time(bare, repeat)
        _empty_cache()
        stats_s, stats_gib, store = cuda_time(with_stats, repeat)
        assert len(store) == model.cfg.n_layers and all(torch.isfinite(s.entropy).all() for s in store.values())
        row = {"tokens": length, "bare_s": bare_s, "stats_s": stats_s, "time_ratio": stats_s / bare_s,
               "bare_peak_gib": bare_gib, "stats_peak_gib": stats_gib, "extra_gib": stats_gib - bare_gib}
        print(f"{length:6d} tokens: bare {bare_s:.3f} s / {bare_gib:.2f} GiB; all statistics {stats_s:.3f} s / "
              f"{stats_gib:.2f} GiB -> {row['time_ratio']:.2f}x time, +{row['extra_gib']:.2f} GiB", flush=True)
        rows.append(row)
    return rows


def sweep(configs: list[str], length: int = 32768, repeat: int = 5, batch: int = 1) -> list[dict]:
    """Time one layer's statistics for ``batch`` sequences of ``length`` tokens, 32 heads of 128,
    bf16, for each kernel configuration ``"block_m,block_n,num_warps,num_stages"``: the row pass alone
    (what the study-size experiments ask for) and with the received pass. The fastest (by the row pass
    up to ``SHORT_QUERIES`` tokens, by both passes above) replaces the setting used at that length
    (:data:`drope_lens.measurement.attention_stats_triton.SHORT_CONFIG` or ``CONFIG``) for the rest of the run."""
    from drope_lens.measurement import attention_stats_triton as triton_stats

    short = length <= triton_stats.SHORT_QUERIES
    attribute = "SHORT_CONFIG" if short else "CONFIG"
    gen = torch.Generator(device="cuda").manual_seed(2)
    q = torch.randn(batch, length, 32, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(batch, length, 32, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    rows = []
    for text in configs:
        setattr(triton_stats, attribute, triton_stats.KernelConfig(*map(int, text.split(","))))
        try:
            row_s, _, _ = cuda_time(lambda: triton_stats.attention_stats(q, k, 128 ** -0.5), repeat)
            all_s, _, _ = cuda_time(lambda: triton_stats.attention_stats(q, k, 128 ** -0.5, received=True), repeat)
        except Exception as error:  # noqa: BLE001 - e.g. out of shared memory: report and go on
            print(f"sweep {text}: {error!r}"[:300], flush=True)
            continue
        rows.append({"config": text, "one_layer_row_pass_s": row_s, "one_layer_s": all_s})
        print(f"sweep {text}: one layer, {batch} x {length} tokens: row pass {row_s * 1e3:.3f} ms, "
              f"all statistics {all_s * 1e3:.3f} ms", flush=True)
    best = min(rows, key=lambda row: row["one_layer_row_pass_s" if short else "one_layer_s"])
    setattr(triton_stats, attribute, triton_stats.KernelConfig(*map(int, best["config"].split(","))))
    print(f"sweep: using {getattr(triton_stats, attribute)} up to {triton_stats.SHORT_QUERIES} queries" if short
          else f"sweep: using {triton_stats.CONFIG} above {triton_stats.SHORT_QUERIES} queries", flush=True)
    return rows


def agreement(model, length: int) -> dict:
    """Max |Triton - chunked PyTorch| and max |Triton - hook_pattern| per statistic over all layers.

    Each comparison is made within one forward (both sets of hooks on the same run), so both see the
    same q and k: a forward with ``hook_pattern`` hooked takes the explicit attention path, whose
    bf16 outputs differ slightly from the fused path's and change every later layer's inputs."""
    from drope_lens.measurement.attention_stats import stats_from_pattern
    from drope_lens.hooks import capture_attention_stats

    tokens = torch.randint(3, model.cfg.d_vocab, (1, length), generator=torch.Generator().manual_seed(1))
    tokens[0, 0] = 1
    tokens = tokens.to(model.cfg.device)
    out = {}
    for other in ("torch", "pattern"):
        triton_store: dict = {}
        other_store: dict = {}
        hooks = capture_attention_stats(triton_store, model, received=True, backend="triton")
        if other == "torch":
            hooks += capture_attention_stats(other_store, model, received=True, backend="torch")
        else:
            hooks += [(f"blocks.{layer}.attn.hook_pattern", lambda x, hook: other_store.__setitem__(
                hook.layer(), stats_from_pattern(x, received=True))) for layer in range(model.cfg.n_layers)]
        with torch.inference_mode():
            model.run_with_hooks(tokens, return_type=None, fwd_hooks=hooks)
        for name in FIELDS:
            out[f"{name}_vs_{other}"] = max(float((getattr(triton_store[l], name) - getattr(other_store[l], name))
                                                  .abs().max()) for l in other_store)
    print(f"agreement at {length} tokens (max |difference| over all layers and heads; received: sums over "
          f"up to {length} rows): " + ", ".join(f"{k} {v:.2e}" for k, v in out.items()), flush=True)
    return out


def study_parts() -> list:
    """The measurements of row 1 (Exp 4, 5, 7, 8-9 at their default configs), measured together."""
    from drope_lens.experiments import attention_structure, bos_write, layer_balance, sinks

    return [sinks.measurement(sinks.SinksConfig()), bos_write.measurement(bos_write.BosWriteConfig()),
            attention_structure.measurement(attention_structure.AttentionStructureConfig()),
            layer_balance.measurement(layer_balance.LayerBalanceConfig())]


def study_calls(model, texts) -> tuple[torch.Tensor, object, object]:
    """Row 1's two calls: ``(token rows, bare, everything)``. ``bare()`` is the bare forward over the
    token rows :func:`~drope_lens.engine.measure.measure` takes (10 texts x 512 tokens), ``everything()``
    that ``measure`` call with :func:`study_parts` (tokenising and DataFrames included)."""
    from drope_lens.measurement.tokens import tokenize
    from drope_lens.engine.measure import measure

    parts = study_parts()
    batch = torch.stack(tokenize(model, texts, 512)).to(model.cfg.device)

    def bare():
        with torch.inference_mode():
            return model(batch, return_type=None)

    def everything():
        return measure(model, texts, parts, max_tokens=512, batch_size=10, show_progress=False)

    return batch, bare, everything


def study_size(model, texts, repeat: int) -> dict:
    batch, bare, everything = study_calls(model, texts)
    bare_s, bare_gib, _ = cuda_time(bare, repeat)
    all_s, all_gib, frames = cuda_time(everything, repeat)
    row = {"texts": len(texts), "tokens_per_text": int(batch.shape[1]), "bare_s": bare_s, "all_s": all_s,
           "time_ratio": all_s / bare_s, "bare_peak_gib": bare_gib, "all_peak_gib": all_gib,
           "rows": {name: len(frame) for name, frame in frames.items()}}
    print(f"Exp 4+5+7+8-9 at {len(texts)} x {batch.shape[1]}: bare forward {bare_s:.3f} s, all statistics "
          f"{all_s:.3f} s (tokenising and DataFrames included) -> {row['time_ratio']:.2f}x", flush=True)
    return row


def compare_settings(model, texts, settings: list[str], repeat: int) -> list[dict]:
    """Row 1's call (:func:`study_size`) under each of ``settings`` (:func:`parse_setting`), measured
    side by side: one warm-up per setting, then ``repeat`` rounds of [bare forward, each setting once]
    (:func:`call_seconds`), the settings' order rotated by one each round (round r starts with setting
    r mod k): the call right after the bare forward was 4-8 ms slower than the next ones in sessions
    33-35's runs, whatever its setting, so a fixed order favoured every setting but the first. Use a
    multiple of the number of settings for ``repeat``. Per setting the median seconds and its ratio to
    the bare forward's median."""
    batch, bare, everything = study_calls(model, texts)
    parsed = [parse_setting(setting) for setting in settings]
    bare()
    for setting in parsed:
        with applied(setting):
            everything()
    bare_times, times = [], [[] for _ in settings]
    for round_ in range(repeat):
        bare_times.append(call_seconds(bare)[0])
        for k in range(len(parsed)):
            i = (round_ + k) % len(parsed)
            with applied(parsed[i]):
                times[i].append(call_seconds(everything)[0])
        print(f"  round {round_ + 1}/{repeat}: bare {bare_times[-1] * 1e3:.1f} ms; "
              + ", ".join(f"{t[-1] * 1e3:.1f}" for t in times), flush=True)
    bare_s = statistics.median(bare_times)
    rows = []
    for setting, per_setting in zip(settings, times):
        median = statistics.median(per_setting)
        rows.append({"setting": setting, "bare_s": bare_s, "all_s": median, "time_ratio": median / bare_s,
                     "all_times_s": per_setting})
        print(f"Exp 4+5+7+8-9 at {len(texts)} x {batch.shape[1]} with {setting}: bare forward {bare_s:.4f} s, "
              f"all statistics {median:.4f} s -> {median / bare_s:.3f}x", flush=True)
    return rows


def profile_study(model, texts) -> None:
    """Where the study-size part's time goes: ``torch.profiler`` over one warm ``measure`` call,
    the 25 largest entries by CUDA time and by host (self CPU) time, then the timeline
    (:func:`print_timeline`): the host's phases and the GPU's idle gaps between kernels."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from drope_lens.engine.measure import measure

    def labelled(name, fn):
        def wrapper(*args, **kwargs):
            with record_function(f"phase: {name}"):
                return fn(*args, **kwargs)
        return wrapper

    with _phases_labelled(labelled, ("tokenize", "pack_to_host", "_forward")) as parts:
        def run():
            with record_function("phase: measure"):
                return measure(model, texts, parts, max_tokens=512, batch_size=10, show_progress=False)

        cuda = torch.cuda.is_available()
        run()
        _synchronize()
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            run()
            _synchronize()
    table = prof.key_averages()
    print(table.table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60), flush=True)
    print(table.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60), flush=True)
    print_timeline(prof.events())


def phase_timeline(model, texts, repeat: int = 3) -> list[dict]:
    """Where the host and the GPU are during a warm study-size ``measure`` call, without a profiler:
    each phase (tokenising, the hooked forward, the copy to the host, each measurement's rows, the
    head columns put in front) records ``time.perf_counter`` and a CUDA event on entry and exit.
    Printed per phase in ms from the call's start: host enter .. exit, and the time the GPU reached
    the same points of its stream (all work queued before them done). A phase whose host exit is
    later than the GPU's is host-bound. ``repeat`` calls after one warm-up; the last is printed."""
    from drope_lens.engine.measure import measure

    records: list = []

    def mark(name: str, edge: str) -> None:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        records.append((name, edge, time.perf_counter(), event))

    def labelled(name, fn):
        def wrapper(*args, **kwargs):
            mark(name, "enter")
            try:
                return fn(*args, **kwargs)
            finally:
                mark(name, "exit")
        return wrapper

    collections: list = []  # (generation, seconds) of the garbage collections during a call

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append([info["generation"], time.perf_counter()])
        elif collections:
            collections[-1][1] = time.perf_counter() - collections[-1][1]

    from drope_lens.measurement import entropy

    runs = []
    gc.callbacks.append(on_gc)
    result = entropy.DeferredEntropies.result
    entropy.DeferredEntropies.result = labelled("entropies' result", result)  # the wait for the spectra
    try:
        with _phases_labelled(labelled, ("tokenize", "pack_to_host", "_forward", "_with_head", "_complete_frames",
                                         "_in_sample_order", "run_sweep", "_measure_unsaved")) as parts:
            for k in range(repeat + 1):
                records.clear()
                collections.clear()
                mark("measure", "enter")
                measure(model, texts, parts, max_tokens=512, batch_size=10, show_progress=False)
                mark("measure", "exit")
                torch.cuda.synchronize()
                host0, gpu0 = records[0][2], records[0][3]
                rows = [{"phase": n, "edge": e, "host_ms": (h - host0) * 1e3, "gpu_ms": gpu0.elapsed_time(ev)}
                        for n, e, h, ev in records]
                if k:
                    runs.append(rows)
                    rows.append({"phase": "garbage collections (generation, ms)",
                                 "collections": [(g, t * 1e3) for g, t in collections]})
    finally:
        gc.callbacks.remove(on_gc)
        entropy.DeferredEntropies.result = result
    last = runs[-1]
    print("phase timeline (ms from the call's start; host = perf_counter, gpu = when the stream got there):")
    for row in last[:-1]:
        print(f"  {row['phase']:>28} {row['edge']:>5}: host {row['host_ms']:8.2f}  gpu {row['gpu_ms']:8.2f}")
    for k, run in enumerate(runs):
        gcs = run[-1]["collections"]
        print(f"  call {k + 1}: {len(gcs)} garbage collections, {sum(t for _, t in gcs):.2f} ms "
              f"(generation 2: {sum(1 for g, _ in gcs if g == 2)})")
    totals = [r[-2]["host_ms"] for r in runs]
    print(f"  measure calls: host {', '.join(f'{t:.1f}' for t in totals)} ms", flush=True)
    return runs


@contextlib.contextmanager
def _phases_labelled(labelled, engine_functions: tuple[str, ...]):
    """Row 1's measurements (:func:`study_parts`) with each ``rows`` wrapped by ``labelled(name, fn)``,
    and the named functions of :mod:`drope_lens.engine.measure` wrapped the same way until exit."""
    from drope_lens.engine import measure as measure_module

    originals = {name: getattr(measure_module, name) for name in engine_functions}
    for name, fn in originals.items():
        setattr(measure_module, name, labelled(name, fn))
    try:
        yield [dataclasses.replace(p, rows=labelled(f"{p.name} rows", p.rows)) for p in study_parts()]
    finally:
        for name, fn in originals.items():
            setattr(measure_module, name, fn)


def print_timeline(events, min_gap_ms: float = 0.2) -> None:
    """The host's ``phase: ...`` ranges (ms from the start of ``phase: measure``) and every gap of at
    least ``min_gap_ms`` between GPU kernels, with the phases the host was in meanwhile; then the
    GPU's busy time against the wall time."""
    phases = sorted(((e.time_range.start, e.time_range.end, e.name[len("phase: "):]) for e in events
                     if e.name.startswith("phase: ")), key=lambda x: x[0])
    if not phases:
        print("timeline: no phases recorded")
        return
    t0, t_end = phases[0][0], phases[0][1]
    kernels = sorted((e.time_range.start, e.time_range.end, e.name) for e in events
                     if e.device_type == torch.autograd.DeviceType.CUDA and t0 <= e.time_range.start <= t_end)
    busy, gaps, cursor, last = 0.0, [], t0, "(start)"
    for start, end, name in kernels:
        if start > cursor:
            gaps.append((cursor, start, last, name))
        if end > cursor:
            busy += end - max(start, cursor)
            cursor = end
            last = name
    if t_end > cursor:
        gaps.append((cursor, t_end, last, "(end)"))
    ms = lambda us: us / 1e3  # noqa: E731 - profiler times are in microseconds
    print("host phases (ms from the start):")
    for start, end, name in phases:
        print(f"  {ms(start - t0):8.2f} .. {ms(end - t0):8.2f}  {name}")
    print(f"GPU idle gaps >= {min_gap_ms} ms:")
    for start, end, before, after in gaps:
        if ms(end - start) >= min_gap_ms:
            during = sorted({name for s, e, name in phases[1:] if s < end and e > start})
            print(f"  {ms(start - t0):8.2f} +{ms(end - start):6.2f} ms  after {before[:40]!r}, before {after[:40]!r};"
                  f" host in: {', '.join(during) or '-'}")
    print(f"wall {ms(t_end - t0):.2f} ms, GPU busy {ms(busy):.2f} ms, idle {ms(t_end - t0 - busy):.2f} ms", flush=True)


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _empty_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/attention_stats_bench"))
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--agreement-tokens", type=int, default=4096)
    parser.add_argument("--sweep", nargs="*", default=None, metavar="BM,BN,WARPS,STAGES",
                        help="time these Triton kernel configurations first (one layer at 32k) and use the fastest")
    parser.add_argument("--sweep-shape", default="1,32768", metavar="BATCH,LENGTH",
                        help="the sequences --sweep times its configurations on (study size: 10,512)")
    parser.add_argument("--profile", action="store_true", help="profile one study-size measure call")
    parser.add_argument("--compare", nargs="+", default=None, metavar="SETTING",
                        help="row 1 under each setting side by side, e.g. default 'entropy.TRITON_GRAM=False' "
                             "'entropy.GRAM_TILE=64;spectrum_two_stage.PANELS_PER_UPDATE=2'")
    parser.add_argument("--phases", action="store_true",
                        help="host and GPU times of each phase of a study-size measure call (no profiler)")
    parser.add_argument("--variant", choices=["rope", "drope"], default="drope",
                        help="the model the statistics run on (same random weights)")
    parser.add_argument("--shape", choices=["llama2-7b", "tiny"], default="llama2-7b",
                        help="tiny: a CPU smoke run of this script")
    add_spectrum_method_argument(parser)
    args = parser.parse_args()
    use_spectrum_method(args)
    from .random_checkpoint import SHAPES

    import drope_lens as dl
    from drope_lens.measurement.texts import builtin_texts

    texts = builtin_texts()[:10]
    shape = SHAPES[args.shape]
    directory = args.workdir / f"rope-{args.shape}"
    if args.shape == "llama2-7b":  # the checkpoint the other benchmarks share (written once)
        from .random_checkpoint import bench_pair

        directory = bench_pair(args.workdir)[0]
    if not (directory / "config.json").exists():
        write_random_checkpoint(directory, shape)
    if not (directory / "tokenizer.json").exists():
        write_tokenizer(directory, [t.text for t in builtin_texts()], vocab_size=min(8000, shape.vocab))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = dl.load_model(directory, dtype="bf16", device=device, variant=args.variant,
                          n_ctx=max(args.lengths + [shape.max_position_embeddings]))
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    result = {"device": name, "torch": torch.__version__, "shape": f"{args.shape} (random bf16)",
              "variant": args.variant, "repeat": args.repeat, "spectrum_method": args.spectrum_method or "default",
              "two_stage_settings": args.two_stage_settings or "default"}

    def save() -> None:  # after every part, so a run cut short keeps what it measured
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2))

    if args.sweep:
        batch, length = map(int, args.sweep_shape.split(","))
        result["sweep"] = sweep(args.sweep, length=length, batch=batch)
    if device == "cuda":
        from drope_lens.measurement import attention_stats_triton

        result["kernel_config"] = vars(attention_stats_triton.CONFIG)
        result["short_kernel_config"] = vars(attention_stats_triton.SHORT_CONFIG)
    if args.compare:
        result["compare"] = compare_settings(model, texts, args.compare, args.repeat)
        save()
    result["study_size"] = study_size(model, texts, args.repeat)
    save()
    if args.profile:
        profile_study(model, texts)
    if args.phases and device == "cuda":
        result["phases"] = phase_timeline(model, texts, args.repeat)
        save()
    result["agreement"] = agreement(model, args.agreement_tokens) if args.agreement_tokens else None
    save()
    result["long_context"] = []
    for length in args.lengths:
        result["long_context"] += long_context(model, [length], args.repeat)
        save()
    if args.out:
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
