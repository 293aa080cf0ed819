"""logits_to_probs: greedy, temperature, top-k/top-p (joint), per-row params."""

from __future__ import annotations

import math

import pytest
import torch

from sglang_dspark.algorithm.sampling import SamplingParams, logits_to_probs, sample_from_probs


def probs_of(logits, temperature, top_p=1.0, top_k=0):
    params = SamplingParams.create(temperature, top_p, top_k, batch_size=logits.shape[0])
    return logits_to_probs(logits, params.temperature, params.top_p, params.top_k)


def test_greedy_is_one_hot_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.9], [5.0, 0.0, 0.0, 4.0]])
    probs = probs_of(logits, 0.0)
    assert torch.equal(probs, torch.tensor([[0.0, 1, 0, 0], [1.0, 0, 0, 0]]))


def test_temperature_softmax_and_rows_sum_to_one():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 17)
    probs = probs_of(logits, 0.7)
    torch.testing.assert_close(probs, torch.softmax(logits / 0.7, -1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 2))


def test_top_k_keeps_exactly_the_k_largest():
    torch.manual_seed(1)
    logits = torch.randn(4, 50)
    probs = probs_of(logits, 1.0, top_k=5)
    assert ((probs > 0).sum(-1) == 5).all()
    top = logits.topk(5, dim=-1).indices
    assert torch.equal((probs > 0), torch.zeros_like(probs, dtype=torch.bool).scatter(-1, top, True))
    kept = torch.softmax(logits, -1).gather(-1, top)
    torch.testing.assert_close(probs.gather(-1, top), kept / kept.sum(-1, keepdim=True))
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))


def test_top_p_hand_example():
    base = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    probs = probs_of(base.log(), 1.0, top_p=0.75)
    torch.testing.assert_close(probs, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    # the token that crosses top_p stays (mass before it, 0.5, is <= 0.6)
    probs = probs_of(base.log(), 1.0, top_p=0.6)
    torch.testing.assert_close(probs, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    probs = probs_of(base.log(), 1.0, top_p=0.4)
    torch.testing.assert_close(probs, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))


def test_top_p_one_keeps_tiny_tail():
    logits = torch.tensor([[30.0, 0.0, -30.0]])
    assert (probs_of(logits, 1.0, top_p=1.0) > 0).all()


def test_top_k_and_top_p_joint():
    base = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    # top_p alone keeps 3 tokens; top_k=2 cuts to 2.
    probs = probs_of(base.log(), 1.0, top_p=0.8, top_k=2)
    torch.testing.assert_close(probs, torch.tensor([[4 / 7, 3 / 7, 0.0, 0.0]]))
    # top_k=1 with a temperature is argmax too
    assert torch.equal(probs_of(base.log(), 2.0, top_k=1), torch.tensor([[1.0, 0, 0, 0]]))


def test_per_row_parameters_are_vectorised():
    torch.manual_seed(2)
    logits = torch.randn(4, 3, 30)
    temps, tops_p, tops_k = [0.0, 0.5, 1.3, 1.0], [1.0, 0.9, 0.5, 1.0], [0, 0, 7, 3]
    batched = probs_of(logits, temps, tops_p, tops_k)
    for b in range(4):
        row = probs_of(logits[b : b + 1], [temps[b]], [tops_p[b]], [tops_k[b]])
        torch.testing.assert_close(batched[b : b + 1], row)
    torch.testing.assert_close(batched.sum(-1), torch.ones(4, 3))


def test_sampling_follows_probs_chi_square():
    probs = torch.tensor([0.4, 0.25, 0.2, 0.1, 0.05])
    n = 20000
    gen = torch.Generator().manual_seed(123)
    draws = sample_from_probs(probs.expand(n, -1), generator=gen)
    counts = torch.bincount(draws, minlength=5).double()
    expected = probs.double() * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 18.47  # df=4, p=0.001
    # and a wrong hypothesis is rejected
    wrong = torch.full((5,), n / 5, dtype=torch.float64)
    assert float(((counts - wrong) ** 2 / wrong).sum()) > 100


def test_sampling_params_validation():
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        SamplingParams.create([-0.1])
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        SamplingParams.create([1.0], [0.0])
    with pytest.raises(ValueError, match="pass batch_size"):
        SamplingParams.create(1.0)
    with pytest.raises(ValueError, match="top_k has 1 entries for batch size 2"):
        SamplingParams.create([1.0, 1.0], [1.0, 1.0], [1])
    with pytest.raises(ValueError, match="share one shape"):
        SamplingParams(torch.zeros(2), torch.ones(3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        SamplingParams(torch.zeros(2), torch.ones(2), torch.zeros(2))
    params = SamplingParams.create([0.0, 0.8], [1.0, 0.9], [0, 4])
    assert params.is_greedy.tolist() == [True, False]
    sub = params.select(torch.tensor([1]))
    assert sub.batch_size == 1 and math.isclose(float(sub.top_p[0]), 0.9, rel_tol=1e-6)
    with pytest.raises(ValueError, match=r"temperature must have shape \[3\]"):
        logits_to_probs(torch.zeros(3, 5), params.temperature, params.top_p, params.top_k)


def test_min_p_drops_tokens_below_a_share_of_the_most_likely():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]]))
    one = torch.ones(2)
    probs = logits_to_probs(logits, one, one, torch.zeros(2, dtype=torch.long), torch.tensor([0.2, 0.0]))
    # Row 0: keep p >= 0.2 * 0.5 = 0.1 -> 0.5, 0.3, 0.15 renormalised; row 1: min_p 0 keeps all.
    assert torch.allclose(probs[0], torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95)
    assert torch.allclose(probs[1], torch.tensor([0.5, 0.3, 0.15, 0.05]))
