"""Issue 20's bar check on hand-made measurements (no model): which cells each bar reads, and
that a bar fails just past its threshold."""

from __future__ import annotations

from drope_lens.toy import bars


def _cells(values: dict) -> list[dict]:
    return [{"format": f, "multiple": m, "length": 256 * m, "scaling": c, "accuracy": a, "low": 0.0, "high": 1.0,
             "n": 50} for (f, m, c), a in values.items()]


def _measured(cells: dict, disc_low: float = 0.1, ppl: float = 2.0, cities: float = 0.9) -> dict:
    verification = [{"format": f, "length": 256, "discrimination": 0.5, "disc_low": disc_low} for f in ("simple", "ruler")]
    return {"cells": _cells(cells), "verification": verification, "heldout_ppl": ppl, "cities": cities}


def test_bars_read_the_right_cells_and_thresholds():
    rope = _measured({("simple", 1, 0.0): 0.9, ("ruler", 1, 0.0): 0.95, ("simple", 2, 0.0): 0.25})
    drope = _measured({("simple", 1, 0.0): 1.0, ("ruler", 1, 0.0): 0.9, ("simple", 2, 0.0): 0.58, ("simple", 4, 0.0): 0.1,
                       ("simple", 2, 0.2): 0.6, ("simple", 4, 0.2): 0.3}, ppl=2.6)
    unscaled = bars.check(rope, drope)
    assert not unscaled["drope simple 2x"]["met"] and not unscaled["drope simple 4x"]["met"]
    assert unscaled["rope simple 2x"]["met"] and unscaled["rope simple 1x"]["met"] and unscaled["drope ruler 1x"]["met"]
    assert unscaled["held-out perplexity DroPE / RoPE"]["value"] == 1.3 and unscaled["held-out perplexity DroPE / RoPE"]["met"]
    scaled = bars.check(rope, drope, 0.2)
    assert scaled["drope simple 2x c=0.2"]["met"] and scaled["drope simple 4x c=0.2"]["met"]
    assert all(v["met"] for v in scaled.values())
    worse = bars.check(_measured({("simple", 1, 0.0): 0.89, ("ruler", 1, 0.0): 1.0, ("simple", 2, 0.0): 0.26}, disc_low=-0.01,
                                 cities=0.79), drope, 0.2)
    assert [k for k, v in worse.items() if not v["met"]] == ["rope simple 1x", "rope verification simple 1x",
                                                            "rope verification ruler 1x", "rope simple 2x", "rope cities"]
    assert "| simple | 512 (2x) | 0.2 | " in bars.table(rope, drope, (0.2,))
