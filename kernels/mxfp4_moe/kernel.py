"""Fused MoE with MXFP4 expert weights read directly by Triton (W4A16).

Activations stay in their dtype (bfloat16, float16 or float32); each weight tile
is loaded as packed E2M1 bytes plus E8M0 scales and dequantised in registers
just before the tensor-core dot, so the weights cross HBM at 4.25 bits each.

Pipeline (layout and semantics: :mod:`kernels.mxfp4_moe.reference`):

1. :func:`kernels.mxfp4_moe.align.moe_align_block_size` groups the ``T * k``
   token-expert pairs by local expert, padded to ``BLOCK_M``.
2. ``_w13_swiglu_kernel``: per block of one expert, ``x @ [gate; up]^T`` and the
   (optionally clamped) SiLU-and-mul, written in the activation dtype to a
   scratch buffer indexed by sorted slot.
3. ``_w2_kernel``: per block, ``h @ w2^T`` times the routing weight. With
   ``reduce="sum"`` (default) each pair's row is stored and the ``k`` rows of a
   token are summed afterwards by ``torch.sum`` (fixed order, float32
   accumulation: run-to-run deterministic, which lossless speculative decoding
   relies on). With ``reduce="atomic"`` the kernel adds into a float32 ``[T, H]``
   output with atomics, so the sum over top-k is inside this launch but its
   order, hence the last bits, varies between runs.

Non-local pairs (expert parallelism) land in blocks of expert ``-1``: the
first kernel skips them, the second writes zeros for them.

Each byte holds elements ``2i`` (low nibble) and ``2i + 1`` (high nibble); the
kernels keep the two halves apart and multiply them with the even and odd
activation columns, which avoids an in-register interleave.

float16 activations: weights are dequantised to float16 before the dot, so a
weight outside float16's range (scale above ``2**13`` or below ``2**-24``)
would be lost; real checkpoints are far inside it. bfloat16 has float32's
exponent range and is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import triton
import triton.language as tl

from .align import moe_align_block_size
from .reference import check_moe_shapes


@dataclass(frozen=True)
class MoeConfig:
    """Tile sizes and launch parameters shared by both GEMM kernels."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3


def default_config(num_pairs: int, num_local_experts: int, device: torch.device) -> MoeConfig:
    """Heuristic tiles by average pairs per expert (untuned; see bench/moe_mxfp4.py).

    Decode shapes are weight-bandwidth bound: a short ``BLOCK_M`` wastes the
    fewest padded rows; ``BLOCK_K`` 64 keeps the four dequantised float32 tiles
    of the gate/up step in registers.
    """
    if device.type != "cuda":
        return MoeConfig(block_m=16, block_n=64, block_k=64, num_warps=4, num_stages=1)
    per_expert = num_pairs / max(1, num_local_experts)
    if per_expert <= 16:
        return MoeConfig(block_m=16, block_n=64, block_k=64, num_warps=4, num_stages=4)
    if per_expert <= 64:
        return MoeConfig(block_m=32, block_n=64, block_k=64, num_warps=4, num_stages=3)
    return MoeConfig(block_m=64, block_n=128, block_k=64, num_warps=8, num_stages=3)


