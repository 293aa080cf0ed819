"""draft_block: sequential Markov drafting, draft distributions, confidences."""

from __future__ import annotations

import pytest
import torch

from sglang_dspark.algorithm.block_drafting import DraftBlock, draft_block
from sglang_dspark.algorithm.config import DSparkConfig
from sglang_dspark.algorithm.confidence_head import ConfidenceHead
from sglang_dspark.algorithm.markov_head import build_markov_head
from sglang_dspark.algorithm.sampling import SamplingParams, logits_to_probs

H = 6


def config(vocab: int, rank: int, head_type: str = "vanilla") -> DSparkConfig:
    return DSparkConfig(
        block_size=4,
        mask_token_id=0,
        target_layer_ids=(1,),
        markov_rank=rank,
        markov_head_type=head_type,
        hidden_size=H,
        vocab_size=vocab,
        num_draft_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=4,
        intermediate_size=8,
    )


def heads(cfg, seed=0):
    torch.manual_seed(seed)
    return build_markov_head(cfg), ConfidenceHead.from_config(cfg)


@torch.no_grad()
def test_greedy_follows_markov_chain_not_backbone_argmax():
    # W1 = I, W2 = 3 * (t -> t+1 mod 4): the bigram term dominates |U| < 1,
    # so greedy drafting walks anchor -> anchor+1 -> ... using its own drafts.
    cfg = config(vocab=4, rank=4)
    markov, conf = heads(cfg)
    markov.markov_w1.weight.copy_(torch.eye(4))
    markov.markov_w2.weight.copy_(3.0 * torch.roll(torch.eye(4), 1, dims=0))
    torch.manual_seed(1)
    U = torch.rand(2, 4, 4) * 0.9
    U[:, :, 0] += 1.0  # the backbone alone would always pick token 0
    assert (U.argmax(-1) == 0).all()
    anchors = torch.tensor([0, 2])
    hidden = torch.randn(2, 4, H)
    block = draft_block(U, hidden, anchors, markov, conf, SamplingParams.greedy(2))
    assert block.tokens.tolist() == [[1, 2, 3, 0], [3, 0, 1, 2]]
    # p_d is the one-hot of the drafted token
    assert torch.equal(block.probs, torch.nn.functional.one_hot(block.tokens, 4).float())


@pytest.mark.parametrize("head_type", ["vanilla", "gated", "rnn"])
@torch.no_grad()
def test_greedy_equals_argmax_of_corrected_logits(head_type):
    cfg = config(vocab=40, rank=5, head_type=head_type)
    markov, conf = heads(cfg, seed=3)
    for p in markov.parameters():
        p.mul_(4.0)  # make the Markov term large enough to matter
    U = torch.randn(3, 4, 40)
    hidden = torch.randn(3, 4, H)
    anchors = torch.tensor([5, 0, 39])
    block = draft_block(U, hidden, anchors, markov, conf, SamplingParams.greedy(3))
    prev = torch.cat([anchors[:, None], block.tokens[:, :-1]], 1)
    corrected = U + markov.teacher_forced_bias(prev, hidden)
    assert torch.equal(block.tokens, corrected.argmax(-1))
    assert not torch.equal(block.tokens, U.argmax(-1))
    want_logits = conf(hidden, markov.prev_features(prev))
    torch.testing.assert_close(block.confidence_logits, want_logits)
    torch.testing.assert_close(block.confidence, torch.sigmoid(want_logits))
    torch.testing.assert_close(block.survival(), torch.cumprod(torch.sigmoid(want_logits), -1))


@torch.no_grad()
def test_sampled_drafts_follow_draft_distribution():
    vocab, n = 5, 20000
    cfg = config(vocab=vocab, rank=3)
    markov, conf = heads(cfg, seed=4)
    for p in markov.parameters():
        p.mul_(2.0)
    torch.manual_seed(5)
    U = torch.randn(1, 2, vocab).expand(n, -1, -1).contiguous()
    hidden = torch.randn(1, 2, H).expand(n, -1, -1).contiguous()
    anchors = torch.full((n,), 2)
    params = SamplingParams.create(0.9, batch_size=n)
    gen = torch.Generator().manual_seed(6)
    block = draft_block(U, hidden, anchors, markov, conf, params, generator=gen)

    # p_d is the processed distribution of the corrected logits given the actual prefix.
    prev = torch.cat([anchors[:, None], block.tokens[:, :1]], 1)
    corrected = U + markov.teacher_forced_bias(prev)
    want = logits_to_probs(corrected, params.temperature, params.top_p, params.top_k)
    torch.testing.assert_close(block.probs, want)
    torch.testing.assert_close(block.probs.sum(-1), torch.ones(n, 2))

    def chi2(tokens, probs):
        counts = torch.bincount(tokens, minlength=vocab).double()
        expected = probs.double() * tokens.numel()
        return float(((counts - expected) ** 2 / expected).sum())

    assert chi2(block.tokens[:, 0], block.probs[0, 0]) < 18.47  # df=4, p=0.001
    # position 2 conditional on the most frequent first draft
    first = int(torch.mode(block.tokens[:, 0]).values)
    rows = block.tokens[:, 0] == first
    assert chi2(block.tokens[rows, 1], block.probs[rows][0, 1]) < 18.47


