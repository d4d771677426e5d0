"""The engine's measurement mode (Exp 4, 5, 7 and 8-9): texts in, one tidy frame per measurement out.

A :class:`Measurement` names the hooks it needs (capture hooks writing into a per-batch dict), the
attention statistics it needs (window, distances), and how to turn one batch's captures into rows.
:func:`measure` tokenises the texts, runs one forward per batch of equal-length texts with the
union of every measurement's hooks (attention statistics are computed once per distinct request,
by :func:`drope_lens.hooks.capture_attention_stats`; activation norms once per tensor, by
:func:`drope_lens.hooks.shared_norms`), saves each text's rows as a RunStore unit,
and skips texts already saved (without a store a forward's frames are kept whole, not split by
text and joined back). Several measurements therefore share one forward. After the forward
the captures reach the host in one copy per device and deferred device work (Exp 4's spectra) runs
while the host builds the frames, columns that wait on it filled last (``Batch.complete``;
:func:`_forward`, :mod:`drope_lens.engine.host_transfer`); a
batch's frames are built after the next batch's forward was queued. Chunks of
``batch_size`` texts are the planned batches of :func:`drope_lens.engine.sweep.run_sweep`: shared
among ranks under ``torchrun``, each text always measured in the same batch.

Summaries over texts live in :mod:`drope_lens.measurement.summaries` (:func:`~drope_lens.measurement.summaries.summarize`,
:func:`~drope_lens.measurement.summaries.compare_variants`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from drope_lens.hooks import capture_attention_stats, shared_norms
from drope_lens.engine.host_transfer import find_deferred, pack_to_host
from drope_lens.engine.results import RunStore, texts_fingerprint
from drope_lens.measurement.texts import Text, TextsLike, as_texts
from drope_lens.measurement.tokens import BosPolicy, batches_by_length, check_bos, model_name, model_variant, tokenize

from .sweep import Planned, bind_store, run_sweep, unit_prefix

HookPair = tuple[str, Callable]
#: ``Measurement.attention`` for measurements that read only statistics independent of the window
#: and the distance range (sink score, entropy): they share whatever request another makes.
ANY_WINDOW = "any"


@dataclass(frozen=True)
class TextMeasurementConfig:
    """Configuration of a measurement with no settings beyond the texts: tokens per text, texts
    per forward and the position-0 policy (Exp 5 and Exp 8-9 use it as it is)."""

    max_tokens: int = 512
    batch_size: int = 10
    bos: BosPolicy = "checkpoint"

    def __post_init__(self) -> None:
        check_bos(self.bos)
        if self.max_tokens < 2 or self.batch_size < 1:
            raise ValueError(f"max_tokens={self.max_tokens}, batch_size={self.batch_size}: need >= 2 and >= 1.")


@dataclass
class Batch:
    """What a measurement's ``rows`` sees: the batch's texts, tokens and captures, all on the host
    (CPU tensors; a :class:`~drope_lens.measurement.deferred.DeferredCapture` value gives host values
    through its ``result()``)."""

    samples: list[int]
    texts: list[Text]
    tokens: torch.Tensor  # [batch, pos]
    captured: dict  # what the measurement's hooks stored
    attention: Optional[dict] = None  # layer -> AttentionStats, when requested
    #: callables ``fn(frame)`` that ``rows`` may add: run on the measurement's finished frame (head
    #: columns included) after every measurement's frame of the forward was built, to fill columns
    #: that wait on deferred device work (the frame is built while the device still computes them)
    complete: list = field(default_factory=list)


@dataclass(frozen=True)
class Measurement:
    """One experiment's share of a forward.

    ``hooks(model, captured)`` returns hook pairs that fill ``captured`` (tensors, nested in dicts,
    lists or dataclasses, or :class:`~drope_lens.measurement.deferred.DeferredCapture` values);
    ``rows(model, batch)`` returns the batch's rows with a ``sample`` column (index into the texts)
    and sees the captures as host tensors. ``attention`` =
    ``(window, max_distance)`` asks for :class:`~drope_lens.measurement.attention_stats.AttentionStats` of
    every layer in ``batch.attention``; :data:`ANY_WINDOW` for any window (sink score and entropy
    only), so that one streamed computation per layer serves several measurements.
    """

    name: str
    hooks: Callable[[object, dict], list[HookPair]]
    rows: Callable[[object, Batch], pd.DataFrame]
    attention: Optional[object] = None  # (window, max_distance), ANY_WINDOW or None
    options: dict = field(default_factory=dict)
    #: the experiment's config dataclass: part of the run's fingerprint (see RunStore.bind)
    config: Optional[object] = None


def measure(
    model,
    texts: TextsLike,
    measurements: Sequence[Measurement],
    *,
    max_tokens: int = 512,
    bos: BosPolicy = "checkpoint",
    batch_size: int = 10,
    store: Optional[RunStore] = None,
    show_progress: bool = True,
) -> dict[str, pd.DataFrame]:
    """Run every measurement over ``texts`` (see module docstring); ``{name: DataFrame}``.

    Frames start with ``model``, ``variant``, ``sample``, ``text``, ``register``, ``n_tokens``.
    Batches are planned over all texts, so a resumed run puts each text in the batch it had.
    """
    texts = as_texts(texts)
    names = [m.name for m in measurements]
    if len(set(names)) != len(names):
        raise ValueError(f"measurement names {names} must be distinct.")
    if store is not None:  # (the texts' fingerprint costs about a millisecond: only when it is needed)
        store = bind_store(store, model, "+".join(names),
                           {m.name: {"config": m.config, "attention": m.attention, "options": m.options}
                            for m in measurements},
                           max_tokens=max_tokens, bos=bos, batch_size=batch_size, texts=texts_fingerprint(texts))
    chunks = [list(range(i, min(i + batch_size, len(texts)))) for i in range(0, len(texts), batch_size)]
    label = f"{'+'.join(names)} {model_variant(model)}"
    if store is None:
        return _measure_unsaved(model, texts, measurements, chunks, max_tokens, bos, batch_size, label, show_progress)
    unit = lambda name, i: f"{unit_prefix(model)}-{name}-sample-{i}"  # noqa: E731

    def step(k: int, done: frozenset):
        chunk = chunks[k]
        tokens = tokenize(model, [texts[i] for i in chunk], max_tokens, bos=bos)
        for local, batch_tokens in batches_by_length(tokens, batch_size):
            samples = [chunk[i] for i in local]
            if done.issuperset(unit(n, i) for n in names for i in samples):
                continue
            build = _forward(model, texts, samples, batch_tokens, measurements)
            # built one step later by run_sweep: the next batch's forward is queued first
            yield lambda build=build: {unit(name, sample): rows for name, frame in build().items()
                                       for sample, rows in split_by_sample(frame)}

    parts = run_sweep([Planned(tuple(unit(n, i) for i in chunk for n in names), len(chunk)) for chunk in chunks],
                      store, step, label=label, device=model.cfg.device,
                      weights=[len(chunk) for chunk in chunks], show_progress=show_progress)
    return {name: pd.concat([parts[unit(name, i)] for i in range(len(texts))], ignore_index=True) for name in names}


def _measure_unsaved(model, texts, measurements, chunks, max_tokens, bos, batch_size, label, show_progress):
    """:func:`measure` without a store: nothing is saved per text, so a forward's frames stay whole
    (one unit per chunk of texts and measurement; not split by sample and concatenated back, which
    cost more host time than building them at the study's size) and are put in sample order at the
    end, as the per-sample units would be."""
    names = [m.name for m in measurements]
    unit = lambda name, k: f"{unit_prefix(model)}-{name}-chunk-{k}"  # noqa: E731

    split = []  # chunks measured in more than one forward (texts of unequal lengths): rows out of order

    def step(k: int, done: frozenset):
        chunk = chunks[k]
        tokens = tokenize(model, [texts[i] for i in chunk], max_tokens, bos=bos)
        forwards = list(batches_by_length(tokens, batch_size))
        if len(forwards) > 1:
            split.append(k)
        built: list = []  # the chunk's earlier forwards' frames (a chunk of unequal lengths has several)
        for j, (local, batch_tokens) in enumerate(forwards):
            build = _forward(model, texts, [chunk[i] for i in local], batch_tokens, measurements)
            if j < len(forwards) - 1:
                yield lambda build=build: built.append(build()) or {}
            else:
                yield lambda build=build: {unit(name, k): _concat([b[name] for b in built] + [frame])
                                           for name, frame in build().items()}

    parts = run_sweep([Planned(tuple(unit(n, k) for n in names), len(chunk)) for k, chunk in enumerate(chunks)],
                      None, step, label=label, device=model.cfg.device,
                      weights=[len(chunk) for chunk in chunks], show_progress=show_progress)
    # one forward per chunk: each frame is in sample order already (build() sorts a forward's frames;
    # chunks ascend), so the check (a label lookup on each fresh frame, host time after the device's)
    # is left out
    order = _in_sample_order if split else (lambda frame: frame)
    return {name: order(_concat([parts[unit(name, k)] for k in range(len(chunks))])) for name in names}


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def _in_sample_order(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame``'s rows stably sorted by ``sample`` (each sample's rows keep their order), fresh index."""
    sample = frame["sample"].to_numpy()
    if _ascending(sample):
        return frame
    return frame.iloc[np.argsort(sample, kind="stable")].reset_index(drop=True)


def _ascending(sample: np.ndarray) -> bool:
    return len(sample) < 2 or bool((sample[1:] >= sample[:-1]).all())


class _Hooked:
    """One forward's captures (``captured``: per measurement; ``attention``: per statistics request)
    with every measurement's hooks registered on the model until :meth:`close`
    (:func:`register_hooks`: TransformerLens's ``hook(activation, hook=hook_point)`` contract,
    registered as plain PyTorch forward hooks). (Through ``model.hooks()`` a study's ~450 hooks took
    2.8-3.6 ms of host time before the device's first kernel on an H200's host. Registering them on
    a worker thread while the tokenizer ran was measured there and taken back: row 1 of
    attention_stats_bench 165.6 against 164.0 and 161.2 ms done one after the other; the two
    threads wait for each other's GIL. docs/gpu_evidence/lead_call{3,4,5}_h200_s34_console.txt.)"""

    def __init__(self, model, measurements: Sequence[Measurement]) -> None:
        self.captured = {m.name: {} for m in measurements}
        hooks: list[HookPair] = []
        for m in measurements:
            hooks += m.hooks(model, self.captured[m.name])
        self.attention: dict = {}
        requests = sorted({m.attention for m in measurements if m.attention not in (None, ANY_WINDOW)})
        if not requests and any(m.attention == ANY_WINDOW for m in measurements):
            requests = [(1, 1)]
        for request in requests:
            self.attention[request] = {}
            hooks += capture_attention_stats(self.attention[request], model, window=request[0],
                                             max_distance=request[1])
        if requests:
            self.attention[ANY_WINDOW] = self.attention[requests[0]]
        self._handles = register_hooks(model, hooks)

    def close(self) -> None:
        """Remove the hooks (once)."""
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()


#: Register :class:`_Hooked`'s hooks directly on the hook points' modules (False: through
#: TransformerLens's ``model.hooks()`` context, which wraps and books every hook: 15-20 against
#: 1.7-2.8 ms of host time for registering and removing the study's ~450 hooks on a 2-core CPU).
DIRECT_HOOKS = True


def register_hooks(model, hooks: Sequence[HookPair]) -> list:
    """Register forward hooks ``(name, fn)`` on ``model``'s hook points; returns removable handles.

    ``fn(activation, hook=hook_point)`` is called, and what it returns (if not None) replaces the
    activation, as with ``model.hooks(fwd_hooks=hooks)``; a name may also be a predicate on hook
    names, as there. The hooks are plain PyTorch forward hooks on the ``HookPoint`` modules, in
    order: ``model.reset_hooks()`` and the hook points' ``fwd_hooks`` lists do not see them (the
    caller removes them). Hook points with a TransformerLens ``hook_conversion``, or
    ``DIRECT_HOOKS = False``, go through ``model.hooks()`` instead (its context is exited by the
    handle returned for it). On an error nothing stays registered."""
    points = model.hook_dict
    pairs = []
    for name, fn in hooks:
        if isinstance(name, str):
            if name not in points:
                raise KeyError(f"{model_name(model)} has no hook point {name!r} (see model.hook_dict).")
            pairs.append((points[name], fn))
        else:
            pairs += [(point, fn) for hook_name, point in points.items() if name(hook_name)]
    if not DIRECT_HOOKS or any(getattr(point, "hook_conversion", None) is not None for point, _ in pairs):
        context = model.hooks(fwd_hooks=list(hooks))
        context.__enter__()
        return [_ExitOnRemove(context)]
    handles = []
    try:
        for point, fn in pairs:
            handles.append(point.register_forward_hook(_TransformerLensHook(fn)))
    except BaseException:
        for handle in handles:
            handle.remove()
        raise
    return handles


class _TransformerLensHook:
    """A PyTorch forward hook calling ``fn(output, hook=module)`` (TransformerLens's hook contract)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def __call__(self, module, args, output):
        return self.fn(output, hook=module)


class _ExitOnRemove:
    """A handle whose ``remove()`` exits a ``model.hooks()`` context."""

    def __init__(self, context) -> None:
        self.context = context

    def remove(self) -> None:
        self.context.__exit__(None, None, None)


def _forward(model, texts, samples, tokens, measurements) -> Callable[[], dict[str, pd.DataFrame]]:
    """Run one hooked forward; return a callable that builds every measurement's frame (``{name:
    DataFrame}``, head columns first, see :func:`_with_head`).

    After the forward, every captured tensor (captured dicts and attention statistics, except
    :class:`~drope_lens.measurement.deferred.DeferredCapture` values) goes to the host in ONE
    non-blocking copy per device (:func:`~drope_lens.engine.host_transfer.pack_to_host`); then the
    deferred work is launched, so that the device computes it while the host waits for the copy
    only and builds the frames from host tensors. Measurements without deferred captures are built
    (and split) first, while the device still works on the deferred ones. On the CPU nothing is
    copied: the frames are those of the captures as they are.
    """
    hooked = _Hooked(model, measurements)
    captured, attention = hooked.captured, hooked.attention
    with torch.inference_mode():
        try:
            with shared_norms():  # a tensor's norms computed once for all measurements' hooks
                model.forward(tokens.to(model.cfg.device), return_type=None)  # as run_with_hooks runs it
        finally:
            hooked.close()
        copy = pack_to_host({"captured": captured, "attention": attention})
        deferred = {m.name: find_deferred(captured[m.name]) for m in measurements}
        for values in deferred.values():
            for value in values:
                value.launch()
    del captured, attention, hooked  # device tensors: the host copy holds what the frames need
    head = {"model": model_name(model), "variant": model_variant(model), "n_tokens": int(tokens.shape[1]),
            "texts": texts, "samples": samples}

    def build() -> dict[str, pd.DataFrame]:
        nonlocal copy
        with torch.inference_mode():
            host, copy = copy.host(), None
            out, complete, unordered = {}, [], []
            for m in sorted(measurements, key=lambda m: bool(deferred[m.name])):  # stable: deferred ones last
                batch = Batch(samples, [texts[i] for i in samples], tokens, host["captured"][m.name],
                              host["attention"].get(m.attention) if m.attention is not None else None)
                rows = m.rows(model, batch)
                if not _ascending(rows["sample"].to_numpy()):
                    unordered.append(m.name)
                out[m.name] = _with_head(rows, **head)
                complete += [(fn, m.name) for fn in batch.complete]
            # the host captures no frame kept are freed before the wait for the device, not after it
            host = batch = None
            _complete_frames(complete, out)
            for name in unordered:  # rows of a measurement not built sample by sample (none of the study's)
                out[name] = _in_sample_order(out[name])
        return {m.name: out[m.name] for m in measurements}

    return build


def _complete_frames(complete: list, frames: dict[str, pd.DataFrame]) -> None:
    """Fill the columns that wait on deferred device work (``(fn, measurement name)`` pairs from
    ``Batch.complete``), once every frame of the forward is built."""
    for fn, name in complete:
        fn(frames[name])


def _with_head(rows: pd.DataFrame, *, model: str, variant: str, n_tokens: int, texts, samples) -> pd.DataFrame:
    """``rows`` (with a ``sample`` column) behind the columns model, variant, sample, text, register,
    n_tokens, with a fresh index; the caller's frame is left as it is. Built in one constructor call
    from ``rows``' arrays (no data copied); text and register are typed once per sample and then
    taken per row (10,240 rows: about half the time of inserting object columns one by one)."""
    sample = rows["sample"].to_numpy()
    present, which = np.unique(sample, return_inverse=True)
    names = pd.Series([texts[s].name for s in present.tolist()]).array.take(which)
    registers = pd.Series([texts[s].register for s in present.tolist()]).array.take(which)
    columns = {"model": model, "variant": variant, "sample": sample, "text": names, "register": registers,
               "n_tokens": n_tokens}
    columns.update((name, rows[name].array) for name in rows.columns if name != "sample")
    return pd.DataFrame(columns, index=pd.RangeIndex(len(rows)))


def split_by_sample(frame: pd.DataFrame):
    """``(sample, rows)`` per sample of ``frame`` in order of first appearance, each with a fresh index
    (as ``groupby("sample", sort=False)``; slices when each sample's rows are contiguous, as
    :func:`per_head_frame` and :func:`per_layer_frame` make them)."""
    sample = frame["sample"].to_numpy()
    starts = np.flatnonzero(np.r_[True, sample[1:] != sample[:-1]]) if len(sample) else np.zeros(0, dtype=np.intp)
    if len(np.unique(sample[starts])) != len(starts):  # some sample's rows are not contiguous
        for key, rows in frame.groupby("sample", sort=False):
            yield key, rows.reset_index(drop=True)
        return
    bounds = np.r_[starts, len(sample)]
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        rows = frame.iloc[a:b]
        rows.index = pd.RangeIndex(b - a)  # a fresh index without reset_index's copy of the frame
        yield sample[a].item(), rows


def per_head_frame(samples: Sequence[int], columns: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Rows (sample, layer, head) from ``[layer, batch, head]`` tensors (or ``[layer, batch, head, k]``,
    stored as lists)."""
    return pd.DataFrame(per_head_columns(samples, columns))


