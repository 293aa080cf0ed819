"""What the DSPARK worker needs to stay correct under tensor parallelism.

* The drafter shares the target's embedding and LM head. Under ``--tp-size N``
  SGLang shards both over the vocabulary (``VocabParallelEmbedding`` /
  ``ParallelLMHead``: rank r holds rows ``[r * V_pad / N, (r + 1) * V_pad / N)``),
  so each rank all-gathers the full table once at start-up
  (:func:`full_vocab_weight`). The drafter's own layers are split over the
  ranks like the target's (:mod:`sglang_dspark.models.drafter_tensor_parallel`).
* Every rank must take the same scheduling decision and commit the same tokens,
  or the ranks' KV caches and request states diverge. The worker computes them
  from identical inputs (replicated hidden states, all-gathered logits, one
  generator seeded from ``--random-seed`` on every rank); :func:`broadcast_from_first_rank`
  then makes rank 0's values authoritative, so a last-bit difference in a
  floating-point reduction cannot split the ranks.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["broadcast_from_first_rank", "full_vocab_weight", "tp_rank", "tp_world_size"]


def _tp_group():
    """SGLang's tensor-parallel group coordinator, or ``None`` when none is set up (unit tests)."""
    from sglang.srt.distributed import get_tp_group

    try:
        return get_tp_group()
    except RuntimeError:  # SGLang 0.5.23: "parallel name 'tp_group' has not been written in this process"
        return None


def tp_world_size() -> int:
    """SGLang's tensor-parallel world size in this process (1 when no group is set up)."""
    group = _tp_group()
    return 1 if group is None else int(group.world_size)


def tp_rank() -> int:
    """This process's rank in SGLang's tensor-parallel group (0 when no group is set up)."""
    group = _tp_group()
    return 0 if group is None else int(group.rank_in_group)


def _vocab_group(module: nn.Module):
    if getattr(module, "use_attn_tp_group", False):
        from sglang.srt.layers.dp_attention import get_attention_tp_group

        return get_attention_tp_group()
    from sglang.srt.distributed import get_tp_group

    return get_tp_group()


def full_vocab_weight(module: nn.Module, vocab_size: int) -> torch.Tensor:
    """The ``[vocab_size, hidden]`` weight of a (possibly vocabulary-sharded) embedding or LM head.

    A module that is not sharded (``tp_size`` 1, or a plain ``nn.Embedding``)
    returns a view of its own weight; a sharded one returns the all-gathered
    table (a copy, made once). Added (LoRA) vocabulary rows are not supported.
    """
    weight = module.weight
    tp_size = int(getattr(module, "tp_size", 1) or 1)
    if tp_size == 1 or not getattr(module, "enable_tp", True):
        return weight[:vocab_size]
    if getattr(module, "num_embeddings", vocab_size) != getattr(module, "org_vocab_size", vocab_size):
        raise RuntimeError("DSPARK under tensor parallelism does not support added (LoRA) vocabulary rows")
    group = _vocab_group(module)
    with torch.inference_mode():
        full = group.all_gather(weight.detach().contiguous(), dim=0)
    padded = getattr(module, "num_embeddings_padded", full.shape[0])
    if full.shape[0] != padded:
        raise RuntimeError(f"gathered {full.shape[0]} vocabulary rows, expected {padded}")
    return full[:vocab_size]


def broadcast_from_first_rank(*tensors: torch.Tensor) -> None:
    """Overwrite each tensor, in place, with tensor-parallel rank 0's values (no-op at TP 1)."""
    group = _tp_group()
    if group is None or group.world_size == 1:
        return
    for t in tensors:
        if not t.is_contiguous():
            raise ValueError("broadcast_from_first_rank needs contiguous tensors")
        group.broadcast(t, src=0)
