"""Tests for sglang_dspark.algorithm.verify.

The losslessness tests draw each position's target and draft distribution
independently of the prefix, so the committed token at position j (given that
it was committed) must follow the target distribution of position j exactly.
A chi-square test checks this on one large batch; the power test shows that
the same check rejects deliberately broken verification rules.
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from sglang_dspark.algorithm.seeded_noise import VERIFY_STREAM, seeded_uniforms
from sglang_dspark.algorithm.verify import VerifyResult, verify_block

BATCH = 40_000
K = 4
P_THRESHOLD = 1e-4


def _dirichlet(n: int, v: int, alpha: float, gen: torch.Generator) -> torch.Tensor:
    g = torch._standard_gamma(torch.full((n, v), alpha, dtype=torch.float64), generator=gen)
    return g / g.sum(-1, keepdim=True)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.sum(-1, keepdim=True)


def _scenario(name: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position target [K + 1, V] and draft [K, V] distributions."""
    if name == "dirichlet":
        return _dirichlet(K + 1, 16, 0.5, gen), _dirichlet(K, 16, 0.5, gen)
    if name == "disjoint_support":
        # Draft has no mass on half the tokens the target uses, and mass on
        # tokens the target never produces.
        v = 12
        target = _dirichlet(K + 1, v, 1.0, gen)
        target[:, 9:] = 0
        draft = _dirichlet(K, v, 1.0, gen)
        draft[:, :3] = 0
        return _normalise(target), _normalise(draft)
    if name == "identical":
        target = _dirichlet(K + 1, 8, 1.0, gen)
        return target, target[:K].clone()
    if name == "near_deterministic_draft":
        v = 32
        target = _dirichlet(K + 1, v, 0.3, gen)
        draft = torch.full((K, v), 0.03 / (v - 1), dtype=torch.float64)
        draft[torch.arange(K), target[:K].argmax(-1)] = 0.97
        return target, draft
    if name == "random_verify_lens":
        return _dirichlet(K + 1, 20, 0.7, gen), _dirichlet(K, 20, 0.7, gen)
    raise AssertionError(name)


SCENARIOS = ["dirichlet", "disjoint_support", "identical", "near_deterministic_draft", "random_verify_lens"]


def _sample_batch(name: str, seed: int):
    gen = torch.Generator().manual_seed(seed)
    target, draft = _scenario(name, gen)
    draft_tokens = torch.stack(
        [torch.multinomial(draft[k], BATCH, replacement=True, generator=gen) for k in range(K)], dim=1
    )
    target_probs = target.expand(BATCH, K + 1, -1)
    draft_probs = draft.expand(BATCH, K, -1)
    verify_lens = None
    if name == "random_verify_lens":
        verify_lens = torch.randint(0, K + 1, (BATCH,), generator=gen)
    return gen, target, draft_tokens, draft_probs, target_probs, verify_lens


