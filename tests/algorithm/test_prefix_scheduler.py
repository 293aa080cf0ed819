"""Tests for sglang_dspark.algorithm.prefix_scheduler."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sglang_dspark.algorithm.prefix_scheduler import (
    DelayedPrefixScheduler,
    DelayedSchedulerConfig,
    plan_prefixes,
    schedule_prefixes,
)
from sglang_dspark.algorithm.sps_table import SpsTable, default_sps_table


def _flat(n: int) -> float:
    return 100.0


def _linear(n: int) -> float:
    return 1.0 / (0.01 + 0.001 * n)


def _saturating(n: int) -> float:
    # Memory bound up to 6 tokens, then compute bound.
    return 1.0 / (0.01 * max(1.0, n / 6.0))


def _steep(n: int) -> float:
    return 1.0 / (0.01 * n)


_TABLE = SpsTable(token_counts=(1, 4, 8, 16), steps_per_second=(100.0, 95.0, 60.0, 25.0))

SPS_CURVES = {"flat": _flat, "linear": _linear, "saturating": _saturating, "steep": _steep, "table": _TABLE}


def _theta(confidence: torch.Tensor, lengths: list[int], sps) -> float:
    survival = confidence.double().cumprod(dim=1)
    expected = sum(1.0 + float(survival[r, :length].sum()) for r, length in enumerate(lengths))
    return expected * float(sps(sum(1 + length for length in lengths)))


def _brute_force(confidence: torch.Tensor, sps, budget: int | None) -> tuple[float, list[int]]:
    batch, k = confidence.shape
    best_theta, best_lengths = -math.inf, None
    for lengths in itertools.product(range(k + 1), repeat=batch):
        total = sum(1 + length for length in lengths)
        if budget is not None and total > max(budget, batch):
            continue
        theta = _theta(confidence, list(lengths), sps)
        if theta > best_theta + 1e-12:
            best_theta, best_lengths = theta, list(lengths)
    return best_theta, best_lengths


@pytest.mark.parametrize("curve", list(SPS_CURVES))
@pytest.mark.parametrize("budget", [None, 5, 9])
def test_matches_brute_force(curve: str, budget: int | None) -> None:
    sps = SPS_CURVES[curve]
    gen = torch.Generator().manual_seed(list(SPS_CURVES).index(curve) * 100 + (budget or 0))
    for _ in range(12):
        batch = int(torch.randint(1, 5, (1,), generator=gen))
        k = int(torch.randint(1, 5, (1,), generator=gen))
        confidence = torch.rand(batch, k, generator=gen) ** 0.5
        best_theta, best_lengths = _brute_force(confidence, sps, budget)

        plan = plan_prefixes(confidence, sps, max_verify_tokens=budget)
        lengths = plan.lengths.tolist()
        theta = _theta(confidence, lengths, sps)
        assert theta == pytest.approx(best_theta, rel=1e-9, abs=1e-12), (confidence, lengths, best_lengths)
        assert lengths == best_lengths
        assert plan.expected_throughput == pytest.approx(theta, rel=1e-9)
        assert plan.total_verify_tokens == sum(1 + length for length in lengths)
        assert torch.equal(schedule_prefixes(confidence, sps, max_verify_tokens=budget), plan.lengths)


def test_does_not_stop_at_first_drop() -> None:
    # Going from 1 to 2 verified tokens costs a whole tier (e.g. a padded
    # graph size); past it the extra tokens are free, so verifying the whole
    # block wins although Theta first drops.
    def tiered(n: int) -> float:
        return 100.0 if n == 1 else 50.0

    plan = plan_prefixes(torch.full((1, 4), 0.9), tiered)
    assert plan.lengths.tolist() == [4]
    assert plan.expected_throughput == pytest.approx((1 + 0.9 + 0.81 + 0.729 + 0.6561) * 50)


def test_fewer_tokens_per_request_as_batch_grows() -> None:
    sps = default_sps_table("h100")  # knee at 256 tokens
    gen = torch.Generator().manual_seed(0)
    row = torch.rand(1, 7, generator=gen) * 0.2 + 0.75
    mean_lengths = []
    for batch in (1, 8, 32, 64, 128, 256):
        lengths = schedule_prefixes(row.expand(batch, -1), sps)
        mean_lengths.append(lengths.double().mean().item())
    assert mean_lengths[0] == 7
    assert all(b <= a for a, b in zip(mean_lengths, mean_lengths[1:])), mean_lengths
    assert mean_lengths[-1] < 1.5, mean_lengths


def test_lengths_respect_block_size_and_budget() -> None:
    gen = torch.Generator().manual_seed(1)
    for budget in (None, 1, 10, 40, 100, 1000):
        for batch, k in ((1, 5), (16, 7), (64, 16)):
            confidence = torch.rand(batch, k, generator=gen)
            lengths = schedule_prefixes(confidence, _flat, max_verify_tokens=budget)
            assert lengths.dtype == torch.long and lengths.shape == (batch,)
            assert bool(((lengths >= 0) & (lengths <= k)).all())
            if budget is not None:
                assert int((lengths + 1).sum()) <= max(budget, batch)
                if batch >= budget:
                    assert bool((lengths == 0).all())


def test_confident_requests_get_longer_prefixes() -> None:
    confidence = torch.tensor([[0.95] * 6, [0.6] * 6, [0.0] * 6])
    assert schedule_prefixes(confidence, _flat).tolist() == [6, 6, 0]
    lengths = schedule_prefixes(confidence, _linear).tolist()
    assert lengths[0] > lengths[1] > lengths[2] == 0
    assert schedule_prefixes(confidence, _steep).tolist() == [0, 0, 0]


def test_degenerate_inputs() -> None:
    assert bool((schedule_prefixes(torch.zeros(8, 5), _flat) == 0).all())
    assert bool((schedule_prefixes(torch.ones(8, 5), _flat) == 5).all())
    assert schedule_prefixes(torch.zeros(0, 5), _flat).shape == (0,)
    assert schedule_prefixes(torch.rand(3, 0), _flat).tolist() == [0, 0, 0]
    # NaN and out-of-range confidences are treated as 0 and clamped to [0, 1].
    confidence = torch.tensor([[float("nan"), 1.0], [2.0, 2.0]])
    assert schedule_prefixes(confidence, _flat).tolist() == [0, 2]
    with pytest.raises(ValueError, match="confidence must be"):
        schedule_prefixes(torch.rand(4), _flat)


def test_table_and_callable_agree() -> None:
    confidence = torch.rand(6, 4, generator=torch.Generator().manual_seed(2))
    a = schedule_prefixes(confidence, _TABLE)
    b = schedule_prefixes(confidence, lambda n: _TABLE(n))
    assert torch.equal(a, b)


def _delayed(**kwargs) -> DelayedPrefixScheduler:
    config = DelayedSchedulerConfig(block_size=4, **kwargs)
    return DelayedPrefixScheduler(config, _saturating)


def test_delayed_scheduler_uses_confidences_from_delay_steps_earlier() -> None:
    scheduler = _delayed(delay=2, prior_confidence=0.0)
    high = torch.full((1, 4), 0.99, dtype=torch.float64)
    low = torch.full((1, 4), 0.01, dtype=torch.float64)

    assert scheduler.plan(["a"]).lengths.tolist() == [0]  # step 0: prior only
    scheduler.record(["a"], high)  # confidences of step 0
    scheduler.forget(["unknown"])
    # Step 1 cannot see step 0's record yet; the prior is now the population
    # mean of what was recorded (0.99), so the unseen request gets it too.
    assert torch.equal(scheduler.confidence_for(["a"], step=1), high)
    scheduler.plan(["a"])
    scheduler.record(["a"], low)  # confidences of step 1
    # Step 2 uses step 0's record (high), not step 1's (low).
    expected = schedule_prefixes(high, _saturating)
    assert torch.equal(scheduler.plan(["a"]).lengths, expected)
    scheduler.record(["a"], low)
    # Step 3 uses step 1's record (low).
    assert torch.equal(scheduler.confidence_for(["a"]), low)


def test_delayed_scheduler_with_delay_one_is_synchronous() -> None:
    scheduler = _delayed(delay=1)
    confidence = torch.rand(3, 4, generator=torch.Generator().manual_seed(3))
    scheduler.plan(["x", "y", "z"])
    scheduler.record(["x", "y", "z"], confidence)
    plan = scheduler.plan(["z", "x", "y"])
    assert torch.equal(plan.lengths, schedule_prefixes(confidence[[2, 0, 1]], _saturating))


def test_delayed_scheduler_prior_and_memory_bounds() -> None:
    scheduler = _delayed(delay=1, prior_confidence=0.3, prior_momentum=0.5, max_requests=2)
    assert torch.allclose(scheduler.prior, torch.full((4,), 0.3, dtype=torch.float64))
    scheduler.plan(["a", "b"])
    scheduler.record(["a", "b"], torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]))
    assert torch.allclose(scheduler.prior, torch.full((4,), 0.5, dtype=torch.float64))
    scheduler.plan(["a", "b", "c"])
    scheduler.record(["c"], torch.ones(1, 4))
    assert torch.allclose(scheduler.prior, torch.full((4,), 0.75, dtype=torch.float64))
    assert len(scheduler) == 2  # "a", the least recently recorded, was evicted
    assert torch.equal(scheduler.confidence_for(["a"]), scheduler.prior[None])
    scheduler.forget(["b", "c"])
    assert len(scheduler) == 0

    # A request's history never grows beyond delay + 1 rows.
    scheduler = _delayed(delay=2)
    for _ in range(10):
        scheduler.plan(["a"])
        scheduler.record(["a"], torch.rand(1, 4))
    assert len(scheduler._records["a"]) == 3


def test_delayed_scheduler_validation() -> None:
    with pytest.raises(ValueError, match="delay"):
        DelayedSchedulerConfig(block_size=4, delay=0)
    with pytest.raises(ValueError, match="prior_confidence"):
        DelayedSchedulerConfig(block_size=4, prior_confidence=1.5)
    with pytest.raises(ValueError, match="block_size"):
        DelayedSchedulerConfig(block_size=0)
    scheduler = _delayed()
    with pytest.raises(ValueError, match="confidence must be"):
        scheduler.record(["a", "b"], torch.rand(2, 5))
