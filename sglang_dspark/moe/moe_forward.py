"""Routed-expert forward for MXFP4 experts, with a choice of implementation.

Weight layout (the checkpoint's ``w1``/``w3``/``w2`` stacked per local expert):
``w13_packed [E, 2I, H/2]`` (gate rows, then up rows) with ``w13_scale
[E, 2I, H/32]``, and ``w2_packed [E, H, I/2]`` with ``w2_scale [E, H, I/32]``;
format in :mod:`sglang_dspark.moe.mxfp4`. Shared experts are not handled here.

Parallelism:

* Expert parallelism: ``topk_ids`` hold global expert ids. A rank holding
  experts ``[expert_offset, expert_offset + num_local_experts)`` passes its
  ``E = num_local_experts`` expert weights and gets the contribution of those
  experts only (zero for tokens routed elsewhere), so summing (all-reducing)
  the outputs of all ranks gives the full MoE output.
* Tensor parallelism of the intermediate dimension: rank ``r`` of ``n`` keeps
  intermediate columns ``[r * I/n, (r + 1) * I/n)``: those rows of both the gate
  and the up halves of ``w13`` and those columns of ``w2`` (see
  :func:`shard_intermediate`; ``I/n`` must stay a multiple of 32 so that scale
  blocks are not split). SwiGLU is elementwise over the intermediate dimension,
  so each rank's output is a partial sum and an all-reduce over ranks gives the
  full output. Both kinds compose (every rank passes its own shard and offset).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch

from kernels.mxfp4_moe.reference import check_moe_shapes, fused_moe_mxfp4_reference
from sglang_dspark.moe import mxfp4

logger = logging.getLogger(__name__)

Impl = Literal["torch", "triton", "flashinfer", "auto"]
IMPLS: tuple[str, ...] = ("torch", "triton", "flashinfer", "auto")

_logged_choices: set[tuple[str, str]] = set()


def _log_choice_once(impl: str, reason: str) -> None:
    if (impl, reason) not in _logged_choices:
        _logged_choices.add((impl, reason))
        logger.info("MXFP4 MoE: impl='auto' uses %s (%s)", impl, reason)


def resolve_impl(impl: Impl, hidden: torch.Tensor, hidden_size: int, intermediate_size: int) -> str:
    """Resolve ``impl`` (``"auto"`` included) to ``"torch"``, ``"triton"`` or ``"flashinfer"``.

    ``"auto"``: FlashInfer where the GPU generation and installed FlashInfer
    support bfloat16 x MXFP4 for these sizes, else Triton on CUDA, else torch.
    The choice is logged once per distinct outcome.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    if hidden.device.type != "cuda":
        choice, reason = "torch", f"tensors on {hidden.device.type}"
    else:
        from sglang_dspark.moe.flashinfer_mxfp4 import select_backend

        backend, why = select_backend(hidden.device, hidden_size, intermediate_size)
        if backend is not None and hidden.dtype == torch.bfloat16:
            choice, reason = "flashinfer", why
        else:
            why = why if backend is None else f"activations are {hidden.dtype}, FlashInfer needs bfloat16"
            choice, reason = "triton", f"FlashInfer not used: {why}"
    _log_choice_once(choice, reason)
    return choice


