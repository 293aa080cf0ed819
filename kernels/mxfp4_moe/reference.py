"""Pure-torch reference for the fused MXFP4 MoE kernel and its token alignment.

Weight layout (per local expert ``e``):

* ``w13[e]``: ``[2 * I, H // 2]`` packed E2M1 bytes, gate rows ``0..I-1`` then up
  rows ``I..2I-1``; ``w13_scale[e]``: ``[2 * I, H // 32]`` E8M0.
* ``w2[e]``: ``[H, I // 2]`` packed; ``w2_scale[e]``: ``[H, I // 32]`` E8M0.

Per token ``t`` and top-k slot ``j`` routed to global expert ``g``:
``y[t] += w_tj * W2_g (silu(clamp(G_g x_t)) * clamp(U_g x_t))`` where the clamps
apply only with a ``swiglu_limit`` (``gate <= limit``, ``|up| <= limit``, as in
DeepSeek-V4). Experts outside ``[expert_offset, expert_offset + num_local)``
contribute nothing, so summing the outputs of all expert-parallel ranks gives
the full result.

Rounding mirrors the Triton kernel: matmuls accumulate in float32, the SwiGLU
output is rounded to the activation dtype before the down projection, and each
weighted expert output is rounded to the activation dtype before the float32
sum over top-k.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sglang_dspark.moe import mxfp4


def check_moe_shapes(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w13_scale: torch.Tensor,
    w2: torch.Tensor,
    w2_scale: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    num_local_experts: int | None,
) -> tuple[int, int, int]:
    """Validate the MoE operand shapes; return ``(H, I, num_local_experts)``."""
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be [T, H], got {tuple(hidden.shape)}")
    t, h = hidden.shape
    if w13.dim() != 3 or w2.dim() != 3:
        raise ValueError("w13 and w2 must be [E, rows, packed_cols]")
    e, two_i, h_half = w13.shape
    inter = two_i // 2
    if two_i % 2 or h_half * 2 != h:
        raise ValueError(f"w13 {tuple(w13.shape)} does not match hidden size {h} (expected [E, 2I, H/2])")
    if h % mxfp4.BLOCK_SIZE or inter % mxfp4.BLOCK_SIZE:
        raise ValueError(f"hidden ({h}) and intermediate ({inter}) sizes must be multiples of 32")
    if tuple(w13_scale.shape) != (e, two_i, h // mxfp4.BLOCK_SIZE):
        raise ValueError(f"w13_scale {tuple(w13_scale.shape)} != {(e, two_i, h // 32)}")
    if tuple(w2.shape) != (e, h, inter // 2):
        raise ValueError(f"w2 {tuple(w2.shape)} != {(e, h, inter // 2)}")
    if tuple(w2_scale.shape) != (e, h, inter // mxfp4.BLOCK_SIZE):
        raise ValueError(f"w2_scale {tuple(w2_scale.shape)} != {(e, h, inter // 32)}")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != t or topk_weights.shape != topk_ids.shape:
        raise ValueError(
            f"topk_ids {tuple(topk_ids.shape)} and topk_weights {tuple(topk_weights.shape)} must both be [T={t}, k]"
        )
    local = e if num_local_experts is None else num_local_experts
    if not 0 < local <= e:
        raise ValueError(f"num_local_experts={num_local_experts} must be in [1, {e}] (weights hold {e} experts)")
    return h, inter, local


def swiglu(gate_up: torch.Tensor, swiglu_limit: float | None) -> torch.Tensor:
    """SiLU-and-mul on ``[..., 2I]`` (gate then up) with DeepSeek-V4's optional clamp."""
    gate, up = gate_up.chunk(2, dim=-1)
    if swiglu_limit is not None:
        gate = gate.clamp(max=swiglu_limit)
        up = up.clamp(min=-swiglu_limit, max=swiglu_limit)
    return F.silu(gate) * up


def fused_moe_mxfp4_reference(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w13_scale: torch.Tensor,
    w2: torch.Tensor,
    w2_scale: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    swiglu_limit: float | None = None,
    expert_offset: int = 0,
    num_local_experts: int | None = None,
) -> torch.Tensor:
    """MoE forward with MXFP4 experts: dequantise each routed local expert, loop.

    Args:
        hidden: ``[T, H]`` activations (float32, bfloat16 or float16).
        w13, w13_scale, w2, w2_scale: expert weights in the layout of this module.
        topk_weights: ``[T, k]`` routing weights.
        topk_ids: ``[T, k]`` global expert ids.
        swiglu_limit: optional DeepSeek-V4 SwiGLU clamp.
        expert_offset: global id of local expert 0.
        num_local_experts: local experts (default: all experts in the weights).

    Returns:
        ``[T, H]`` in ``hidden.dtype``.
    """
    _, _, local = check_moe_shapes(hidden, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids, num_local_experts)
    dtype = hidden.dtype
    out = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
    x = hidden.float()
    local_ids = topk_ids.long() - expert_offset
    present = torch.unique(local_ids[(local_ids >= 0) & (local_ids < local)]).tolist()
    for e in present:
        tok, slot = torch.nonzero(local_ids == e, as_tuple=True)
        gate_up = x[tok] @ mxfp4.dequantize(w13[e], w13_scale[e]).T
        act = swiglu(gate_up, swiglu_limit).to(dtype).float()
        y = act @ mxfp4.dequantize(w2[e], w2_scale[e]).T
        y = (y * topk_weights[tok, slot].float().unsqueeze(-1)).to(dtype)
        out.index_add_(0, tok, y.float())
    return out.to(dtype)


def moe_align_block_size_reference(
    topk_ids: torch.Tensor,
    block_m: int,
    expert_offset: int,
    num_local_experts: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Group token-expert pairs by local expert, each group padded to ``block_m``.

    Pair ``p = t * k + j`` is routed to ``topk_ids[t, j]``. Groups are ordered by
    local expert, then one group holding every non-local pair. Within a group
    pairs keep increasing ``p``. Pad slots hold ``T * k``.

    Returns:
        ``(sorted_ids, block_expert, num_padded)``: ``sorted_ids`` has
        ``num_padded`` entries; ``block_expert[b]`` is the local expert of block
        ``b`` (``-1`` for the non-local group).
    """
    flat = topk_ids.reshape(-1).long() - expert_offset
    n = flat.numel()
    bucket = torch.where((flat >= 0) & (flat < num_local_experts), flat, num_local_experts)
    sorted_ids: list[int] = []
    block_expert: list[int] = []
    for b in range(num_local_experts + 1):
        members = torch.nonzero(bucket == b).flatten().tolist()
        if not members:
            continue
        padded = -(-len(members) // block_m) * block_m
        sorted_ids += members + [n] * (padded - len(members))
        block_expert += [b if b < num_local_experts else -1] * (padded // block_m)
    return (
        torch.tensor(sorted_ids, dtype=torch.int32),
        torch.tensor(block_expert, dtype=torch.int32),
        len(sorted_ids),
    )
