"""The online verify-step cost curve the prefix scheduler uses without a profiled SPS table."""

from __future__ import annotations

import pytest
import torch

from sglang_dspark.algorithm.prefix_scheduler import schedule_prefixes
from sglang_dspark.algorithm.sps_table import default_sps_table
from sglang_dspark.algorithm.step_cost import OnlineStepCost, StepCostConfig


def _feed(cost: OnlineStepCost, batch_size: int, steps: int, base: float, per_token: float) -> None:
    # Alternate plain steps (n = B) and speculative ones (up to 8 tokens per request), as the gate does.
    for i in range(steps):
        n = batch_size if i % 2 == 0 else batch_size * (1 + i % 8)
        cost.record(batch_size, n, base + per_token * n)


def test_fit_recovers_the_line_and_replaces_the_prior_only_after_enough_steps():
    prior = default_sps_table("cpu")
    cost = OnlineStepCost(prior, StepCostConfig(min_steps=32, refit_steps=16))
    _feed(cost, 1, 31, base=0.040, per_token=0.002)
    assert cost.curve(1) is prior
    _feed(cost, 1, 33, base=0.040, per_token=0.002)
    curve = cost.curve(1)
    assert curve is not prior
    assert curve.step_time(1) == pytest.approx(0.042, abs=1e-4)
    assert curve.step_time(8) == pytest.approx(0.056, abs=1e-4)
    assert cost.curve(2) is prior  # another bucket: nothing measured there yet
    summary = cost.summary()
    assert summary["1"]["per_token_ms"] == pytest.approx(2.0, rel=1e-3)


def test_no_spread_in_the_token_counts_keeps_the_prior():
    prior = default_sps_table("cpu")
    cost = OnlineStepCost(prior, StepCostConfig(min_steps=4, refit_steps=1))
    for _ in range(64):
        cost.record(2, 2, 0.05)  # plain steps only: the slope is unknown
    assert cost.curve(2) is prior
    assert cost.summary() == {"2": "prior"}


def test_bad_samples_are_ignored_and_a_falling_fit_is_clamped_flat():
    prior = default_sps_table("cpu")
    cost = OnlineStepCost(prior, StepCostConfig(min_steps=4, refit_steps=1))
    cost.record(4, 3, 0.05)  # fewer tokens than requests
    cost.record(4, 8, float("nan"))
    assert cost.summary() == {}
    for i in range(16):
        n = 4 + 4 * (i % 2)
        cost.record(4, n, 0.06 - 0.001 * n)  # longer steps measured faster: noise, not hardware
    curve = cost.curve(4)
    assert curve.step_time(4) == pytest.approx(curve.step_time(32))


def test_a_steep_measured_curve_makes_the_scheduler_verify_less():
    confidence = torch.tensor([[0.8, 0.6, 0.5, 0.5, 0.5, 0.5, 0.5]])
    flat = OnlineStepCost(default_sps_table("cpu"), StepCostConfig(min_steps=32, refit_steps=16))
    steep = OnlineStepCost(default_sps_table("cpu"), StepCostConfig(min_steps=32, refit_steps=16))
    _feed(flat, 1, 64, base=0.044, per_token=0.00001)
    _feed(steep, 1, 64, base=0.044, per_token=0.004)
    long = int(schedule_prefixes(confidence, flat.curve(1))[0])
    short = int(schedule_prefixes(confidence, steep.curve(1))[0])
    assert long == 7 and short < long


def test_config_is_validated():
    with pytest.raises(ValueError):
        StepCostConfig(halflife_steps=0)
    with pytest.raises(ValueError):
        StepCostConfig(min_steps=1)
    with pytest.raises(ValueError):
        StepCostConfig(min_spread_tokens=0)