@triton.jit
def _e2m1_to_f32(code):
    """E2M1 codes (int32, 0..15) to float32, built from the bits."""
    e = (code >> 1) & 3
    m = code & 1
    normal = ((e + 126) << 23) | (m << 22)  # (1 + m/2) * 2**(e-1)
    subnormal = m * (126 << 23)  # m * 0.5
    bits = tl.where(e == 0, subnormal, normal) | ((code & 8) << 28)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _e8m0_to_f32(s):
    """E8M0 exponents (int32, 0..255) to float32 ``2**(s - 127)``."""
    bits = tl.where(s == 0, 0x00400000, s << 23)  # s == 0 is the subnormal 2**-127
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _dequant_tile(w_ptrs, s_ptrs, w_mask, s_mask, HALF_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """Load a ``[HALF_K, BLOCK_N]`` byte tile and its ``[HALF_K // 16, BLOCK_N]`` scales.

    Returns the dequantised float32 ``(even, odd)`` element tiles, each
    ``[HALF_K, BLOCK_N]`` (row ``i`` = logical K index ``2i`` / ``2i + 1``).
    """
    byte = tl.load(w_ptrs, mask=w_mask, other=0).to(tl.int32) & 0xFF
    exps = tl.load(s_ptrs, mask=s_mask, other=127).to(tl.int32) & 0xFF
    scale = _e8m0_to_f32(exps)
    # 16 bytes (32 elements) share one scale.
    scale = tl.reshape(tl.broadcast_to(scale[:, None, :], (HALF_K // 16, 16, BLOCK_N)), (HALF_K, BLOCK_N))
    even = _e2m1_to_f32(byte & 0xF) * scale
    odd = _e2m1_to_f32(byte >> 4) * scale
    return even, odd


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a.to(tl.float32), b, acc, input_precision="ieee")
    return tl.dot(a, b.to(a.dtype), acc)


@triton.jit
def _w13_swiglu_kernel(
    x_ptr,
    w_ptr,
    s_ptr,
    h_ptr,
    sorted_ids_ptr,
    block_expert_ptr,
    num_padded_ptr,
    num_pairs,
    inter,
    hidden,
    stride_xm,
    stride_xk,
    stride_we,
    stride_wn,
    stride_wk,
    stride_se,
    stride_sn,
    stride_sk,
    stride_hm,
    stride_hn,
    swiglu_limit,
    TOP_K: tl.constexpr,
    HAS_LIMIT: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    expert = tl.load(block_expert_ptr + pid_m)
    if expert < 0:
        return

    HALF_K: tl.constexpr = BLOCK_K // 2
    slots = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(sorted_ids_ptr + slots)
    row_ok = pair < num_pairs
    token = (pair // TOP_K).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < inter
    offs_b = tl.arange(0, HALF_K)
    offs_g = tl.arange(0, HALF_K // 16)

    x_even = x_ptr + token[:, None] * stride_xm + (2 * offs_b)[None, :] * stride_xk
    w_gate = w_ptr + expert.to(tl.int64) * stride_we + offs_n[None, :] * stride_wn + offs_b[:, None] * stride_wk
    s_gate = s_ptr + expert.to(tl.int64) * stride_se + offs_n[None, :] * stride_sn + offs_g[:, None] * stride_sk
    up_w = inter * stride_wn
    up_s = inter * stride_sn

    acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    half_hidden = hidden // 2
    for k0 in range(0, hidden, BLOCK_K):
        b0 = k0 // 2
        b_ok = (b0 + offs_b) < half_hidden
        g_ok = (k0 // 32 + offs_g) < hidden // 32
        x_mask = row_ok[:, None] & b_ok[None, :]
        xe = tl.load(x_even + k0 * stride_xk, mask=x_mask, other=0.0)
        xo = tl.load(x_even + (k0 + 1) * stride_xk, mask=x_mask, other=0.0)
        w_mask = b_ok[:, None] & n_ok[None, :]
        s_mask = g_ok[:, None] & n_ok[None, :]
        w_step = b0 * stride_wk
        s_step = (k0 // 32) * stride_sk
        ge, go = _dequant_tile(w_gate + w_step, s_gate + s_step, w_mask, s_mask, HALF_K, BLOCK_N)
        acc_gate = _dot(xe, ge, acc_gate, IEEE)
        acc_gate = _dot(xo, go, acc_gate, IEEE)
        ue, uo = _dequant_tile(w_gate + up_w + w_step, s_gate + up_s + s_step, w_mask, s_mask, HALF_K, BLOCK_N)
        acc_up = _dot(xe, ue, acc_up, IEEE)
        acc_up = _dot(xo, uo, acc_up, IEEE)

    if HAS_LIMIT:
        acc_gate = tl.minimum(acc_gate, swiglu_limit)
        acc_up = tl.minimum(tl.maximum(acc_up, -swiglu_limit), swiglu_limit)
    act = acc_gate * tl.sigmoid(acc_gate) * acc_up
    h_ptrs = h_ptr + slots.to(tl.int64)[:, None] * stride_hm + offs_n[None, :] * stride_hn
    tl.store(h_ptrs, act.to(h_ptr.dtype.element_ty), mask=n_ok[None, :])


@triton.jit
def _w2_kernel(
    h_ptr,
    w_ptr,
    s_ptr,
    out_ptr,
    topk_weights_ptr,
    sorted_ids_ptr,
    block_expert_ptr,
    num_padded_ptr,
    num_pairs,
    hidden,
    inter,
    stride_hm,
    stride_hk,
    stride_we,
    stride_wn,
    stride_wk,
    stride_se,
    stride_sn,
    stride_sk,
    stride_om,
    stride_on,
    TOP_K: tl.constexpr,
    ATOMIC: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    slots = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(sorted_ids_ptr + slots)
    row_ok = pair < num_pairs
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < hidden
    if ATOMIC:
        out_rows = (pair // TOP_K).to(tl.int64)
    else:
        out_rows = pair.to(tl.int64)
    out_ptrs = out_ptr + out_rows[:, None] * stride_om + offs_n[None, :] * stride_on
    out_mask = row_ok[:, None] & n_ok[None, :]

    expert = tl.load(block_expert_ptr + pid_m)
    if expert < 0:
        if not ATOMIC:
            tl.store(out_ptrs, tl.zeros((BLOCK_M, BLOCK_N), dtype=out_ptr.dtype.element_ty), mask=out_mask)
        return

    HALF_K: tl.constexpr = BLOCK_K // 2
    offs_b = tl.arange(0, HALF_K)
    offs_g = tl.arange(0, HALF_K // 16)
    h_even = h_ptr + slots.to(tl.int64)[:, None] * stride_hm + (2 * offs_b)[None, :] * stride_hk
    w_ptrs = w_ptr + expert.to(tl.int64) * stride_we + offs_n[None, :] * stride_wn + offs_b[:, None] * stride_wk
    s_ptrs = s_ptr + expert.to(tl.int64) * stride_se + offs_n[None, :] * stride_sn + offs_g[:, None] * stride_sk

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    half_inter = inter // 2
    for k0 in range(0, inter, BLOCK_K):
        b0 = k0 // 2
        b_ok = (b0 + offs_b) < half_inter
        g_ok = (k0 // 32 + offs_g) < inter // 32
        # Padding slots of a block were written as zeros by the first kernel.
        he = tl.load(h_even + k0 * stride_hk, mask=b_ok[None, :], other=0.0)
        ho = tl.load(h_even + (k0 + 1) * stride_hk, mask=b_ok[None, :], other=0.0)
        we, wo = _dequant_tile(
            w_ptrs + b0 * stride_wk,
            s_ptrs + (k0 // 32) * stride_sk,
            b_ok[:, None] & n_ok[None, :],
            g_ok[:, None] & n_ok[None, :],
            HALF_K,
            BLOCK_N,
        )
        acc = _dot(he, we, acc, IEEE)
        acc = _dot(ho, wo, acc, IEEE)

    weight = tl.load(topk_weights_ptr + pair, mask=row_ok, other=0.0).to(tl.float32)
    acc = acc * weight[:, None]
    if ATOMIC:
        tl.atomic_add(out_ptrs, acc, mask=out_mask)
    else:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def _interpreting() -> bool:
    # Triton 3.9's interpreter multiplies bfloat16 dot operands as their raw
    # uint16 storage; there the dots run in float32 on the same bf16 values.
    return bool(triton.knobs.runtime.interpret)


def _raw_bytes(t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.float8_e8m0fnu:
        return t.view(torch.uint8)
    if t.dtype not in (torch.int8, torch.uint8):
        raise TypeError(f"expected int8/uint8 packed data or uint8/float8_e8m0fnu scales, got {t.dtype}")
    return t


def fused_moe_mxfp4(
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
    reduce: Literal["sum", "atomic"] = "sum",
    config: MoeConfig | None = None,
) -> torch.Tensor:
    """MoE forward with MXFP4 experts in two Triton GEMM launches.

    Arguments and result as :func:`kernels.mxfp4_moe.reference.fused_moe_mxfp4_reference`
    (``[T, H]`` in ``hidden.dtype``), plus:

    Args:
        reduce: ``"sum"`` (deterministic, default) or ``"atomic"`` (sum over
            top-k fused into the second launch with float32 atomics).
        config: tile sizes; :func:`default_config` when omitted.
    """
    _, inter, local = check_moe_shapes(
        hidden, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids, num_local_experts
    )
    if hidden.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"unsupported activation dtype {hidden.dtype}")
    if reduce not in ("sum", "atomic"):
        raise ValueError(f"reduce must be 'sum' or 'atomic', got {reduce!r}")
    if hidden.device.type != "cuda" and not _interpreting():
        raise RuntimeError(
            "the Triton MXFP4 MoE needs CUDA tensors; on CPU set TRITON_INTERPRET=1 before importing "
            "kernels.mxfp4_moe.kernel, or use impl='torch'"
        )
    num_tokens, hidden_size = hidden.shape
    top_k = topk_ids.shape[1]
    num_pairs = num_tokens * top_k
    if num_pairs == 0:
        return torch.zeros_like(hidden)
    cfg = config or default_config(num_pairs, local, hidden.device)
    if cfg.block_k % 32 or cfg.block_m < 16 or cfg.block_n < 16:
        raise ValueError(f"invalid config {cfg}: block_k must be a multiple of 32, block_m/n >= 16")

    w13, w13_scale, w2, w2_scale = (_raw_bytes(t) for t in (w13, w13_scale, w2, w2_scale))
    topk_weights = topk_weights.reshape(-1).contiguous()
    aligned = moe_align_block_size(topk_ids, cfg.block_m, expert_offset=expert_offset, num_local_experts=local)
    ieee = hidden.dtype == torch.float32 or (hidden.dtype == torch.bfloat16 and _interpreting())
    launch = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    act = torch.empty(aligned.sorted_ids.numel(), inter, dtype=hidden.dtype, device=hidden.device)
    grid1 = (aligned.num_blocks, triton.cdiv(inter, cfg.block_n))
    _w13_swiglu_kernel[grid1](
        hidden,
        w13,
        w13_scale,
        act,
        aligned.sorted_ids,
        aligned.block_expert,
        aligned.num_padded,
        num_pairs,
        inter,
        hidden_size,
        *hidden.stride(),
        *w13.stride(),
        *w13_scale.stride(),
        *act.stride(),
        0.0 if swiglu_limit is None else float(swiglu_limit),
        TOP_K=top_k,
        HAS_LIMIT=swiglu_limit is not None,
        IEEE=ieee,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        **launch,
    )

    atomic = reduce == "atomic"
    if atomic:
        out = torch.zeros(num_tokens, hidden_size, dtype=torch.float32, device=hidden.device)
    else:
        out = torch.empty(num_pairs, hidden_size, dtype=hidden.dtype, device=hidden.device)
    grid2 = (aligned.num_blocks, triton.cdiv(hidden_size, cfg.block_n))
    _w2_kernel[grid2](
        act,
        w2,
        w2_scale,
        out,
        topk_weights,
        aligned.sorted_ids,
        aligned.block_expert,
        aligned.num_padded,
        num_pairs,
        hidden_size,
        inter,
        *act.stride(),
        *w2.stride(),
        *w2_scale.stride(),
        *out.stride(),
        TOP_K=top_k,
        ATOMIC=atomic,
        IEEE=ieee,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        **launch,
    )
    if atomic:
        return out.to(hidden.dtype)
    return out.view(num_tokens, top_k, hidden_size).sum(dim=1)