def per_head_columns(samples: Sequence[int], columns: dict[str, torch.Tensor]) -> dict:
    """The columns of :func:`per_head_frame` as a dict of arrays (add more, then build the frame once)."""
    first = next(iter(columns.values()))
    n_layers, n_rows, n_heads = first.shape[:3]
    frame = {"sample": np.repeat(np.asarray(samples), n_layers * n_heads),
             "layer": np.tile(np.repeat(np.arange(n_layers), n_heads), n_rows),
             "head": np.tile(np.arange(n_heads), n_rows * n_layers)}
    for name, value in columns.items():
        frame[name] = per_head_values(value)
    return frame


def per_head_values(value: torch.Tensor):
    """One :func:`per_head_frame` column from a ``[layer, batch, head]`` tensor (float32 values as
    float64) or a ``[layer, batch, head, k]`` one (a list of float32 arrays per row)."""
    array = value.detach().float().cpu().transpose(0, 1).numpy()  # [batch, layer, head, ...]
    return list(array.reshape(-1, *array.shape[3:])) if array.ndim > 3 else array.reshape(-1).astype(np.float64)


def filled_later(batch: Batch, names: Sequence[str], n_rows: int, columns: Callable[[], dict]) -> dict:
    """Placeholders (``n_rows`` float64 NaNs) for the columns ``names`` of a frame whose values
    ``columns()`` returns (``{name: array}``) only once deferred device work is done: ``batch.complete``
    fills them, after every frame of the forward was built (so the host builds them meanwhile)."""

    def fill(frame: pd.DataFrame) -> None:
        # the columns' positions first: a fresh frame's first lookup by label builds its column
        # index (a few hundred us), host work best done before the wait for the device, not after
        where = {name: frame.columns.get_loc(name) for name in names}
        for name, values in columns().items():
            frame.isetitem(where[name], values)

    batch.complete.append(fill)
    return {name: np.full(n_rows, np.nan) for name in names}


