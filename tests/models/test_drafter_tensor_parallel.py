"""Drafter layers split over tensor-parallel ranks compute what the whole drafter computes.

Ranks run as threads in lock step: the all-reduce is a barrier that sums the
ranks' partial outputs in rank order, like SGLang's all-reduce over its TP group.
"""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from sglang_dspark.algorithm.config import DSparkConfig
from sglang_dspark.algorithm.sampling import SamplingParams
from sglang_dspark.models.deepspec_drafter import load_deepspec_drafter
from sglang_dspark.models.drafter_tensor_parallel import DrafterTPShard, shard_drafter, unshardable_reason
from sglang_dspark.models.paged_context import PagedDrafterContext
from sglang_dspark.models.synthetic import make_synthetic_target_modules, write_synthetic_deepspec_checkpoint

from tests.torch_threads import one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


def config(heads: int = 4, kv: int = 2, inter: int = 48, bias: bool = False, anchor: bool = False) -> DSparkConfig:
    return DSparkConfig(
        block_size=4, mask_token_id=7, target_layer_ids=(0, 2, 4), markov_rank=8, hidden_size=32,
        vocab_size=61, num_draft_layers=2, num_attention_heads=heads, num_key_value_heads=kv,
        head_dim=8, intermediate_size=inter, num_target_layers=6, attention_bias=bias,
        anchor_context_input=anchor,
    )


class ThreadAllReduce:
    """Sum over ``world`` threads' tensors, in rank order, returned to every thread."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.slots: list[torch.Tensor | None] = [None] * world
        self.barrier = threading.Barrier(world)
        self.calls = 0

    def for_rank(self, rank: int):
        def all_reduce(t: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = t
            self.barrier.wait()
            total = sum(self.slots[1:], self.slots[0].clone())
            self.barrier.wait()
            if rank == 0:
                self.calls += 1
            return total

        return all_reduce


def run_ranks(world: int, fn) -> list:
    results: list = [None] * world
    errors: list = []

    def body(rank: int) -> None:
        try:
            results[rank] = fn(rank)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=body, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]
    return results


@pytest.fixture(
    scope="module",
    params=[(4, 2, False, False), (8, 4, True, False), (4, 1, False, True)],
    ids=["gqa", "bias", "mqa-anchor-context"],
)
def drafter(request, tmp_path_factory):
    heads, kv, bias, anchor = request.param
    cfg = config(heads=heads, kv=kv, bias=bias, anchor=anchor)
    target = make_synthetic_target_modules(cfg, seed=3)
    path = write_synthetic_deepspec_checkpoint(tmp_path_factory.mktemp("drafter"), cfg, seed=0, target_modules=target)
    embed, head = target
    return load_deepspec_drafter(path, embed_tokens=embed, lm_head=head).eval().requires_grad_(False)


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_drafts_equal_the_whole_drafter(drafter, world: int) -> None:
    cfg = drafter.config
    if unshardable_reason(cfg, world):
        pytest.skip(unshardable_reason(cfg, world))
    g = torch.Generator().manual_seed(0)
    context = torch.randn(3, 9, cfg.context_feature_size, generator=g)
    lengths = torch.tensor([9, 5, 1])
    anchors = torch.tensor([5, 11, 2])

    def whole_and_block(model):
        cache = model.new_cache(3, capacity=9)
        model.extend_context(cache, context, num_new=lengths)
        out = model.forward_block(anchors, cache)
        block = model.draft(anchors, cache, SamplingParams.create(0.0, batch_size=3))
        return cache, out, block

    ref_cache, ref_out, ref_block = whole_and_block(drafter)
    reduce = ThreadAllReduce(world)

    def rank_fn(rank: int):
        mine = shard_drafter(copy.deepcopy(drafter), DrafterTPShard(cfg, rank, world), reduce.for_rank(rank))
        return mine, *whole_and_block(mine)

    results = run_ranks(world, rank_fn)
    assert reduce.calls > 0
    for rank, (mine, cache, out, block) in enumerate(results):
        shard = DrafterTPShard(cfg, rank, world)
        assert cache.keys[0].shape[1] == shard.num_kv_heads == mine.kv_heads_per_rank
        kv = slice(shard.kv_head_offset, shard.kv_head_offset + shard.num_kv_heads)
        torch.testing.assert_close(cache.keys[1], ref_cache.keys[1][:, kv], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.logits, ref_out.logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out.hidden, ref_out.hidden, rtol=1e-4, atol=1e-4)
        assert torch.equal(block.tokens, ref_block.tokens)


def test_context_pool_per_rank_is_the_share_sglang_budgets(drafter) -> None:
    cfg = drafter.config
    whole = PagedDrafterContext.bytes_per_slot(drafter, torch.float32)
    mine = shard_drafter(copy.deepcopy(drafter), DrafterTPShard(cfg, 1, 2), lambda t: t)
    # SGLang's ModelConfig.get_num_kv_heads(tp): max(1, kv // tp).
    assert PagedDrafterContext.bytes_per_slot(mine, torch.float32) == whole * max(1, cfg.num_key_value_heads // 2) // cfg.num_key_value_heads
    layer_params = sum(p.numel() for p in mine.layers.parameters())
    assert layer_params < sum(p.numel() for p in drafter.layers.parameters())


@pytest.mark.parametrize(
    "cfg, world, match",
    [
        (config(heads=6, kv=2, inter=48), 4, "attention heads"),
        (config(heads=6, kv=3, inter=48), 2, "key-value heads"),
        (config(heads=4, kv=2, inter=50), 4, "intermediate size"),
    ],
)
def test_unshardable_drafters_are_named(cfg, world, match) -> None:
    assert match in unshardable_reason(cfg, world)
    with pytest.raises(ValueError, match=match):
        DrafterTPShard(cfg, 0, world)


def test_a_sharded_drafter_is_not_sharded_twice(drafter) -> None:
    mine = shard_drafter(copy.deepcopy(drafter), DrafterTPShard(drafter.config, 0, 2), lambda t: t)
    with pytest.raises(RuntimeError, match="already sharded"):
        shard_drafter(mine, DrafterTPShard(drafter.config, 0, 2), lambda t: t)