def _chi2_pvalue(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of ``tokens`` being i.i.d. from ``probs``; 0 if any token is off-support."""
    counts = torch.bincount(tokens, minlength=probs.numel()).double()
    support = probs > 0
    if counts[~support].sum() > 0:
        return 0.0
    expected = probs[support] * counts.sum()
    observed = counts[support]
    # Pool the rare categories so every expected count is at least 5.
    rare = expected < 5
    if rare.any():
        expected = torch.cat([expected[~rare], expected[rare].sum().view(1)])
        observed = torch.cat([observed[~rare], observed[rare].sum().view(1)])
    if expected.numel() < 2:
        return 1.0
    return float(chisquare(observed.numpy(), expected.numpy()).pvalue)


def _position_pvalues(result: VerifyResult, target: torch.Tensor, positions=(0, 1, 2)) -> list[float]:
    pvalues = []
    for j in positions:
        committed = result.num_committed > j
        assert committed.sum() > 1000, "too few samples to test this position"
        pvalues.append(_chi2_pvalue(result.tokens[committed, j], target[j]))
    return pvalues


@pytest.mark.parametrize("name", SCENARIOS)
def test_committed_tokens_follow_target_distribution(name: str) -> None:
    gen, target, draft_tokens, draft_probs, target_probs, verify_lens = _sample_batch(name, seed=1234)
    result = verify_block(draft_tokens, draft_probs, target_probs, generator=gen, verify_lens=verify_lens)

    lens = torch.full((BATCH,), K) if verify_lens is None else verify_lens
    assert result.tokens.shape == (BATCH, K + 1)
    assert bool((result.num_accepted <= lens).all())
    positions = torch.arange(K + 1)
    committed = positions < result.num_committed[:, None]
    assert bool((result.tokens[~committed] == -1).all())
    assert bool((result.tokens[committed] >= 0).all())
    if name == "identical":
        assert bool((result.num_accepted == K).all())

    pvalues = _position_pvalues(result, target)
    assert min(pvalues) > P_THRESHOLD, pvalues


def _broken_verify(draft_tokens, draft_probs, target_probs, gen, rule: str) -> VerifyResult:
    """Independent re-implementation of verification with a deliberate bug."""
    batch, k = draft_tokens.shape
    p_t = target_probs[:, :k].gather(-1, draft_tokens[..., None]).squeeze(-1)
    p_d = draft_probs.gather(-1, draft_tokens[..., None]).squeeze(-1)
    u = torch.rand((batch, k), generator=gen, dtype=torch.float64)
    accept = torch.ones_like(p_t, dtype=torch.bool) if rule == "always_accept" else u * p_d < p_t
    n = accept.long().cumprod(1).sum(1)
    rows = torch.arange(batch)
    dist = target_probs[rows, n]
    if rule == "residual":  # the correct rule, as a sanity check of the harness
        residual = (dist - draft_probs[rows, n.clamp(max=k - 1)]).clamp(min=0)
        dist = torch.where((n < k)[:, None], residual, dist)
    # rule == "correction_from_target": corrections drawn from p_t, not the residual.
    final = torch.multinomial(dist, 1, generator=gen).squeeze(-1)
    tokens = torch.cat([draft_tokens, torch.full((batch, 1), -1)], 1)
    tokens = torch.where(torch.arange(k + 1) < n[:, None], tokens, -1)
    tokens[rows, n] = final
    return VerifyResult(num_accepted=n, tokens=tokens)


@pytest.mark.parametrize("rule", ["correction_from_target", "always_accept"])
def test_chi_square_check_detects_broken_rules(rule: str) -> None:
    gen, target, draft_tokens, draft_probs, target_probs, _ = _sample_batch("dirichlet", seed=99)
    broken = _broken_verify(draft_tokens, draft_probs, target_probs, gen, rule)
    assert min(_position_pvalues(broken, target)) < 1e-12


def test_reference_harness_passes_with_correct_rule() -> None:
    gen, target, draft_tokens, draft_probs, target_probs, _ = _sample_batch("dirichlet", seed=99)
    reference = _broken_verify(draft_tokens, draft_probs, target_probs, gen, "residual")
    assert min(_position_pvalues(reference, target)) > P_THRESHOLD


def test_reproducible_with_generator() -> None:
    gen, _, draft_tokens, draft_probs, target_probs, _ = _sample_batch("dirichlet", seed=5)
    a = verify_block(draft_tokens[:512], draft_probs[:512], target_probs[:512], generator=torch.Generator().manual_seed(7))
    b = verify_block(draft_tokens[:512], draft_probs[:512], target_probs[:512], generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.num_accepted, b.num_accepted)


def _one_hot_logits(chain: list[list[int]], v: int = 6) -> torch.Tensor:
    logits = torch.randn(len(chain), len(chain[0]), v, generator=torch.Generator().manual_seed(0))
    for b, row in enumerate(chain):
        for j, tok in enumerate(row):
            logits[b, j, tok] = 10.0
    return logits


def test_greedy_hand_built_cases() -> None:
    # Target argmax chain per request (K = 3, so K + 1 = 4 positions).
    chain = [[1, 2, 3, 4], [1, 2, 3, 4], [5, 0, 1, 2], [3, 3, 3, 3]]
    logits = _one_hot_logits(chain)
    drafts = torch.tensor([[1, 2, 0], [1, 2, 3], [4, 0, 1], [3, 3, 3]])
    result = verify_block(drafts, None, logits, greedy=True)
    assert result.num_accepted.tolist() == [2, 3, 0, 3]
    assert result.num_committed.tolist() == [3, 4, 1, 4]
    assert result.tokens.tolist() == [
        [1, 2, 3, -1],
        [1, 2, 3, 4],
        [5, -1, -1, -1],
        [3, 3, 3, 3],
    ]


def test_greedy_respects_verify_lens() -> None:
    chain = [[1, 2, 3, 4]] * 4
    logits = _one_hot_logits(chain)
    drafts = torch.tensor([[1, 2, 3]] * 4)
    result = verify_block(drafts, None, logits, greedy=True, verify_lens=torch.tensor([0, 1, 2, 3]))
    assert result.num_accepted.tolist() == [0, 1, 2, 3]
    assert result.tokens.tolist() == [
        [1, -1, -1, -1],
        [1, 2, -1, -1],
        [1, 2, 3, -1],
        [1, 2, 3, 4],
    ]


def test_greedy_matches_argmax_chain_randomised() -> None:
    gen = torch.Generator().manual_seed(3)
    b, k, v = 2000, 6, 11
    logits = torch.randn(b, k + 1, v, generator=gen)
    argmax = logits.argmax(-1)
    drafts = torch.where(torch.rand(b, k, generator=gen) < 0.8, argmax[:, :k], torch.randint(0, v, (b, k), generator=gen))
    lens = torch.randint(0, k + 1, (b,), generator=gen)
    result = verify_block(drafts, None, logits, greedy=True, verify_lens=lens)

    for row in range(b):
        expected_n = 0
        while expected_n < lens[row] and drafts[row, expected_n] == argmax[row, expected_n]:
            expected_n += 1
        n = int(result.num_accepted[row])
        assert n == expected_n
        assert result.tokens[row, : n + 1].tolist() == argmax[row, : n + 1].tolist()
        assert bool((result.tokens[row, n + 1 :] == -1).all())


def test_sampling_verify_len_zero_is_plain_decoding() -> None:
    target = torch.zeros(3, 4, 5)
    target[:, :, 2] = 1.0  # every target row is one-hot at token 2
    draft = torch.full((3, 3, 5), 0.2)
    result = verify_block(
        torch.tensor([[2, 2, 2]] * 3), draft, target,
        verify_lens=torch.tensor([0, 0, 0]), generator=torch.Generator().manual_seed(0),
    )
    assert result.num_accepted.tolist() == [0, 0, 0]
    assert result.tokens.tolist() == [[2, -1, -1, -1]] * 3


def test_zero_mass_residual_falls_back_to_target() -> None:
    # Target not normalised like the draft: every rejection leaves an empty residual.
    target = torch.tensor([0.25, 0.25, 0.0]).expand(4000, 3, 3).contiguous()
    draft = torch.tensor([0.5, 0.5, 0.0]).expand(4000, 2, 3).contiguous()
    drafts = torch.randint(0, 2, (4000, 2), generator=torch.Generator().manual_seed(1))
    result = verify_block(drafts, draft, target, generator=torch.Generator().manual_seed(2))
    rejected = result.num_accepted < 2
    assert rejected.any()
    final = result.tokens[torch.arange(4000), result.num_accepted]
    assert bool(((final == 0) | (final == 1)).all())


def test_zero_draft_probability_guard() -> None:
    target = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    draft = torch.tensor([[[1.0, 0.0, 0.0]], [[1.0, 0.0, 0.0]]])
    # Row 0 drafts token 1 with p_d = 0 but p_t = 1: accepted. Row 1 drafts
    # token 2 with p_d = 0 and p_t = 0: rejected, correction from the residual.
    drafts = torch.tensor([[1], [2]])
    result = verify_block(drafts, draft, target, generator=torch.Generator().manual_seed(0))
    assert result.num_accepted.tolist() == [1, 0]
    assert result.tokens.tolist() == [[1, 2], [0, -1]]


def test_low_precision_inputs_and_validation() -> None:
    gen, target, draft_tokens, draft_probs, target_probs, _ = _sample_batch("dirichlet", seed=11)
    result = verify_block(
        draft_tokens[:64], draft_probs[:64].bfloat16(), target_probs[:64].bfloat16(),
        generator=torch.Generator().manual_seed(0),
    )
    assert result.tokens.dtype == torch.long and result.num_accepted.dtype == torch.long
    with pytest.raises(ValueError, match="draft_probs is required"):
        verify_block(draft_tokens[:4], None, target_probs[:4])
    with pytest.raises(ValueError, match="target_probs"):
        verify_block(draft_tokens[:4], draft_probs[:4], target_probs[:4, :K])
    with pytest.raises(ValueError, match="verify_lens"):
        verify_block(draft_tokens[:4], draft_probs[:4], target_probs[:4], verify_lens=torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("name", ["dirichlet", "random_verify_lens"])
def test_uniform_noise_path_follows_target_distribution(name: str) -> None:
    """The per-request-seed path (explicit uniforms) is lossless too."""
    gen, target, draft_tokens, draft_probs, target_probs, verify_lens = _sample_batch(name, seed=99)
    seeds = torch.arange(BATCH, dtype=torch.int64) * 7919 - 12345
    uniforms = seeded_uniforms(seeds, torch.full((BATCH,), 17), VERIFY_STREAM, K + 1)
    result = verify_block(
        draft_tokens, draft_probs, target_probs, verify_lens=verify_lens, uniforms=uniforms
    )
    assert min(_position_pvalues(result, target)) > P_THRESHOLD


def test_uniform_noise_fixes_the_outcome_per_row() -> None:
    """A row's result depends only on its own noise, not on the rest of the batch."""
    gen, _, draft_tokens, draft_probs, target_probs, _ = _sample_batch("dirichlet", seed=5)
    uniforms = torch.rand((BATCH, K + 1), generator=gen, dtype=torch.float64)
    full = verify_block(draft_tokens, draft_probs, target_probs, uniforms=uniforms)
    rows = torch.tensor([3, 10, 11])
    part = verify_block(
        draft_tokens[rows], draft_probs[rows], target_probs[rows], uniforms=uniforms[rows]
    )
    assert torch.equal(part.tokens, full.tokens[rows])
    with pytest.raises(ValueError, match="uniforms must be"):
        verify_block(draft_tokens, draft_probs, target_probs, uniforms=uniforms[:, :K])
