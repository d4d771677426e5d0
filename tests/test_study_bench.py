"""The whole-study benchmark's forward log counts static / CUDA-graph decode steps.

``benchmarks.study_bench.ForwardLog`` records every forward an experiment makes so that the same
shapes can be replayed through Hugging Face as the "HF work". Static decode steps
(``measurement.generation._StaticDecode``) either replay a CUDA graph (no ``model.forward`` call at
all) or run over the whole preallocated cache; the log must still hold one one-token forward over
``end - 1`` cached keys per step, exactly what the dynamic decode path (forced by a hook that
changes nothing) records.
"""

from __future__ import annotations

import drope_lens as dl
from drope_lens.benchmarks.study_bench import ForwardLog
from drope_lens.measurement import generation
from drope_lens.measurement.generation import greedy_generate

ROWS = [[1, 5, 9, 17, 33, 40], [1, 44, 45], [1, 7, 8, 20]]
NEW = 6


def _identity(x, hook):
    return x


def _shapes(model, hooks):
    log = ForwardLog(model)
    try:
        greedy_generate(model, ROWS, NEW, fwd_hooks=hooks, batch_size=len(ROWS))
    finally:
        calls = log.close()
    return [call[:3] for call in calls]


def test_forward_log_counts_static_decode_steps_like_dynamic_ones(checkpoint_factory, monkeypatch):
    model = dl.load_model(checkpoint_factory()[0], dtype="fp32", device="cpu")
    steps = []
    real = generation._StaticDecode.__call__

    def counting(self, tokens, end, steps_left):
        steps.append(end)
        return real(self, tokens, end, steps_left)

    monkeypatch.setattr(generation._StaticDecode, "__call__", counting)
    static = _shapes(model, ())
    assert len(steps) == NEW - 1, "the unhooked batch did not decode in static mode"
    dynamic = _shapes(model, [("blocks.0.hook_resid_post", _identity)])
    assert len(steps) == NEW - 1, "the hooked batch should decode on the dynamic path"
    assert static == dynamic
    assert static[1:] == [(3, 1, 6 + i) for i in range(NEW - 1)]
    assert generation._StaticDecode.__call__ is counting  # the log put back what it wrapped


def _row(experiment, variant, seconds, hf=None, lengths=None):
    row = {"experiment": experiment, "variant": variant, "seconds": seconds}
    if hf is not None:
        row.update(hf_work_seconds=hf, ratio=seconds / hf)
    if lengths is not None:
        row["lengths"] = lengths
    return row


def test_combine_sums_parts_and_refuses_counting_a_run_twice():
    import pytest

    from drope_lens.benchmarks.study_bench import EXPERIMENTS, combine

    part1 = {"device": "gpu", "experiments": [_row("sinks", "rope", 0.3, 0.1), _row("sinks", "drope", 0.12, 0.1)]}
    part2 = {"device": "gpu", "experiments": [_row("context-length", "rope", 5.0, 4.0, [512]),
                                              _row("context-length", "rope", 7.0, None, [1024])]}
    merged = combine([part1, part2], ["a.json", "b.json"])
    assert merged["total_seconds"] == pytest.approx(12.42)
    by = {(r["experiment"], r["variant"]): r for r in merged["experiments"]}
    assert by[("sinks", "rope")]["target_met"] is False  # 3.0x > 1.5x
    assert by[("sinks", "drope")]["target_met"] is True  # 1.2x
    assert merged["without_hf_replay"] == ["context-length @ 1024 (rope)"]
    assert "total_ratio" not in merged  # one row has no HF replay
    assert len(merged["missing"]) == 2 * len(EXPERIMENTS) - 3
    assert merged["study_target_met"] is False  # parts are missing

    again = {"device": "gpu", "experiments": [_row("sinks", "rope", 0.2, 0.1)]}
    with pytest.raises(ValueError, match="sinks"):
        combine([part1, again], ["a.json", "c.json"])
    replaced = combine([part1, again], ["a.json", "c.json"], replace=True)
    assert replaced["total_seconds"] == pytest.approx(0.32)
    assert replaced["replaced"] == ["sinks (rope) of a.json by c.json"]
    # an Exp 10 row over all lengths clashes with a per-length row of the same model
    whole = {"device": "gpu", "experiments": [_row("context-length", "rope", 9.0, 8.0)]}
    with pytest.raises(ValueError, match="context-length"):
        combine([part2, whole], ["b.json", "d.json"])
    # replacing one length keeps the other lengths' rows and names the length it replaced
    redo = {"device": "gpu", "experiments": [_row("context-length", "rope", 6.5, 6.0, [1024])]}
    per_length = combine([part2, redo], ["b.json", "e.json"], replace=True)
    assert per_length["replaced"] == ["context-length @ 1024 (rope) of b.json by e.json"]
    assert per_length["total_seconds"] == pytest.approx(11.5)
    assert per_length["total_ratio"] == pytest.approx(11.5 / 10.0)
