"""Random MXFP4 expert weights and routed batches for the MoE checks.

Weights are random bytes (every E2M1 code occurs) with E8M0 exponents in
``[118, 123)``, i.e. scales ``2**-9 .. 2**-5``: outputs of order one for
unit-variance activations, as in bench/moe_mxfp4.py. Routing is the top-k of
random logits with softmax weights, so larger T touches more experts, as real
routing does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sglang_dspark.selftest.config import MoeShape

_SCALE_EXPONENTS = (118, 123)


@dataclass(frozen=True, eq=False)
class ExpertWeights:
    """MXFP4 experts in the layout of :mod:`kernels.mxfp4_moe.reference`."""

    w13: torch.Tensor
    w13_scale: torch.Tensor
    w2: torch.Tensor
    w2_scale: torch.Tensor

    @property
    def num_experts(self) -> int:
        """Experts held."""
        return int(self.w13.shape[0])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(w13, w13_scale, w2, w2_scale)``, the order the MoE functions take."""
        return self.w13, self.w13_scale, self.w2, self.w2_scale


@dataclass(frozen=True, eq=False)
class MoeBatch:
    """Activations and routing of one case."""

    hidden: torch.Tensor
    topk_weights: torch.Tensor
    topk_ids: torch.Tensor

    @property
    def tokens(self) -> int:
        """T."""
        return int(self.hidden.shape[0])

    def touched_experts(self) -> list[int]:
        """The experts the batch routes to, ascending."""
        return torch.unique(self.topk_ids).tolist()


def make_expert_weights(shape: MoeShape, num_experts: int, device: str, seed: int) -> ExpertWeights:
    """``num_experts`` random experts of ``shape`` on ``device``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    h, i = shape.hidden, shape.intermediate

    def packed(*size: int) -> torch.Tensor:
        return torch.randint(-128, 128, size, dtype=torch.int8, device=device, generator=gen)

    def scales(*size: int) -> torch.Tensor:
        return torch.randint(*_SCALE_EXPONENTS, size, dtype=torch.uint8, device=device, generator=gen)

    return ExpertWeights(
        w13=packed(num_experts, 2 * i, h // 2),
        w13_scale=scales(num_experts, 2 * i, h // 32),
        w2=packed(num_experts, h, i // 2),
        w2_scale=scales(num_experts, h, i // 32),
    )


def make_batch(shape: MoeShape, num_experts: int, tokens: int, dtype: torch.dtype, device: str, seed: int) -> MoeBatch:
    """``tokens`` random activations routed to the top-k of ``num_experts`` experts."""
    gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + tokens)
    hidden = torch.randn(tokens, shape.hidden, device=device, generator=gen).to(dtype)
    logits = torch.randn(tokens, num_experts, device=device, generator=gen)
    top, ids = logits.topk(shape.top_k, dim=-1)
    return MoeBatch(hidden=hidden, topk_weights=torch.softmax(top, dim=-1), topk_ids=ids.to(torch.int32))
