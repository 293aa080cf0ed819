"""Detects acceptance collapse: a drafter whose drafts the target keeps rejecting.

A drafter trained for another target (or another revision of it), a wrong
``target_layer_ids`` mapping or a broken checkpoint still produces valid
tokens, so the server stays correct, but every verify step then commits one
token at a higher cost than plain decoding. The guard keeps an exponential
moving average of the fraction of verified drafts that were accepted and
reports a collapse once it stays below a threshold after a warm-up.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AcceptanceGuard", "AcceptanceGuardConfig"]


@dataclass(frozen=True)
class AcceptanceGuardConfig:
    """When to call the acceptance rate collapsed.

    Attributes:
        threshold: collapse when the smoothed acceptance rate (accepted drafts
            per verified draft) is below this.
        warmup_drafts: verified drafts to see before any verdict.
        halflife_drafts: verified drafts over which old steps lose half their weight.
    """

    threshold: float = 0.05
    warmup_drafts: int = 32
    halflife_drafts: float = 512.0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.warmup_drafts < 1:
            raise ValueError(f"warmup_drafts must be >= 1, got {self.warmup_drafts}")
        if self.halflife_drafts <= 0:
            raise ValueError(f"halflife_drafts must be > 0, got {self.halflife_drafts}")


class AcceptanceGuard:
    """Running acceptance rate with a collapse verdict."""

    def __init__(self, config: AcceptanceGuardConfig | None = None) -> None:
        self.config = config or AcceptanceGuardConfig()
        self.verified_drafts = 0
        self.rate = 1.0

    def update(self, accepted_drafts: int, verified_drafts: int) -> None:
        """Add one step: ``accepted_drafts`` of ``verified_drafts`` were accepted."""
        if verified_drafts <= 0:
            return
        if not 0 <= accepted_drafts <= verified_drafts:
            raise ValueError(f"accepted {accepted_drafts} of {verified_drafts} verified drafts")
        keep = 0.5 ** (verified_drafts / self.config.halflife_drafts)
        step_rate = accepted_drafts / verified_drafts
        # Until enough drafts are seen, a plain mean: the prior of 1.0 must not linger.
        if self.verified_drafts < self.config.warmup_drafts:
            total = self.verified_drafts + verified_drafts
            self.rate = (self.rate * self.verified_drafts + accepted_drafts) / total
        else:
            self.rate = keep * self.rate + (1.0 - keep) * step_rate
        self.verified_drafts += verified_drafts

    @property
    def collapsed(self) -> bool:
        """Acceptance stayed below the threshold after the warm-up."""
        return self.verified_drafts >= self.config.warmup_drafts and self.rate < self.config.threshold
