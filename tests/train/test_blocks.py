"""Anchor sampling, block construction and the all-blocks forward vs the reference drafter."""

from __future__ import annotations

import pytest
import torch

from sglang_dspark.algorithm.config import DSparkConfig
from sglang_dspark.models.deepspec_drafter import DeepSpecDrafter
from sglang_dspark.models.synthetic import make_synthetic_target_modules
from sglang_dspark.train.blocks import (
    build_blocks,
    drafter_block_forward,
    drop_padding_anchors,
    sample_anchors,
    teacher_forced_outputs,
)
from sglang_dspark.train.export import init_drafter_weights

from tests.torch_threads import one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


def small_config(**overrides) -> DSparkConfig:
    kwargs = dict(
        block_size=4, mask_token_id=5, target_layer_ids=(0, 2), markov_rank=8, hidden_size=32,
        vocab_size=50, num_draft_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, intermediate_size=48, backbone="llama", qk_norm=False, num_target_layers=3,
    )
    kwargs.update(overrides)
    return DSparkConfig(**kwargs)


def test_sample_anchors_follows_deepspec():
    mask = torch.tensor(
        [
            [0, 0, 1, 1, 1, 0, 1, 1, 1, 1],  # candidates: 2, 3, 6, 7, 8
            [0, 1, 0, 1, 0, 1, 0, 0, 0, 0],  # no two consecutive answer tokens: none
        ],
        dtype=torch.bool,
    )
    gen = torch.Generator().manual_seed(0)
    anchors, keep = sample_anchors(mask, 3, generator=gen)
    assert keep.tolist() == [[True] * 3, [False] * 3]
    row = anchors[0].tolist()
    assert row == sorted(row) and len(set(row)) == 3 and set(row) <= {2, 3, 6, 7, 8}
    assert anchors[1].tolist() == [0, 0, 0]
    all_anchors, all_keep = sample_anchors(mask, 8, generator=gen)
    assert all_anchors[0, all_keep[0]].tolist() == [2, 3, 6, 7, 8]
    # Same generator seed, same draw.
    again, _ = sample_anchors(mask, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, anchors)


def test_sampling_is_uniform_over_candidates():
    mask = torch.ones(1, 12, dtype=torch.bool)
    gen = torch.Generator().manual_seed(1)
    counts = torch.zeros(12)
    for _ in range(2000):
        anchors, keep = sample_anchors(mask, 3, generator=gen)
        counts.index_add_(0, anchors[0][keep[0]], torch.ones(int(keep.sum())))
    assert counts[11] == 0  # the last position has no next token
    freq = counts[:11] / counts.sum()
    assert float((freq - 1 / 11).abs().max()) < 0.02


