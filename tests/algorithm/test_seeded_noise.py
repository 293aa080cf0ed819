import pytest
import torch
from scipy.stats import kstest

from sglang_dspark.algorithm.sampling import sample_from_probs
from sglang_dspark.algorithm.seeded_noise import (
    DRAFT_STREAM,
    VERIFY_STREAM,
    seeded_uniforms,
    uniforms_for_batch,
)


def test_same_seed_and_position_give_same_noise_anywhere_in_a_batch() -> None:
    alone = seeded_uniforms(torch.tensor([42]), torch.tensor([7]), DRAFT_STREAM, 5)
    batch = seeded_uniforms(torch.tensor([1, 42, 3]), torch.tensor([7, 7, 9]), DRAFT_STREAM, 5)
    assert torch.equal(alone[0], batch[1])
    assert not torch.equal(batch[0], batch[1])


@pytest.mark.parametrize(
    "other",
    [
        (torch.tensor([43]), torch.tensor([7]), DRAFT_STREAM),  # seed
        (torch.tensor([42]), torch.tensor([8]), DRAFT_STREAM),  # position
        (torch.tensor([42]), torch.tensor([7]), VERIFY_STREAM),  # stream
        (torch.tensor([42 + (1 << 32)]), torch.tensor([7]), DRAFT_STREAM),  # high seed bits
    ],
)
def test_any_input_change_changes_the_noise(other) -> None:
    base = seeded_uniforms(torch.tensor([42]), torch.tensor([7]), DRAFT_STREAM, 8)
    assert not torch.equal(base, seeded_uniforms(*other, 8))


def test_noise_is_uniform_on_the_open_interval() -> None:
    seeds = torch.arange(4000, dtype=torch.int64) * 104729 - (1 << 40)
    u = seeded_uniforms(seeds, torch.arange(4000) % 13, DRAFT_STREAM, 5).flatten()
    assert float(u.min()) > 0.0 and float(u.max()) < 1.0
    assert kstest(u.numpy(), "uniform").pvalue > 1e-3
    # Columns of one row are not correlated with each other.
    v = u.view(4000, 5)
    assert abs(float(torch.corrcoef(v.T)[0, 1])) < 0.05


def test_batch_mixes_seeded_rows_and_generator_rows() -> None:
    gen = torch.Generator().manual_seed(0)
    positions = torch.tensor([3, 4, 5])
    out = uniforms_for_batch([None, 11, None], positions, VERIFY_STREAM, 4, gen)
    assert out.shape == (3, 4) and out.dtype == torch.float64
    expected = seeded_uniforms(torch.tensor([11]), torch.tensor([4]), VERIFY_STREAM, 4)[0]
    assert torch.equal(out[1], expected)
    again = uniforms_for_batch([None, 11, None], positions, VERIFY_STREAM, 4, torch.Generator().manual_seed(1))
    assert torch.equal(again[1], out[1]) and not torch.equal(again[0], out[0])


def test_inverse_cdf_sampling_follows_probs_and_skips_zero_mass() -> None:
    probs = torch.tensor([0.0, 0.4, 0.0, 0.35, 0.25])
    n = 20000
    u = seeded_uniforms(torch.arange(n), torch.zeros(n, dtype=torch.int64), DRAFT_STREAM, 1)[:, 0]
    draws = sample_from_probs(probs.expand(n, -1), uniforms=u)
    counts = torch.bincount(draws, minlength=5).double()
    assert counts[0] == 0 and counts[2] == 0
    expected = probs[[1, 3, 4]].double() * n
    chi2 = float(((counts[[1, 3, 4]] - expected) ** 2 / expected).sum())
    assert chi2 < 13.82  # df=2, p=0.001
    # Edge noise never selects a zero-probability token.
    edges = sample_from_probs(probs.expand(2, -1), uniforms=torch.tensor([1e-12, 1 - 1e-12]))
    assert edges.tolist() == [1, 4]
