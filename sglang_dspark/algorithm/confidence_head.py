"""Confidence head: per-position acceptance estimates for the prefix scheduler.

``c_k = sigmoid(proj([h_k ; W1[x_{k-1}]]))`` estimates the probability that
draft position k is accepted given that all earlier positions were
(DeepSpec ``AcceptRatePredictor`` in ``deepspec/modeling/dspark/common.py``;
state-dict keys ``confidence_head.proj.weight`` ``[1, H + r]`` and
``confidence_head.proj.bias`` ``[1]``). ``h_k`` is the drafter's final-norm
output; the ``W1[x_{k-1}]`` part is present when the drafter was trained with
``confidence_head_with_markov`` (DeepSpec's recipes and V4 both do).

Survival probability of a drafted prefix of length j: ``a_j = prod_{k<=j} c_k``.
STS calibration divides each position's logit by a temperature ``T_k``.
"""

from __future__ import annotations

import torch
from torch import nn

from sglang_dspark.algorithm.config import DSparkConfig

__all__ = ["ConfidenceHead", "apply_sts", "survival_probabilities"]


class ConfidenceHead(nn.Module):
    """``proj: Linear(hidden [+ rank], 1)`` returning confidence logits (float32)."""

    def __init__(self, hidden_size: int, markov_rank: int = 0) -> None:
        super().__init__()
        self.hidden_size = int(hidden_size)
        self.markov_rank = int(markov_rank)
        self.proj = nn.Linear(self.hidden_size + self.markov_rank, 1)

    @classmethod
    def from_config(cls, config: DSparkConfig) -> "ConfidenceHead":
        """Head for ``config``; reads ``W1[x_{k-1}]`` iff ``confidence_head_with_markov``."""
        rank = config.markov_rank if config.confidence_head_with_markov else 0
        return cls(config.hidden_size, rank)

    @property
    def uses_markov_features(self) -> bool:
        """Whether the head reads ``W1[x_{k-1}]`` besides ``h_k``."""
        return self.markov_rank > 0

    def forward(
        self, hidden: torch.Tensor, prev_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Confidence logits.

        Args:
            hidden: ``[..., H]`` drafter output at the drafted positions.
            prev_features: ``[..., r]`` ``W1[x_{k-1}]`` (required iff the head uses it).

        Returns:
            ``[...]`` float32 logits; ``sigmoid`` gives ``c_k``.
        """
        if self.uses_markov_features:
            if prev_features is None:
                raise ValueError("this confidence head needs the Markov features W1[x_{k-1}].")
            features = torch.cat([hidden, prev_features.to(hidden.dtype)], dim=-1)
        else:
            features = hidden
        weight = self.proj.weight
        return self.proj(features.to(weight.dtype)).squeeze(-1).float()


def apply_sts(confidence_logits: torch.Tensor, temperatures: torch.Tensor | None) -> torch.Tensor:
    """Calibrated per-position confidences ``sigmoid(logit_k / T_k)``.

    Args:
        confidence_logits: ``[B, K]`` raw logits.
        temperatures: ``[K]`` (or ``[B, K]``) positive STS temperatures, or
            ``None`` for uncalibrated ``sigmoid(logit_k)``.
    """
    logits = confidence_logits.float()
    if temperatures is None:
        return torch.sigmoid(logits)
    temps = temperatures.to(device=logits.device, dtype=torch.float32)
    num_pos = logits.shape[-1]
    if temps.shape[-1] < num_pos:
        raise ValueError(
            f"need an STS temperature per draft position: got {temps.shape[-1]} for {num_pos}."
        )
    return torch.sigmoid(logits / temps[..., :num_pos])


def survival_probabilities(confidence: torch.Tensor) -> torch.Tensor:
    """``a_j = prod_{k<=j} c_k`` along the last dim (``[B, K]`` -> ``[B, K]``)."""
    return torch.cumprod(confidence.float(), dim=-1)
