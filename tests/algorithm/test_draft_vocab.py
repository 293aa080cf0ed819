"""Reduced draft vocabulary: selection, EAGLE-3 maps, logits spreading, drafting and the loss."""

from __future__ import annotations

import pytest
import torch

from sglang_dspark.algorithm.block_drafting import draft_block
from sglang_dspark.algorithm.confidence_head import ConfidenceHead
from sglang_dspark.algorithm.draft_vocab import DraftVocab, DraftVocabError, draft_vocab_from_counts
from sglang_dspark.algorithm.markov_head import VanillaMarkovHead
from sglang_dspark.algorithm.sampling import SamplingParams
from sglang_dspark.train.loss import dspark_loss


def test_most_frequent_tokens_plus_forced_ids():
    counts = torch.tensor([5, 0, 9, 9, 1, 7, 0, 0])
    vocab = draft_vocab_from_counts(counts, 3, always=torch.tensor([6]))
    # 6 is forced in; of the rest the two most frequent, ties broken by the lower id.
    assert vocab.ids.tolist() == [2, 3, 6]
    assert vocab.coverage(counts) == pytest.approx(18 / 31)
    assert draft_vocab_from_counts(counts, 4).ids.tolist() == [0, 2, 3, 5]
    with pytest.raises(DraftVocabError):
        draft_vocab_from_counts(counts, 9)


def test_eagle3_maps_round_trip_and_are_checked():
    vocab = DraftVocab(torch.tensor([1, 4, 5, 9]), 10)
    assert vocab.d2t().tolist() == [1, 3, 3, 6]  # target id = row + d2t[row]
    back = DraftVocab.from_d2t(vocab.d2t(), vocab.membership(), 10)
    assert torch.equal(back.ids, vocab.ids)
    assert vocab.draft_index(torch.tensor([[9, 0], [4, 1]])).tolist() == [[3, -1], [1, 0]]
    bad_mask = vocab.membership().clone()
    bad_mask[0] = True
    with pytest.raises(DraftVocabError, match="t2d"):
        DraftVocab.from_d2t(vocab.d2t(), bad_mask, 10)
    with pytest.raises(DraftVocabError, match="increasing"):
        DraftVocab.from_d2t(torch.tensor([3, 0]), None, 10)
    with pytest.raises(DraftVocabError, match=r"\[0, 10\)"):
        DraftVocab(torch.tensor([2, 10]), 10)


def test_expand_logits_puts_minus_inf_outside():
    vocab = DraftVocab(torch.tensor([0, 3]), 5)
    full = vocab.expand_logits(torch.tensor([[1.0, 2.0]]))
    assert full[0, 0] == 1.0 and full[0, 3] == 2.0
    assert torch.isinf(full[0, [1, 2, 4]]).all()


def test_draft_block_drafts_only_in_vocab_and_matches_restricted_argmax():
    torch.manual_seed(0)
    V, Vd, B, K, H = 40, 12, 3, 4, 8
    vocab = DraftVocab(torch.sort(torch.randperm(V)[:Vd]).values, V)
    head = VanillaMarkovHead(vocab_size=V, markov_rank=4, out_vocab_size=Vd).requires_grad_(False)
    logits = torch.randn(B, K, Vd)
    hidden = torch.randn(B, K, H)
    anchors = torch.randint(0, V, (B,))
    greedy = draft_block(logits, hidden, anchors, head, None, SamplingParams.create(0.0, batch_size=B),
                         draft_vocab=vocab)
    assert greedy.probs.shape == (B, K, V)
    assert vocab.membership()[greedy.tokens].all()
    prev = anchors
    for k in range(K):  # the same chain computed in draft rows
        row = (logits[:, k] + head.step(prev).bias).argmax(dim=-1)
        assert torch.equal(vocab.ids[row], greedy.tokens[:, k])
        prev = greedy.tokens[:, k]
    sampled = draft_block(logits, hidden, anchors, head, None,
                          SamplingParams.create(1.0, batch_size=B), draft_vocab=vocab,
                          generator=torch.Generator().manual_seed(1))
    outside = ~vocab.membership()
    assert float(sampled.probs[..., outside].abs().max()) == 0.0
    assert torch.allclose(sampled.probs.sum(-1), torch.ones(B, K))


