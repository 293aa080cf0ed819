"""Adapter from this package's MXFP4 expert layout to FlashInfer's fused MoE.

Two FlashInfer (0.7.x) entry points take MXFP4 weights with bfloat16
activations (W4A16):

* SM90 (Hopper: H100, H200, H20): ``flashinfer.fused_moe.cutlass_fused_moe``
  with ``use_w4_group_scaling=True``. Weights must first go through
  ``interleave_moe_weights_for_sm90_mixed_gemm(w, "fp4")`` and the E8M0 scales
  through ``interleave_moe_scales_for_sm90_mixed_gemm(s, group_size=32)``;
  ``quant_scales`` is ``[w13_scale.view(int32), w2_scale.view(int32)]``.
* SM100 (Blackwell B200/GB200): ``trtllm_fp4_block_scale_routed_moe`` with
  bfloat16 ``hidden_states`` and no activation scale. Per expert, rows are
  permuted with FlashInfer's ``_maybe_get_cached_w3_w1_permute_indices`` /
  ``get_w2_permute_indices_with_cache`` (epilogue tile 128) and the scales are
  additionally passed through ``block_scale_interleave``.

Both kernels expect the fused first projection as ``[up; gate]`` (w3 before w1)
whereas this package stores ``[gate; up]``, so :func:`prepare_weights` swaps the
halves. Both take DeepSeek-V4's clamp as a per-expert float32 ``swiglu_limit`` /
``gemm1_clamp_limit`` (alpha and beta left at their defaults 1 and 0, i.e.
``silu(min(g, l)) * clamp(u, -l, l)``). Written against the FlashInfer source
and SGLang 0.5.23's ``mxfp4_flashinfer_cutlass_moe.py`` /
``mxfp4_flashinfer_trtllm_moe.py``, which call the same entry points for
DeepSeek-V4; it has not run on a GPU in this repository's CI.

Expert parallelism: FlashInfer takes global ids plus (ep_size, ep_rank) or
(num_experts, local_expert_offset), which would need the global expert count.
Instead ids are rebased to the local range and every non-local pair is sent to
expert ``L`` (``L`` = local experts) of a virtual ``2L``-expert, two-rank
layout in which this rank is rank 0; FlashInfer then skips those pairs, so
they contribute zero as the other backends do.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import torch

logger = logging.getLogger(__name__)

Backend = Literal["sm90_cutlass", "sm100_trtllm"]

_ALIGN = 128  # both kernels tile hidden and intermediate sizes by 128
_EPILOGUE_TILE_M = 128


class FlashinferUnavailableError(RuntimeError):
    """FlashInfer, or a GPU and shape it supports for MXFP4 MoE, is missing."""


@dataclass(frozen=True)
class PreparedWeights:
    """Expert weights rearranged once for one FlashInfer backend."""

    backend: Backend
    w13: torch.Tensor
    w13_scale: torch.Tensor
    w2: torch.Tensor
    w2_scale: torch.Tensor
    num_local_experts: int
    hidden_size: int
    intermediate_size: int


def _import_fused_moe() -> Any:
    try:
        from flashinfer import fused_moe
    except ImportError as exc:  # flashinfer is an optional GPU dependency
        raise FlashinferUnavailableError(
            "impl='flashinfer' needs flashinfer-python 0.7.x (pip install 'sglang-dspark[cuda]')"
        ) from exc
    return fused_moe


def select_backend(device: torch.device, hidden_size: int, intermediate_size: int) -> tuple[Backend | None, str]:
    """Return the FlashInfer backend usable here, or ``None`` with the reason why not."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None, "tensors are not on a CUDA device"
    try:
        fused_moe = _import_fused_moe()
    except FlashinferUnavailableError as exc:
        return None, str(exc)
    if hidden_size % _ALIGN or intermediate_size % _ALIGN:
        return None, (
            f"hidden ({hidden_size}) and intermediate ({intermediate_size}) sizes must be multiples of {_ALIGN}"
        )
    major, _ = torch.cuda.get_device_capability(device)
    if major == 9:
        if hasattr(fused_moe, "cutlass_fused_moe") and hasattr(fused_moe, "interleave_moe_weights_for_sm90_mixed_gemm"):
            return "sm90_cutlass", "SM90 CUTLASS W4A16 fused MoE"
        return None, "installed flashinfer lacks the SM90 MXFP4 mixed-input MoE (needs 0.7.x)"
    if major == 10:
        if hasattr(fused_moe, "trtllm_fp4_block_scale_routed_moe"):
            return "sm100_trtllm", "SM100 TRT-LLM-Gen MXFP4 x BF16 fused MoE"
        return None, "installed flashinfer lacks trtllm_fp4_block_scale_routed_moe"
    return None, f"no FlashInfer W4A16 MXFP4 MoE for compute capability {major}.x"


