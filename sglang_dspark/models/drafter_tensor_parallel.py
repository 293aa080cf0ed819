"""Tensor parallelism of a DeepSpec drafter's decoder layers, split the way SGLang splits the target's.

Rank ``r`` of ``N`` keeps, in every drafter layer:

* attention: query heads ``[r * Hq/N, (r + 1) * Hq/N)`` (``q_proj`` rows,
  ``o_proj`` columns) and their key-value heads: ``[r * Hkv/N, (r + 1) * Hkv/N)``
  when ``N`` divides ``Hkv``, or, when ``Hkv < N`` and ``Hkv`` divides ``N``,
  the single head ``r // (N / Hkv)`` (replicated over ``N / Hkv`` ranks, as
  SGLang's ``QKVParallelLinear`` does);
* MLP: intermediate columns ``[r * I/N, (r + 1) * I/N)`` (``gate_proj`` /
  ``up_proj`` rows, ``down_proj`` columns).

``o_proj`` and ``down_proj`` are then row-parallel: each rank's output is a
partial sum that ``all_reduce`` completes (an ``o_proj`` bias is kept on rank 0
only). The context projection, norms, Markov and confidence heads are small and
stay replicated. Each rank's context K/V holds only its key-value heads, which
is what SGLang budgets for a draft model (``ModelConfig.get_num_kv_heads(tp)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from sglang_dspark.algorithm.config import DSparkConfig
from sglang_dspark.models.deepspec_drafter import DeepSpecDrafter

AllReduce = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["AllReduce", "DrafterTPShard", "shard_drafter", "unshardable_reason"]


def unshardable_reason(config: DSparkConfig, world_size: int) -> str | None:
    """Why a drafter with ``config`` cannot be split over ``world_size`` ranks (``None`` if it can)."""
    heads, kv, inter = config.num_attention_heads, config.num_key_value_heads, config.intermediate_size
    if heads % world_size:
        return f"its {heads} attention heads do not split over {world_size} ranks"
    if (kv >= world_size and kv % world_size) or (kv < world_size and world_size % kv):
        return f"its {kv} key-value heads do not split over (or replicate evenly across) {world_size} ranks"
    if inter % world_size:
        return f"its MLP intermediate size {inter} does not split over {world_size} ranks"
    return None


@dataclass(frozen=True)
class DrafterTPShard:
    """The heads and intermediate columns tensor-parallel rank ``rank`` of ``world_size`` keeps."""

    config: DSparkConfig
    rank: int
    world_size: int

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} out of range for world size {self.world_size}")
        reason = unshardable_reason(self.config, self.world_size)
        if reason is not None:
            raise ValueError(f"the drafter cannot be tensor-parallel: {reason}")

    @property
    def num_heads(self) -> int:
        return self.config.num_attention_heads // self.world_size

    @property
    def num_kv_heads(self) -> int:
        return max(1, self.config.num_key_value_heads // self.world_size)

    @property
    def kv_head_offset(self) -> int:
        kv = self.config.num_key_value_heads
        if kv >= self.world_size:
            return self.rank * self.num_kv_heads
        return self.rank // (self.world_size // kv)

    @property
    def intermediate_size(self) -> int:
        return self.config.intermediate_size // self.world_size


def _narrowed(linear: nn.Linear, dim: int, start: int, length: int, *, keep_bias: bool = True) -> nn.Linear:
    """A new ``nn.Linear`` holding ``length`` output rows (``dim`` 0) or input columns (``dim`` 1) from ``start``."""
    weight = linear.weight.detach().narrow(dim, start, length).clone()
    out_features, in_features = weight.shape
    bias = linear.bias is not None
    new = nn.Linear(in_features, out_features, bias=bias, device=weight.device, dtype=weight.dtype)
    new.weight = nn.Parameter(weight, requires_grad=False)
    if bias:
        b = linear.bias.detach()
        b = b.narrow(0, start, length).clone() if dim == 0 else (b.clone() if keep_bias else torch.zeros_like(b))
        new.bias = nn.Parameter(b, requires_grad=False)
    return new


def shard_drafter(drafter: DeepSpecDrafter, shard: DrafterTPShard, all_reduce: AllReduce) -> DeepSpecDrafter:
    """Keep only ``shard``'s part of every drafter layer, in place; ``all_reduce`` sums row-parallel outputs.

    Must run before any context cache or pool is allocated: both are sized
    from the (now local) key-value head count. Returns ``drafter``.
    """
    if shard.config != drafter.config:
        raise ValueError("the shard was planned for another drafter config")
    d = drafter.config.head_dim
    for layer in drafter.layers:
        attn = layer.self_attn
        if attn.num_heads != drafter.config.num_attention_heads:
            raise RuntimeError("the drafter is already sharded")
        attn.q_proj = _narrowed(attn.q_proj, 0, shard.rank * shard.num_heads * d, shard.num_heads * d)
        attn.k_proj = _narrowed(attn.k_proj, 0, shard.kv_head_offset * d, shard.num_kv_heads * d)
        attn.v_proj = _narrowed(attn.v_proj, 0, shard.kv_head_offset * d, shard.num_kv_heads * d)
        attn.o_proj = _narrowed(
            attn.o_proj, 1, shard.rank * shard.num_heads * d, shard.num_heads * d, keep_bias=shard.rank == 0
        )
        attn.num_heads, attn.num_kv_heads = shard.num_heads, shard.num_kv_heads
        mlp = layer.mlp
        i_l = shard.intermediate_size
        mlp.gate_proj = _narrowed(mlp.gate_proj, 0, shard.rank * i_l, i_l)
        mlp.up_proj = _narrowed(mlp.up_proj, 0, shard.rank * i_l, i_l)
        mlp.down_proj = _narrowed(mlp.down_proj, 1, shard.rank * i_l, i_l)
        if shard.world_size > 1:
            attn.reduce_output = all_reduce
            mlp.reduce_output = all_reduce
    return drafter
