"""Group token-expert pairs by expert, padded per expert to the GEMM tile height.

Triton counterpart of SGLang's ``moe_align_block_size`` (tested against
:func:`kernels.mxfp4_moe.reference.moe_align_block_size_reference`), with
expert parallelism built in: pairs routed to experts this rank does not hold
form one last group whose blocks carry expert ``-1``.

Everything stays on the device and the output sizes depend only on
``(T * k, num_local_experts, block_m)``, never on the routing, so the step
needs no host synchronisation and can be captured in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass(frozen=True)
class AlignedPairs:
    """Output of :func:`moe_align_block_size`.

    Attributes:
        sorted_ids: ``[num_blocks * block_m]`` int32 pair ids ``t * k + j`` grouped
            by expert; pad slots and slots past ``num_padded`` hold ``T * k``.
        block_expert: ``[num_blocks]`` int32 local expert of each block, ``-1``
            for the group of non-local pairs and for unused trailing blocks.
        num_padded: ``[1]`` int32 on the device: slots in use (a multiple of
            ``block_m``); blocks at or past it are skipped.
        block_m: the tile height the groups are padded to.
    """

    sorted_ids: torch.Tensor
    block_expert: torch.Tensor
    num_padded: torch.Tensor
    block_m: int

    @property
    def num_blocks(self) -> int:
        """Upper bound on blocks in use: the launch grid's first dimension."""
        return self.block_expert.numel()


def max_num_blocks(num_pairs: int, num_local_experts: int, block_m: int) -> int:
    """Blocks needed in the worst case: every non-empty group wastes up to ``block_m - 1`` slots."""
    groups = min(num_local_experts, num_pairs) + 1
    return triton.cdiv(num_pairs + groups * (block_m - 1), block_m)


@triton.jit
def _align_kernel(
    topk_ids_ptr,
    sorted_ids_ptr,
    block_expert_ptr,
    num_padded_ptr,
    num_pairs,
    expert_offset,
    num_local_experts,
    num_blocks,
    BLOCK_M: tl.constexpr,
    NUM_BINS: tl.constexpr,
    CHUNK: tl.constexpr,
    FILL_CHUNK: tl.constexpr,
):
    # One program. Bins 0..L-1 are local experts, bin L collects the non-local
    # pairs; lanes past num_pairs are masked out of every one-hot.
    bins = tl.arange(0, NUM_BINS)
    lanes = tl.arange(0, CHUNK)

    counts = tl.zeros([NUM_BINS], dtype=tl.int32)
    for start in range(0, num_pairs, CHUNK):
        offs = start + lanes
        valid = offs < num_pairs
        local = tl.load(topk_ids_ptr + offs, mask=valid, other=0).to(tl.int32) - expert_offset
        bucket = tl.where((local >= 0) & (local < num_local_experts), local, num_local_experts)
        onehot = ((bucket[:, None] == bins[None, :]) & valid[:, None]).to(tl.int32)
        counts += tl.sum(onehot, axis=0)

    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    starts = ends - padded
    total = tl.sum(padded, axis=0)
    tl.store(num_padded_ptr, total)

    for b0 in range(0, num_blocks, CHUNK):
        blocks = b0 + lanes
        first_slot = blocks * BLOCK_M
        # The group holding a slot is the number of groups that end at or before it.
        group = tl.sum((ends[None, :] <= first_slot[:, None]).to(tl.int32), axis=1)
        expert = tl.where(group < num_local_experts, group, -1)
        tl.store(block_expert_ptr + blocks, expert, mask=blocks < num_blocks)

    fill = tl.arange(0, FILL_CHUNK)
    pad = tl.full([FILL_CHUNK], 0, tl.int32) + num_pairs
    for s0 in range(0, num_blocks * BLOCK_M, FILL_CHUNK):
        tl.store(sorted_ids_ptr + s0 + fill, pad, mask=s0 + fill < num_blocks * BLOCK_M)

    # Pad fill above and the scatter below write the same slots from different
    # threads of this program.
    tl.debug_barrier()

    seen = tl.zeros([NUM_BINS], dtype=tl.int32)
    for start in range(0, num_pairs, CHUNK):
        offs = start + lanes
        valid = offs < num_pairs
        local = tl.load(topk_ids_ptr + offs, mask=valid, other=0).to(tl.int32) - expert_offset
        bucket = tl.where((local >= 0) & (local < num_local_experts), local, num_local_experts)
        onehot = ((bucket[:, None] == bins[None, :]) & valid[:, None]).to(tl.int32)
        rank = tl.sum(onehot * tl.cumsum(onehot, axis=0), axis=1) - 1
        base = tl.sum(onehot * (starts + seen)[None, :], axis=1)
        tl.store(sorted_ids_ptr + base + rank, offs, mask=valid)
        seen += tl.sum(onehot, axis=0)


def moe_align_block_size(
    topk_ids: torch.Tensor,
    block_m: int,
    *,
    expert_offset: int = 0,
    num_local_experts: int,
) -> AlignedPairs:
    """Sort the ``T * k`` token-expert pairs of ``topk_ids`` by local expert.

    Args:
        topk_ids: ``[T, k]`` global expert ids (any integer dtype).
        block_m: GEMM tile height; every group is padded to a multiple of it.
        expert_offset: global id of local expert 0.
        num_local_experts: experts held by this rank.

    Returns:
        :class:`AlignedPairs`. Within a group pairs keep increasing pair id.
    """
    ids = topk_ids.reshape(-1).contiguous()
    num_pairs = ids.numel()
    device = ids.device
    num_blocks = max_num_blocks(num_pairs, num_local_experts, block_m)
    sorted_ids = torch.empty(num_blocks * block_m, dtype=torch.int32, device=device)
    block_expert = torch.empty(num_blocks, dtype=torch.int32, device=device)
    num_padded = torch.empty(1, dtype=torch.int32, device=device)
    num_bins = triton.next_power_of_2(num_local_experts + 1)
    chunk = max(16, min(64, 8192 // num_bins))
    _align_kernel[(1,)](
        ids,
        sorted_ids,
        block_expert,
        num_padded,
        num_pairs,
        expert_offset,
        num_local_experts,
        num_blocks,
        BLOCK_M=block_m,
        NUM_BINS=num_bins,
        CHUNK=triton.next_power_of_2(chunk),
        FILL_CHUNK=1024,
        num_warps=8 if num_bins >= 256 else 4,
    )
    return AlignedPairs(sorted_ids, block_expert, num_padded, block_m)