def _up_first(w13: torch.Tensor) -> torch.Tensor:
    gate, up = w13.chunk(2, dim=1)
    return torch.cat((up, gate), dim=1).contiguous()


def _u8(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


def prepare_weights(
    w13: torch.Tensor,
    w13_scale: torch.Tensor,
    w2: torch.Tensor,
    w2_scale: torch.Tensor,
    backend: Backend,
) -> PreparedWeights:
    """Rearrange local expert weights (layout of :mod:`kernels.mxfp4_moe.reference`) for ``backend``.

    The result is a full copy: integration code should keep it and drop the
    originals.
    """
    fused_moe = _import_fused_moe()
    num_experts, two_i, half_h = w13.shape
    w13_u8, w13_s_u8 = _up_first(_u8(w13)), _up_first(_u8(w13_scale))
    w2_u8, w2_s_u8 = _u8(w2), _u8(w2_scale)
    if backend == "sm90_cutlass":
        return PreparedWeights(
            backend=backend,
            w13=fused_moe.interleave_moe_weights_for_sm90_mixed_gemm(w13_u8, "fp4"),
            w13_scale=fused_moe.interleave_moe_scales_for_sm90_mixed_gemm(w13_s_u8, group_size=32),
            w2=fused_moe.interleave_moe_weights_for_sm90_mixed_gemm(w2_u8, "fp4"),
            w2_scale=fused_moe.interleave_moe_scales_for_sm90_mixed_gemm(w2_s_u8, group_size=32),
            num_local_experts=num_experts,
            hidden_size=half_h * 2,
            intermediate_size=two_i // 2,
        )
    if backend != "sm100_trtllm":
        raise ValueError(f"unknown FlashInfer backend {backend!r}")

    from flashinfer.fp4_quantization import block_scale_interleave
    from flashinfer.fused_moe.core import (
        _maybe_get_cached_w3_w1_permute_indices,
        get_w2_permute_indices_with_cache,
    )

    cache: dict = {}
    g1_w, g1_s, g2_w, g2_s = [], [], [], []
    for e in range(num_experts):
        perm = _maybe_get_cached_w3_w1_permute_indices(cache, w13_u8[e], _EPILOGUE_TILE_M)
        g1_w.append(w13_u8[e][perm.to(w13_u8.device)].contiguous())
        perm = _maybe_get_cached_w3_w1_permute_indices(cache, w13_s_u8[e], _EPILOGUE_TILE_M, num_elts_per_sf=16)
        g1_s.append(block_scale_interleave(w13_s_u8[e][perm.to(w13_u8.device)].contiguous()))
        perm = get_w2_permute_indices_with_cache(cache, w2_u8[e], _EPILOGUE_TILE_M)
        g2_w.append(w2_u8[e][perm.to(w2_u8.device)].contiguous())
        perm = get_w2_permute_indices_with_cache(cache, w2_s_u8[e], _EPILOGUE_TILE_M, num_elts_per_sf=16)
        g2_s.append(block_scale_interleave(w2_s_u8[e][perm.to(w2_u8.device)].contiguous()))
    return PreparedWeights(
        backend=backend,
        w13=torch.stack(g1_w),
        w13_scale=torch.stack(g1_s).view(torch.float8_e4m3fn).reshape(num_experts, two_i, -1),
        w2=torch.stack(g2_w),
        w2_scale=torch.stack(g2_s).view(torch.float8_e4m3fn).reshape(num_experts, w2.shape[1], -1),
        num_local_experts=num_experts,
        hidden_size=half_h * 2,
        intermediate_size=two_i // 2,
    )


_CACHE_SIZE = 128  # > layers of DeepSeek-V4-Flash (43) plus its 3 drafter layers
_prepared: OrderedDict[tuple, PreparedWeights] = OrderedDict()


def prepared_weights_cached(
    w13: torch.Tensor,
    w13_scale: torch.Tensor,
    w2: torch.Tensor,
    w2_scale: torch.Tensor,
    backend: Backend,
) -> PreparedWeights:
    """:func:`prepare_weights`, memoised on the identity and version of the four tensors.

    Holds a second copy of every layer's experts; see :func:`prepare_weights`.
    """
    key = (backend,) + tuple((t.data_ptr(), tuple(t.shape), t._version) for t in (w13, w13_scale, w2, w2_scale))
    hit = _prepared.get(key)
    if hit is None:
        hit = prepare_weights(w13, w13_scale, w2, w2_scale, backend)
        _prepared[key] = hit
        if len(_prepared) > _CACHE_SIZE:
            _prepared.popitem(last=False)
    else:
        _prepared.move_to_end(key)
    return hit


def _local_routing(topk_ids: torch.Tensor, expert_offset: int, num_local: int) -> torch.Tensor:
    local = topk_ids.to(torch.int32) - expert_offset
    keep = (local >= 0) & (local < num_local)
    return torch.where(keep, local, torch.full_like(local, num_local)).contiguous()


def flashinfer_moe(
    hidden: torch.Tensor,
    weights: PreparedWeights,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    swiglu_limit: float | None = None,
    expert_offset: int = 0,
) -> torch.Tensor:
    """MoE forward through FlashInfer on prepared weights; ``[T, H]`` bfloat16.

    ``topk_ids`` are global; experts outside
    ``[expert_offset, expert_offset + weights.num_local_experts)`` contribute zero.
    """
    if hidden.dtype != torch.bfloat16:
        raise ValueError(f"FlashInfer MXFP4 MoE takes bfloat16 activations, got {hidden.dtype}")
    fused_moe = _import_fused_moe()
    num_local = weights.num_local_experts
    ids = _local_routing(topk_ids, expert_offset, num_local)
    out = torch.empty_like(hidden)
    if hidden.shape[0] == 0:
        return out
    limit = (
        None
        if swiglu_limit is None
        else torch.full((num_local,), float(swiglu_limit), dtype=torch.float32, device=hidden.device)
    )
    if weights.backend == "sm90_cutlass":
        fused_moe.cutlass_fused_moe(
            input=hidden.contiguous(),
            token_selected_experts=ids,
            token_final_scales=topk_weights.to(torch.float32).contiguous(),
            fc1_expert_weights=weights.w13,
            fc2_expert_weights=weights.w2,
            output_dtype=torch.bfloat16,
            quant_scales=[weights.w13_scale.view(torch.int32), weights.w2_scale.view(torch.int32)],
            swiglu_limit=limit,
            ep_size=2,
            ep_rank=0,
            use_w4_group_scaling=True,
            activation_type=fused_moe.ActivationType.Swiglu,
            output=out,
        )
        return out

    ones = torch.ones(num_local, dtype=torch.float32, device=hidden.device)
    num_tokens = hidden.shape[0]
    result = fused_moe.trtllm_fp4_block_scale_routed_moe(
        topk_ids=(ids, topk_weights.to(torch.float32).contiguous()),
        routing_bias=None,
        hidden_states=hidden.contiguous(),
        hidden_states_scale=None,
        gemm1_weights=weights.w13,
        gemm1_weights_scale=weights.w13_scale,
        gemm1_bias=None,
        gemm1_alpha=None,
        gemm1_beta=None,
        gemm1_clamp_limit=limit,
        gemm2_weights=weights.w2,
        gemm2_weights_scale=weights.w2_scale,
        gemm2_bias=None,
        output1_scale_scalar=ones,
        output1_scale_gate_scalar=ones,
        output2_scale_scalar=ones,
        num_experts=2 * num_local,
        top_k=topk_ids.shape[1],
        n_group=1,
        topk_group=1,
        intermediate_size=weights.intermediate_size,
        local_expert_offset=0,
        local_num_experts=num_local,
        routed_scaling_factor=1.0,
        routing_method_type=int(fused_moe.RoutingMethodType.TopK),
        do_finalize=True,
        output=out,
        tune_max_num_tokens=1 << max(0, num_tokens - 1).bit_length(),
    )
    return result[0] if isinstance(result, (list, tuple)) else result
