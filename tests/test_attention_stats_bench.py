"""``attention_stats_bench --compare`` times its settings in a rotated order, each under its setting.

The call right after the bare forward was slower on an H200 whatever its setting; with the order
rotated every round, each setting takes each place equally often."""

from __future__ import annotations

from drope_lens.benchmarks import attention_stats_bench as bench
from drope_lens.measurement import entropy


def test_compare_rotates_the_settings_and_applies_each(monkeypatch):
    seen = []  # (bare forwards so far, GRAM_BLOCKS in force) per statistics call: 1 for the warm-ups

    def study_calls(model, texts):
        rounds = []

        def bare():
            rounds.append(len(rounds))

        def everything():
            seen.append((len(rounds), entropy.GRAM_BLOCKS))

        return object(), bare, everything

    class Batch:
        shape = (10, 512)

    monkeypatch.setattr(bench, "study_calls", lambda model, texts: (Batch(), *study_calls(model, texts)[1:]))
    default = entropy.GRAM_BLOCKS
    settings = ["default", "entropy.GRAM_BLOCKS=1", "entropy.GRAM_BLOCKS=4"]
    rows = bench.compare_settings(None, ["t"] * 10, settings, repeat=3)
    timed = [values for bares, values in seen if bares > 1]
    assert [values for bares, values in seen if bares == 1] == [default, 1, 4]  # the warm-ups
    assert timed == [default, 1, 4, 1, 4, default, 4, default, 1]  # rounds start at setting r mod 3
    assert entropy.GRAM_BLOCKS == default  # restored
    assert [row["setting"] for row in rows] == settings and all(len(row["all_times_s"]) == 3 for row in rows)
