"""The serving pool of drafter context rows against the per-batch cache it stands for."""

from __future__ import annotations

import pytest
import torch

from sglang_dspark.algorithm.config import DSparkConfig
from sglang_dspark.models.deepspec_drafter import load_deepspec_drafter
from sglang_dspark.models.paged_context import PagedDrafterContext
from sglang_dspark.models.synthetic import make_synthetic_target_modules, write_synthetic_deepspec_checkpoint

from tests.torch_threads import one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


def small_drafter(tmp_path, *, num_draft_layers: int, anchor_context_input: bool):
    """A synthetic drafter small enough for exact comparisons (also used by the worker's tests)."""
    config = DSparkConfig(
        block_size=4, mask_token_id=7, target_layer_ids=(0, 2), markov_rank=8, hidden_size=32,
        vocab_size=61, num_draft_layers=num_draft_layers, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, intermediate_size=48, num_target_layers=4, anchor_context_input=anchor_context_input,
    )
    embed, head = make_synthetic_target_modules(config, seed=1)
    path = write_synthetic_deepspec_checkpoint(tmp_path, config, seed=0, target_modules=(embed, head))
    return load_deepspec_drafter(path, embed_tokens=embed, lm_head=head).eval()


@pytest.mark.parametrize("anchor_context_input", [False, True], ids=["deepspec", "anchor-context"])
def test_rows_in_scattered_slots_gather_to_the_cache_extend_context_builds(tmp_path, anchor_context_input):
    drafter = small_drafter(tmp_path, num_draft_layers=2, anchor_context_input=anchor_context_input)
    config = drafter.config
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([7, 1, 4])
    features = torch.randn(3, 7, config.context_feature_size, generator=g)
    slot_table = torch.randperm(40, generator=g)[:21].reshape(3, 7)
    pool = PagedDrafterContext.allocate(drafter, 40, device="cpu", dtype=torch.float32)
    assert pool.nbytes == 40 * PagedDrafterContext.bytes_per_slot(drafter, torch.float32)
    assert (pool.rows is not None) == anchor_context_input
    for b in range(3):
        n = int(lengths[b])
        # Committed in two steps, as prefill and then an accepted verify would.
        for part in (slice(0, n // 2), slice(n // 2, n)):
            pos = torch.arange(n)[part]
            pool.write(drafter, features[b, part], slot_table[b, part], pos)
    anchors = torch.tensor([5, 9, 11])
    with torch.no_grad():
        paged = pool.gather(slot_table, torch.tensor([2, 0, 1]), lengths[[2, 0, 1]])
        cache = drafter.new_cache(3)
        drafter.extend_context(cache, features[[2, 0, 1]], num_new=lengths[[2, 0, 1]])
        got = drafter.forward_block(anchors, paged)
        want = drafter.forward_block(anchors, cache)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-5)
    if anchor_context_input:
        torch.testing.assert_close(paged.last_rows, cache.last_rows)


def test_deferred_rows_are_written_in_queue_order_before_the_next_write(tmp_path):
    drafter = small_drafter(tmp_path, num_draft_layers=1, anchor_context_input=True)
    config = drafter.config
    g = torch.Generator().manual_seed(0)
    features = torch.randn(6, config.context_feature_size, generator=g)
    # Slot 3 is written twice (freed and reused between the steps): the later row must win.
    steps = [(features[0:2], torch.tensor([3, 5]), torch.tensor([0, 1])),
             (features[2:4], torch.tensor([8, 3]), torch.tensor([2, 0])),
             (features[4:6], torch.tensor([9, 1]), torch.tensor([7, 4]))]
    direct = PagedDrafterContext.allocate(drafter, 12, device="cpu", dtype=torch.float32)
    deferred = PagedDrafterContext.allocate(drafter, 12, device="cpu", dtype=torch.float32)
    for hidden, slots, pos in steps:
        direct.write(drafter, hidden, slots, pos)
    for hidden, slots, pos in steps[:2]:
        deferred.defer(hidden, slots, pos)
    assert deferred.queued_rows == 4
    assert not deferred.keys[0].any()  # nothing written yet
    with pytest.raises(RuntimeError, match="flush"):
        deferred.gather(torch.arange(12)[None], torch.tensor([0]), torch.tensor([4]))
    deferred.write(drafter, *steps[2])
    assert deferred.queued_rows == 0
    for got, want in zip([*deferred.keys, *deferred.values, deferred.rows], [*direct.keys, *direct.values, direct.rows]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    flushed = PagedDrafterContext.allocate(drafter, 12, device="cpu", dtype=torch.float32)
    for hidden, slots, pos in steps:
        flushed.defer(hidden, slots, pos)
    flushed.flush(drafter)
    assert flushed.queued_rows == 0
    torch.testing.assert_close(flushed.rows, direct.rows, rtol=1e-5, atol=1e-6)
    flushed.flush(drafter)  # nothing queued: a no-op
