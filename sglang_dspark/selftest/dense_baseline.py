"""The baseline the fused kernels are timed against: dequantise each routed expert, then dense GEMMs.

What a runner without an MXFP4 kernel does: every call expands each touched
expert's MXFP4 weights to the activation dtype (bfloat16 on a GPU; exact,
since E2M1 values times powers of two fit bfloat16) and runs one gate/up and
one down GEMM per expert. It reads the same MXFP4 bytes as the fused kernels
plus the expanded copy, so its bandwidth share shows what fusing buys.
"""

from __future__ import annotations

import torch

from kernels.mxfp4_moe.reference import swiglu
from sglang_dspark.moe import mxfp4
from sglang_dspark.selftest.moe_cases import ExpertWeights, MoeBatch


def dequant_dense_moe(weights: ExpertWeights, batch: MoeBatch, swiglu_limit: float | None) -> torch.Tensor:
    """``[T, H]`` MoE output in the activation dtype (one expert at a time, so memory stays one expert's)."""
    x = batch.hidden
    dtype = x.dtype
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    ids = batch.topk_ids
    for e in torch.unique(ids).tolist():
        tok, slot = torch.nonzero(ids == e, as_tuple=True)
        w13 = mxfp4.dequantize(weights.w13[e], weights.w13_scale[e]).to(dtype)
        w2 = mxfp4.dequantize(weights.w2[e], weights.w2_scale[e]).to(dtype)
        act = swiglu((x[tok] @ w13.T).float(), swiglu_limit).to(dtype)
        y = (act @ w2.T).float() * batch.topk_weights[tok, slot, None].float()
        out.index_add_(0, tok, y.to(dtype).float())
    return out.to(dtype)
