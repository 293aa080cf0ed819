"""bench.gate_abab's round order and ratios (the servers' part runs as a benchmark, not here)."""

from __future__ import annotations

import pytest

from bench.gate_abab import round_order, summarize


def test_order_alternates_between_rounds():
    assert [round_order(r) for r in range(4)] == [("plain", "dspark"), ("dspark", "plain")] * 2


def test_ratio_is_of_summed_tokens_over_summed_time():
    def level(tokens, wall):
        return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall, "requests": 8}

    rounds = [{"plain": level(100, 1.0), "dspark": level(100, 2.0), "identical": 8},
              {"plain": level(100, 3.0), "dspark": level(100, 1.0), "identical": 7}]
    s = summarize(rounds)
    assert s["ratio_per_round"] == pytest.approx([0.5, 3.0])
    # (200 / 3 s) / (200 / 4 s); the mean of the per-round ratios would be 1.75.
    assert s["ratio"] == pytest.approx(4.0 / 3.0)
    assert s["identical"] == 15 and s["requests"] == 16