def test_loss_with_draft_vocab_equals_full_vocab_loss_with_zero_mass_outside():
    torch.manual_seed(1)
    V, Vd = 30, 10
    vocab = DraftVocab(torch.sort(torch.randperm(V)[:Vd]).values, V)
    draft = torch.randn(2, 5, Vd)
    target = torch.randn(2, 5, V)
    labels = vocab.ids[torch.randint(0, Vd, (2, 5))]
    mask = torch.ones(2, 5, dtype=torch.bool)
    reduced = dspark_loss(draft, target, labels, mask, draft_vocab=vocab)
    full = dspark_loss(vocab.expand_logits(draft), target, labels, mask)
    assert torch.allclose(reduced.l1, full.l1, atol=1e-5)
    assert torch.allclose(reduced.ce, full.ce, atol=1e-5)
    assert torch.allclose(reduced.accept_rate, full.accept_rate, atol=1e-5)


def test_cross_entropy_phase_uses_greedy_acceptance_and_skips_labels_outside():
    vocab = DraftVocab(torch.tensor([0, 2, 4]), 6)
    draft = torch.tensor([[[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]]])  # argmax ids 0, 2, 4
    labels = torch.tensor([[0, 4, 5]])  # right, wrong, outside the draft vocabulary
    out = dspark_loss(draft, None, labels, torch.ones(1, 3, dtype=torch.bool),
                      ce_alpha=1.0, decay_gamma=None, draft_vocab=vocab)
    assert out.accept_rate.tolist() == [1.0, 0.0, 0.0]
    assert float(out.l1) == 0.0
    expected = (torch.nn.functional.cross_entropy(draft[0, :2], torch.tensor([0, 2]), reduction="sum")) / 3
    assert torch.allclose(out.ce, expected, atol=1e-4)
    assert float(out.tau) == pytest.approx(2.0)


def test_constraint_that_allows_only_tokens_outside_the_vocab_still_drafts_a_distribution():
    V, Vd, B, K = 20, 5, 2, 3
    vocab = DraftVocab(torch.arange(Vd), V)
    head = VanillaMarkovHead(vocab_size=V, markov_rank=4, out_vocab_size=Vd).requires_grad_(False)
    logits = torch.randn(B, K, Vd)

    def only_outside(k, logits_k, prev):  # row 0: a grammar that allows token 19 only
        logits_k[0, :19] = float("-inf")

    for temperature in (0.0, 1.0):
        block = draft_block(logits, torch.zeros(B, K, 4), torch.tensor([1, 2]), head, None,
                            SamplingParams.create(temperature, batch_size=B), draft_vocab=vocab,
                            logits_processor=only_outside, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(block.probs).all()
        assert torch.allclose(block.probs.sum(-1), torch.ones(B, K))
        assert vocab.membership()[block.tokens].all()


@pytest.mark.parametrize("with_vocab", [False, True])
@torch.no_grad()
def test_greedy_fast_path_equals_the_processed_path_ties_included(with_vocab):
    # The all-greedy path argmaxes over draft rows and builds one-hot probs at the end; a
    # (no-op) logits processor takes the general path: spread, process, one-hot, argmax.
    torch.manual_seed(3)
    V, Vd, B, K, H = 40, 12, 3, 5, 8
    vocab = DraftVocab(torch.sort(torch.randperm(V)[:Vd]).values, V) if with_vocab else None
    rows = Vd if with_vocab else V
    head = VanillaMarkovHead(vocab_size=V, markov_rank=4, out_vocab_size=rows if with_vocab else None)
    head.requires_grad_(False)
    conf = ConfidenceHead(H, 4)
    logits = torch.randint(-2, 2, (B, K, rows)).float()  # many exact ties
    head.markov_w2.weight.zero_()  # no Markov bias: the ties stay ties
    hidden = torch.randn(B, K, H)
    anchors = torch.randint(0, V, (B,))
    params = SamplingParams.create(0.0, batch_size=B)
    fast = draft_block(logits, hidden, anchors, head, conf, params, draft_vocab=vocab)
    slow = draft_block(logits, hidden, anchors, head, conf, params, draft_vocab=vocab,
                       logits_processor=lambda k, row_logits, prev: None)
    assert torch.equal(fast.tokens, slow.tokens)
    assert torch.equal(fast.probs, slow.probs)
    assert torch.equal(fast.confidence_logits, slow.confidence_logits)
