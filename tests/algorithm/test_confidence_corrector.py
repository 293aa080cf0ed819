import pytest
import torch

from sglang_dspark.algorithm.confidence_corrector import (
    ConfidenceCorrector,
    ConfidenceCorrectorConfig,
    observed_outcomes,
)
from sglang_dspark.algorithm.prefix_scheduler import schedule_prefixes
from sglang_dspark.algorithm.sps_table import SpsTable


def test_observed_outcomes() -> None:
    observed, accepted = observed_outcomes(torch.tensor([0, 3, 3, 4]), torch.tensor([0, 1, 3, 0]), 4)
    assert observed.tolist() == [
        [False] * 4,
        [True, True, False, False],  # position 2 rejected, 3 never judged
        [True, True, True, False],  # all verified accepted, 4 not verified
        [True, False, False, False],
    ]
    assert (accepted & observed).tolist() == [
        [False] * 4,
        [True, False, False, False],
        [True, True, True, False],
        [False] * 4,
    ]


def test_fresh_corrector_is_the_identity() -> None:
    c = ConfidenceCorrector(ConfidenceCorrectorConfig(block_size=3))
    conf = torch.rand(5, 3)
    assert torch.equal(c.correct(conf), conf)


def simulate(corrector: ConfidenceCorrector, claimed: float, true_rate: float, steps: int, batch: int = 8,
             seed: int = 0) -> None:
    """Drafter claims ``claimed`` at every position; each position is truly accepted with ``true_rate``."""
    g = torch.Generator().manual_seed(seed)
    k = corrector.config.block_size
    for _ in range(steps):
        conf = torch.full((batch, k), claimed)
        verify = torch.full((batch,), k)
        # Number of accepted drafts = leading successes.
        hits = torch.rand(batch, k, generator=g) < true_rate
        accepted = hits.long().cumprod(dim=1).sum(dim=1)
        corrector.update(conf, verify, accepted)


def test_learns_the_measured_acceptance_per_position() -> None:
    c = ConfidenceCorrector(ConfidenceCorrectorConfig(block_size=4, halflife_steps=1000))
    simulate(c, claimed=0.9, true_rate=0.3, steps=400)
    corrected = c.correct(torch.full((1, 4), 0.9))[0]
    assert corrected[:2].tolist() == pytest.approx([0.3, 0.3], abs=0.04)


def test_under_confidence_is_raised_but_clamped() -> None:
    c = ConfidenceCorrector(ConfidenceCorrectorConfig(block_size=2, halflife_steps=1000))
    simulate(c, claimed=0.4, true_rate=0.8, steps=400)
    corrected = c.correct(torch.tensor([[0.4, 0.4], [0.9, 0.9]]))
    assert corrected[0, 0].item() == pytest.approx(0.8, abs=0.05)
    assert corrected[1].tolist() == [1.0, 1.0]


def test_written_off_positions_drift_back_to_the_head() -> None:
    c = ConfidenceCorrector(ConfidenceCorrectorConfig(block_size=2, halflife_steps=20))
    simulate(c, claimed=0.9, true_rate=0.0, steps=50)
    assert c.scale[0] < 0.1
    # Nothing verified (the scheduler stopped verifying): the evidence decays, the prior returns.
    for _ in range(200):
        c.update(torch.full((4, 2), 0.9), torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    assert c.scale[0] > 0.9


def test_corrected_confidences_stop_the_scheduler_verifying_rejected_drafts() -> None:
    sps = SpsTable(token_counts=(1, 64, 256), steps_per_second=(10.0, 9.0, 6.0))
    claimed = torch.full((32, 4), 0.95)
    assert schedule_prefixes(claimed, sps).sum() > 0
    c = ConfidenceCorrector(ConfidenceCorrectorConfig(block_size=4))
    simulate(c, claimed=0.95, true_rate=0.0, steps=20, batch=32)
    assert schedule_prefixes(c.correct(claimed), sps).sum() == 0


def test_validation() -> None:
    with pytest.raises(ValueError):
        ConfidenceCorrectorConfig(block_size=0)
    with pytest.raises(ValueError):
        ConfidenceCorrectorConfig(block_size=2, prior_observations=0)
    with pytest.raises(ValueError):
        ConfidenceCorrectorConfig(block_size=2, halflife_steps=0)
    c = ConfidenceCorrector(ConfidenceCorrectorConfig(block_size=2))
    with pytest.raises(ValueError):
        c.update(torch.ones(1, 3), torch.ones(1, dtype=torch.long), torch.ones(1, dtype=torch.long))
