"""Online correction of the confidence head from the acceptance the server measures.

STS calibration is fitted offline on the drafter's training distribution; a
served workload can differ (other prompts, another sampling temperature, a
drafter trained for a neighbouring revision of the target). The prefix
scheduler trusts the confidences it is given, so over-confident ones make it
verify drafts that are rejected, and under-confident ones leave accepted
tokens unverified.

For each block position ``k`` the corrector keeps decayed sums of the
predicted conditional confidence ``c_k`` and of the outcome over the positions
whose outcome the verification revealed (position ``k`` is observed when it
was verified and positions ``1..k-1`` were accepted), and rescales new
confidences by ``(accepted_k + m) / (predicted_k + m)``. The pseudo-count
``m`` makes a fresh corrector the identity; the decay pulls every position
back toward it when it is no longer observed (e.g. after the scheduler stopped
verifying it), so a position written off is retried.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ConfidenceCorrector", "ConfidenceCorrectorConfig", "observed_outcomes"]


@dataclass(frozen=True)
class ConfidenceCorrectorConfig:
    """Attributes:
    block_size: drafted positions per block (``K``).
    prior_observations: pseudo-count ``m`` of perfectly calibrated outcomes per position.
    halflife_steps: steps over which the sums lose half their weight.
    """

    block_size: int
    prior_observations: float = 16.0
    halflife_steps: float = 256.0

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.prior_observations <= 0:
            raise ValueError(f"prior_observations must be > 0, got {self.prior_observations}")
        if self.halflife_steps <= 0:
            raise ValueError(f"halflife_steps must be > 0, got {self.halflife_steps}")


def observed_outcomes(
    verify_lens: torch.Tensor, num_accepted: torch.Tensor, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which positions a verification revealed, and which of those were accepted.

    Args:
        verify_lens: ``[B]`` drafts verified per request.
        num_accepted: ``[B]`` drafts accepted per request (``<= verify_lens``).
        block_size: ``K``.

    Returns:
        ``(observed, accepted)``, boolean ``[B, K]``: position ``k`` (1-based)
        is observed when ``k <= min(num_accepted + 1, verify_lens)`` and
        accepted when ``k <= num_accepted``.
    """
    k = torch.arange(1, block_size + 1, device=verify_lens.device)[None, :]
    accepted_n = num_accepted.to(verify_lens.dtype)[:, None]
    observed = k <= torch.minimum(accepted_n + 1, verify_lens[:, None])
    return observed, k <= accepted_n


class ConfidenceCorrector:
    """Per-position rescaling of conditional confidences by measured acceptance."""

    def __init__(self, config: ConfidenceCorrectorConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self._keep = 0.5 ** (1.0 / config.halflife_steps)
        self.predicted = torch.zeros(config.block_size, dtype=torch.float64, device=device)
        self.accepted = torch.zeros(config.block_size, dtype=torch.float64, device=device)

    @property
    def scale(self) -> torch.Tensor:
        """``[K]`` factor applied to position ``k``'s confidence."""
        m = self.config.prior_observations
        return (self.accepted + m) / (self.predicted + m)

    def correct(self, confidence: torch.Tensor) -> torch.Tensor:
        """``[B, K]`` confidences rescaled per position, clamped to ``[0, 1]``."""
        return (confidence.to(torch.float64) * self.scale).clamp_(0.0, 1.0).to(confidence.dtype)

    def update(self, confidence: torch.Tensor, verify_lens: torch.Tensor, num_accepted: torch.Tensor) -> None:
        """Add one verify step.

        Args:
            confidence: ``[B, K]`` the drafter's (uncorrected) conditional confidences.
            verify_lens: ``[B]`` drafts the step verified per request.
            num_accepted: ``[B]`` drafts it accepted per request.
        """
        if confidence.shape[-1] != self.config.block_size:
            raise ValueError(
                f"confidence has {confidence.shape[-1]} positions, block size is {self.config.block_size}"
            )
        observed, accepted = observed_outcomes(verify_lens, num_accepted, self.config.block_size)
        self.predicted.mul_(self._keep).add_((confidence.to(torch.float64) * observed).sum(0))
        self.accepted.mul_(self._keep).add_((accepted & observed).sum(0).to(torch.float64))