@torch.no_grad()
def test_top_k_top_p_respected_and_mixed_rows():
    cfg = config(vocab=30, rank=4)
    markov, conf = heads(cfg, seed=7)
    U = torch.randn(3, 4, 30)
    hidden = torch.randn(3, 4, H)
    params = SamplingParams.create([1.0, 0.0, 0.7], [1.0, 1.0, 0.5], [3, 0, 0])
    gen = torch.Generator().manual_seed(8)
    block = draft_block(U, hidden, torch.tensor([1, 2, 3]), markov, conf, params, generator=gen)
    assert ((block.probs[0] > 0).sum(-1) <= 3).all()
    assert ((block.probs[1] > 0).sum(-1) == 1).all()
    assert ((block.probs[2] > 0).sum(-1) < 30).all()
    prev = torch.cat([torch.tensor([[1], [2], [3]]), block.tokens[:, :-1]], 1)
    corrected = U + markov.teacher_forced_bias(prev)
    want = logits_to_probs(corrected, params.temperature, params.top_p, params.top_k)
    torch.testing.assert_close(block.probs, want)  # each row used its own params
    picked = block.probs.gather(-1, block.tokens[..., None]).squeeze(-1)
    assert (picked > 0).all()  # every draft lies in its row's support


@torch.no_grad()
def test_sts_temperatures_and_no_confidence_head():
    cfg = config(vocab=20, rank=4)
    markov, conf = heads(cfg, seed=9)
    U, hidden = torch.randn(2, 4, 20), torch.randn(2, 4, H)
    anchors = torch.tensor([0, 1])
    temps = torch.tensor([1.0, 2.0, 3.0, 4.0])
    plain = draft_block(U, hidden, anchors, markov, conf, SamplingParams.greedy(2))
    cal = draft_block(
        U, hidden, anchors, markov, conf, SamplingParams.greedy(2), sts_temperatures=temps
    )
    torch.testing.assert_close(cal.confidence_logits, plain.confidence_logits)
    torch.testing.assert_close(cal.confidence, torch.sigmoid(plain.confidence_logits / temps))
    assert torch.equal(cal.tokens, plain.tokens)
    none = draft_block(U, hidden, anchors, markov, None, SamplingParams.greedy(2))
    assert none.confidence is None and none.confidence_logits is None
    with pytest.raises(ValueError, match="no confidences"):
        none.survival()


def test_shape_errors():
    cfg = config(vocab=10, rank=2)
    markov, conf = heads(cfg)
    with pytest.raises(ValueError, match=r"anchor_tokens must be \[2\]"):
        draft_block(
            torch.zeros(2, 3, 10), torch.zeros(2, 3, H), torch.zeros(3, dtype=torch.long),
            markov, conf, SamplingParams.greedy(2),
        )
    with pytest.raises(ValueError, match="sampling params cover 1 rows"):
        draft_block(
            torch.zeros(2, 3, 10), torch.zeros(2, 3, H), torch.zeros(2, dtype=torch.long),
            markov, conf, SamplingParams.greedy(1),
        )
    with pytest.raises(ValueError, match=r"probs must be \[1, 2, V\]"):
        DraftBlock(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 3, 5), None, None)


@torch.no_grad()
def test_logits_processor_constrains_each_position_given_the_drafts_before_it():
    # A toy "grammar": after token t the next token may not be t + 1 (mod 4); position 0 sees the anchor.
    cfg = config(vocab=4, rank=4)
    markov, conf = heads(cfg)
    markov.markov_w1.weight.copy_(torch.eye(4))
    markov.markov_w2.weight.copy_(3.0 * torch.roll(torch.eye(4), 1, dims=0))  # prefers t -> t + 1
    seen = []

    def forbid_successor(k, logits, prev):
        seen.append((k, prev.tolist()))
        logits[torch.arange(logits.shape[0]), (prev + 1) % 4] = float("-inf")

    anchors = torch.tensor([0, 2])
    hidden = torch.randn(2, 4, H)
    U = torch.rand(2, 4, 4)
    block = draft_block(U, hidden, anchors, markov, conf, SamplingParams.greedy(2), logits_processor=forbid_successor)
    chain = torch.cat([anchors[:, None], block.tokens], 1)
    assert bool((chain[:, 1:] != (chain[:, :-1] + 1) % 4).all())
    assert [k for k, _ in seen] == [0, 1, 2, 3] and seen[0][1] == [0, 2]
    assert seen[1][1] == block.tokens[:, 0].tolist()  # the processor sees each draft before the next position
    sampled = draft_block(U, hidden, anchors, markov, conf, SamplingParams.create([1.0, 1.0]),
                          generator=torch.Generator().manual_seed(0), logits_processor=forbid_successor)
    prev = torch.cat([anchors[:, None], sampled.tokens[:, :-1]], 1)
    assert bool((sampled.probs.gather(-1, ((prev + 1) % 4)[..., None]) == 0).all())  # probs are the masked law