def per_layer_frame(samples: Sequence[int], columns: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Rows (sample, layer) from ``[layer, batch]`` tensors."""
    first = next(iter(columns.values()))
    n_layers, n_rows = first.shape[:2]
    frame = {"sample": np.repeat(np.asarray(samples), n_layers), "layer": np.tile(np.arange(n_layers), n_rows)}
    for name, value in columns.items():
        frame[name] = value.detach().double().cpu().T.reshape(-1).numpy()
    return pd.DataFrame(frame)


def run_cli_measurement(ctx, experiment: str, config, run_one: Callable) -> pd.DataFrame:
    """The shared body of a measurement experiment's ``run_cli``: texts, store, models, meta.json.

    ``run_one(model, texts, store)`` returns the model's frame; the concatenated frame is returned.
    """
    from dataclasses import asdict

    from drope_lens.engine.results import model_identity

    chosen = ctx.texts()[: ctx.args.n_texts]
    names = [t.name for t in chosen]
    store = ctx.store(experiment, config, {"texts": chosen})
    frames, identities = [], []
    for model in ctx.models():
        frames.append(run_one(model, chosen, store))
        identities.append(model_identity(model))
    ctx.finalize(store, frames, {"config": asdict(config), "seed": 0, "texts": names}, identities)
    return pd.concat(frames, ignore_index=True)

