"""Held-out greedy drafts follow the serving path exactly (context cache + Markov sampling)."""

from __future__ import annotations

import pytest
import torch

from sglang_dspark.algorithm.config import DSparkConfig
from sglang_dspark.algorithm.sampling import SamplingParams
from sglang_dspark.models.deepspec_drafter import DeepSpecDrafter
from sglang_dspark.models.synthetic import make_synthetic_target_modules
from sglang_dspark.train.distill import DistilledSequence
from sglang_dspark.train.evaluate import HeldoutDrafts, heldout_greedy_drafts
from sglang_dspark.train.export import init_drafter_weights


def _setup():
    config = DSparkConfig(
        block_size=3, mask_token_id=5, target_layer_ids=(0, 1), markov_rank=8, hidden_size=32,
        vocab_size=40, num_draft_layers=1, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, intermediate_size=48, backbone="llama", qk_norm=False,
    )
    drafter = DeepSpecDrafter(config)
    init_drafter_weights(drafter, std=0.3, seed=0)
    embed, head = make_synthetic_target_modules(config, seed=1)
    drafter.attach_target_modules(embed, head)
    gen = torch.Generator().manual_seed(2)
    T, prompt = 14, 4
    last = torch.randn(T, 32, generator=gen)
    ids = torch.randint(0, 40, (T,), generator=gen)
    # The answer is the "target's" greedy path: token t+1 = argmax lm_head(last[t]).
    greedy = head(last).argmax(-1)
    ids[prompt:] = greedy[prompt - 1 : T - 1]
    mask = torch.zeros(T, dtype=torch.bool)
    mask[prompt:] = True
    seq = DistilledSequence(
        input_ids=ids, loss_mask=mask,
        context_hidden=torch.randn(T, 64, generator=gen), last_hidden=last, prompt_index=0,
    )
    return config, drafter.eval(), seq, greedy


def test_heldout_drafts_equal_serving_drafts():
    config, drafter, seq, greedy = _setup()
    # num_anchors >= T: every valid anchor is used, in position order.
    drafts = heldout_greedy_drafts(drafter, [seq], num_anchors=32, max_blocks=100)
    K = config.block_size
    T = len(seq.input_ids)
    anchors = [a for a in range(T - 1) if seq.loss_mask[a] and a + K < T]
    assert drafts.num_blocks == len(anchors)
    params = SamplingParams.create(0.0, batch_size=1)
    for row, a in enumerate(anchors):
        cache = drafter.new_cache(1, capacity=T)
        with torch.no_grad():
            drafter.extend_context(cache, seq.context_hidden[None, :a])
            block = drafter.draft(seq.input_ids[a : a + 1], cache, params)
        torch.testing.assert_close(drafts.confidence_logits[row], block.confidence_logits[0],
                                   rtol=1e-4, atol=1e-5)
        want = block.tokens[0] == greedy[a : a + K]
        assert torch.equal(drafts.accepted[row], want)


def test_heldout_summary_statistics():
    accepted = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 1, 1], [1, 0, 1]], dtype=torch.bool)
    drafts = HeldoutDrafts(confidence_logits=None, accepted=accepted)
    # Committed per step = 1 + accepted prefix: 3, 1, 4, 2.
    assert drafts.mean_committed() == 2.5
    # P(k | all before): 3/4, 2/3, 1/2.
    assert drafts.per_position() == pytest.approx([0.75, 2 / 3, 0.5])
