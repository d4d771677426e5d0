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