def moe_forward(
    hidden: torch.Tensor,
    w13_packed: torch.Tensor,
    w13_scale: torch.Tensor,
    w2_packed: torch.Tensor,
    w2_scale: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    impl: Impl = "auto",
    swiglu_limit: float | None = None,
    expert_offset: int = 0,
    num_local_experts: int | None = None,
) -> torch.Tensor:
    """Routed MoE output ``sum_j topk_weights[t, j] * expert_{topk_ids[t, j]}(hidden[t])``.

    Args:
        hidden: ``[T, H]`` activations (bfloat16, float16 or float32).
        w13_packed, w13_scale, w2_packed, w2_scale: local experts' MXFP4 weights
            (layout in the module docstring); scales uint8 or float8_e8m0fnu.
        topk_weights: ``[T, k]`` routing weights.
        topk_ids: ``[T, k]`` global expert ids.
        impl: ``"torch"`` (dequantise each routed expert and loop; reference),
            ``"triton"`` (fused kernel reading MXFP4 directly), ``"flashinfer"``
            (FlashInfer fused MoE, SM90/SM100, bfloat16 only; raises
            :class:`~sglang_dspark.moe.flashinfer_mxfp4.FlashinferUnavailableError`
            without FlashInfer or a supported GPU) or ``"auto"``.
        swiglu_limit: DeepSeek-V4's clamp (``gate <= limit``, ``|up| <= limit``);
            ``None`` for none.
        expert_offset: global id of local expert 0.
        num_local_experts: local experts; defaults to ``w13_packed.shape[0]``.

    Returns:
        ``[T, H]`` in ``hidden.dtype``: this rank's contribution.
    """
    hidden_size, inter, local = check_moe_shapes(
        hidden, w13_packed, w13_scale, w2_packed, w2_scale, topk_weights, topk_ids, num_local_experts
    )
    chosen = resolve_impl(impl, hidden, hidden_size, inter)
    kwargs = dict(swiglu_limit=swiglu_limit, expert_offset=expert_offset, num_local_experts=local)
    if chosen == "torch":
        return fused_moe_mxfp4_reference(
            hidden, w13_packed, w13_scale, w2_packed, w2_scale, topk_weights, topk_ids, **kwargs
        )
    if chosen == "triton":
        from kernels.mxfp4_moe.kernel import fused_moe_mxfp4

        return fused_moe_mxfp4(hidden, w13_packed, w13_scale, w2_packed, w2_scale, topk_weights, topk_ids, **kwargs)

    from sglang_dspark.moe import flashinfer_mxfp4 as fi

    backend, why = fi.select_backend(hidden.device, hidden_size, inter)
    if backend is None:
        raise fi.FlashinferUnavailableError(f"impl='flashinfer' unavailable: {why}")
    prepared = fi.prepared_weights_cached(
        w13_packed[:local], w13_scale[:local], w2_packed[:local], w2_scale[:local], backend
    )
    return fi.flashinfer_moe(
        hidden, prepared, topk_weights, topk_ids, swiglu_limit=swiglu_limit, expert_offset=expert_offset
    )


def shard_intermediate(
    w13_packed: torch.Tensor,
    w13_scale: torch.Tensor,
    w2_packed: torch.Tensor,
    w2_scale: torch.Tensor,
    rank: int,
    world_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slice the intermediate dimension for tensor-parallel rank ``rank`` of ``world_size``.

    Returns contiguous ``(w13_packed, w13_scale, w2_packed, w2_scale)`` holding
    intermediate columns ``[rank * I/n, (rank + 1) * I/n)``. Summing the
    :func:`moe_forward` outputs of all ranks gives the unsharded output.
    """
    inter = w13_packed.shape[1] // 2
    if inter % world_size or (inter // world_size) % mxfp4.BLOCK_SIZE:
        raise ValueError(
            f"intermediate size {inter} must split into {world_size} shards that are multiples of {mxfp4.BLOCK_SIZE}"
        )
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world size {world_size}")
    shard = inter // world_size
    lo, hi = rank * shard, (rank + 1) * shard

    def gate_up_rows(t: torch.Tensor) -> torch.Tensor:
        raw = t.view(torch.uint8)  # byte view: cat is not defined for float8_e8m0fnu everywhere
        return torch.cat((raw[:, lo:hi], raw[:, inter + lo : inter + hi]), dim=1).view(t.dtype)

    return (
        gate_up_rows(w13_packed),
        gate_up_rows(w13_scale),
        w2_packed[:, :, lo // 2 : hi // 2].contiguous(),
        w2_scale[:, :, lo // mxfp4.BLOCK_SIZE : hi // mxfp4.BLOCK_SIZE].contiguous(),
    )