def test_build_blocks_labels_masks_and_teacher_forcing():
    ids = torch.tensor([[10, 11, 12, 13, 14, 15, 16, 17]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)  # answer 2..5
    anchors = torch.tensor([[2, 4, 0]])
    keep = torch.tensor([[True, True, False]])
    blocks = build_blocks(ids, mask, torch.zeros(1, 8, 6), anchors, keep, block_size=4,
                          mask_token_id=5)
    assert blocks.block_ids[0].tolist() == [[12, 5, 5, 5], [14, 5, 5, 5], [5, 5, 5, 5]]
    assert blocks.positions[0, 1].tolist() == [4, 5, 6, 7]
    assert blocks.target_ids[0, 0].tolist() == [13, 14, 15, 16]
    # Labels must be answer tokens and the mask a contiguous prefix.
    assert blocks.eval_mask[0].tolist() == [
        [True, True, True, False],  # labels at 3, 4, 5 are answer tokens, 6 is not
        [True, False, False, False],  # label 5 ok, 6 not (and 7 must not count after a gap)
        [False, False, False, False],
    ]
    # Markov teacher forcing: previous tokens are the anchor then the true tokens.
    assert blocks.prev_ids[0, 0].tolist() == [12, 13, 14, 15]


def _random_drafter(config: DSparkConfig, seed: int) -> DeepSpecDrafter:
    drafter = DeepSpecDrafter(config)
    init_drafter_weights(drafter, std=0.2, seed=seed)
    embed, head = make_synthetic_target_modules(config, seed=seed + 1)
    drafter.attach_target_modules(embed, head)
    return drafter.eval()


@pytest.mark.parametrize(
    "backbone, anchor_context_input", [("llama", False), ("qwen3", False), ("llama", True)]
)
def test_all_blocks_forward_matches_reference_drafter(backbone, anchor_context_input):
    config = small_config(
        backbone=backbone, qk_norm=backbone == "qwen3", anchor_context_input=anchor_context_input
    )
    drafter = _random_drafter(config, seed=3)
    gen = torch.Generator().manual_seed(4)
    lengths = [11, 8]
    T = max(lengths)
    ids = torch.randint(0, config.vocab_size, (2, T), generator=gen)
    mask = torch.zeros(2, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    ctx = torch.randn(2, T, config.context_feature_size, generator=gen)
    anchors = torch.tensor([[0, 3, 9], [2, 5, 0]])
    keep = torch.tensor([[True, True, True], [True, True, False]])
    blocks = build_blocks(ids, mask, ctx, anchors, keep, block_size=config.block_size,
                          mask_token_id=config.mask_token_id)
    with torch.no_grad():
        hidden = drafter_block_forward(drafter, blocks)
        for b in range(2):
            for a in range(3):
                if not keep[b, a]:
                    continue
                pos = int(anchors[b, a])
                ref = drafter.forward(
                    ctx[b : b + 1, :pos], ids[b, pos : pos + 1], context_lengths=torch.tensor([pos])
                )
                torch.testing.assert_close(hidden[b, a], ref.hidden[0], rtol=1e-5, atol=1e-5)


def test_dropping_padding_anchors_leaves_loss_and_gradients_unchanged():
    """Short answers leave most of ``num_anchors`` padding; dropping those columns is exact."""
    from sglang_dspark.train.loss import dspark_loss

    config = small_config(anchor_context_input=True)
    gen = torch.Generator().manual_seed(8)
    ids = torch.randint(0, config.vocab_size, (2, 12), generator=gen)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, 3:12] = True
    mask[1, 2:7] = True
    ctx = torch.randn(2, 12, config.context_feature_size, generator=gen)
    last = torch.randn(2, 12, config.hidden_size, generator=gen)
    anchors, keep = sample_anchors(mask, 16, generator=gen)
    trimmed = drop_padding_anchors(anchors, keep)
    assert trimmed[0].shape == (2, 8) and bool(trimmed[1][0].all()) and int(trimmed[1][1].sum()) == 4

    def loss_and_grads(a, k):
        drafter = _random_drafter(config, seed=9).train()
        blocks = build_blocks(ids, mask, ctx, a, k, block_size=config.block_size,
                              mask_token_id=config.mask_token_id, last_hidden=last)
        out = teacher_forced_outputs(drafter, blocks)
        loss = dspark_loss(out.draft_logits, out.target_logits, out.target_ids, out.eval_mask,
                           out.confidence_logits, keep=out.keep)
        loss.loss.backward()
        grads = [p.grad.clone() for p in drafter.parameters() if p.grad is not None]
        return loss, grads

    full, full_grads = loss_and_grads(anchors, keep)
    short, short_grads = loss_and_grads(*trimmed)
    torch.testing.assert_close(short.loss, full.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(short.tau, full.tau)
    assert len(short_grads) == len(full_grads) > 0
    for a, b in zip(short_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_teacher_forced_logits_add_markov_term_of_true_tokens():
    config = small_config()
    drafter = _random_drafter(config, seed=5)
    gen = torch.Generator().manual_seed(6)
    ids = torch.randint(0, config.vocab_size, (1, 10), generator=gen)
    mask = torch.ones(1, 10, dtype=torch.bool)
    ctx = torch.randn(1, 10, config.context_feature_size, generator=gen)
    last = torch.randn(1, 10, config.hidden_size, generator=gen)
    blocks = build_blocks(ids, mask, ctx, torch.tensor([[1, 4]]), torch.tensor([[True, True]]),
                          block_size=4, mask_token_id=5, last_hidden=last)
    with torch.no_grad():
        out = teacher_forced_outputs(drafter, blocks)
    head = drafter._target_modules().lm_head
    w1 = drafter.markov_head.markov_w1.weight
    w2 = drafter.markov_head.markov_w2.weight
    prev = torch.tensor([[ids[0, 1], ids[0, 2], ids[0, 3], ids[0, 4]]])
    want = head(out.hidden[0, 0]) + w1[prev[0]] @ w2.T
    torch.testing.assert_close(out.draft_logits[0, 0], want, rtol=1e-5, atol=1e-5)
    # Target logits: the LM head on the target's final hidden state at anchor + k.
    torch.testing.assert_close(out.target_logits[0, 1], head(last[0, 4:8]), rtol=1e-5, atol=1e-5)
    conf_in = torch.cat([out.hidden[0, 0], w1[prev[0]]], dim=-1)
    want_conf = drafter.confidence_head.proj(conf_in).squeeze(-1)
    torch.testing.assert_close(out.confidence_logits[0, 0], want_conf, rtol=1e-5, atol=1e-5)


def test_block_attention_equals_dense_masked_attention():
    """The sparse training attention equals SDPA under DeepSpec's dense [Q, T + Q] mask."""
    import torch.nn.functional as F

    from sglang_dspark.train.blocks import block_attention

    torch.manual_seed(0)
    B, Hq, Hkv, T, A, K, d = 2, 6, 2, 9, 3, 4, 8
    Q = A * K
    q = torch.randn(B, Hq, Q, d)
    k_ctx, v_ctx = torch.randn(B, Hkv, T, d), torch.randn(B, Hkv, T, d)
    k_blk, v_blk = torch.randn(B, Hkv, Q, d), torch.randn(B, Hkv, Q, d)
    anchors = torch.tensor([[0, 3, 7], [2, 5, 8]])
    q_block = torch.arange(Q) // K
    ctx_visible = torch.arange(T)[None, None, :] < anchors[:, q_block][..., None]
    got = block_attention(q, k_ctx, v_ctx, k_blk, v_blk, ctx_visible, K, d**-0.5)
    same_block = (q_block[:, None] == q_block[None, :]).expand(B, -1, -1)
    mask = torch.cat([ctx_visible, same_block], dim=-1)[:, None]
    k = torch.cat([k_ctx, k_blk], dim=2).repeat_interleave(Hq // Hkv, dim=1)
    v = torch.cat([v_ctx, v_blk], dim=2).repeat_interleave(Hq // Hkv, dim=1)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=d**-0.5)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
