"""Acceptance figures from a histogram of tokens committed per verify step.

Both modes reduce to one histogram ``h[n]`` = verify steps that committed
``n`` tokens (accepted drafts plus the bonus/correction token), so the
figures have one definition:

* mean accepted length ``= sum(n * h[n]) / sum(h)``;
* ``P(position j accepted) = sum(h[j+1:]) / sum(h)`` for draft positions
  ``j = 1 .. K`` (a draft counts only when every earlier one was accepted),
  hence ``mean = 1 + sum_j P(position j accepted)``;
* the conditional rate ``P(j | 1..j-1 accepted)`` is the ratio of
  consecutive unconditional rates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

__all__ = ["AcceptanceSummary", "histogram_from_counts"]


def histogram_from_counts(num_steps: int, accepted: Sequence[int]) -> list[int]:
    """Committed-tokens histogram from per-position counts.

    Args:
        num_steps: verify steps.
        accepted: ``accepted[k]`` = steps whose draft ``k`` (0-based) was
            accepted together with all earlier ones (non-increasing).

    Returns:
        ``h`` of length ``K + 2`` (``h[0]`` is 0: every step commits a token).
    """
    counts = [int(num_steps), *(int(a) for a in accepted), 0]
    if any(b > a for a, b in zip(counts, counts[1:])) or counts[-2] < 0:
        raise ValueError(f"accepted counts must be non-increasing in [0, {num_steps}]: {accepted}")
    return [0] + [counts[m] - counts[m + 1] for m in range(len(counts) - 1)]


@dataclass(frozen=True)
class AcceptanceSummary:
    """Acceptance over one prompt set.

    Attributes:
        mode: ``"offline"`` or ``"server"``.
        histogram: ``histogram[n]`` = verify steps that committed ``n`` tokens.
        num_prompts: prompts decoded.
        num_tokens: tokens generated.
        seconds: wall time of the decoding.
        settings: what was measured how (paths, temperature, budgets).
        extra: mode-specific figures (per-prompt rows, meta_info averages).
        fallback_mean: the mean accepted length when there is no histogram
            (a server without the DSPARK worker's histogram).
    """

    mode: str
    histogram: tuple[int, ...]
    num_prompts: int
    num_tokens: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    fallback_mean: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("offline", "server"):
            raise ValueError(f"mode must be 'offline' or 'server', got {self.mode!r}.")
        if any(int(c) < 0 for c in self.histogram):
            raise ValueError(f"histogram counts must be >= 0: {list(self.histogram)}")
        if self.histogram and self.histogram[0] != 0:
            raise ValueError("a verify step commits at least one token (histogram[0] must be 0).")
        if self.num_prompts < 0 or self.num_tokens < 0 or self.seconds < 0:
            raise ValueError("counts and seconds must be >= 0.")

    @property
    def num_steps(self) -> int:
        """Verify steps."""
        return int(sum(self.histogram))

    @property
    def block_size(self) -> int:
        """Draft positions covered by the histogram (``K``)."""
        return max(len(self.histogram) - 2, 0)

    @property
    def mean_accept_length(self) -> float | None:
        """Tokens committed per verify step, bonus included (``None`` without steps)."""
        if not self.num_steps:
            return self.fallback_mean
        return sum(n * c for n, c in enumerate(self.histogram)) / self.num_steps

    @property
    def per_position(self) -> list[float]:
        """``P(draft position j accepted)`` for ``j = 1 .. K``."""
        total = self.num_steps
        if not total:
            return []
        return [sum(self.histogram[j + 1:]) / total for j in range(1, self.block_size + 1)]

    @property
    def per_position_conditional(self) -> list[float | None]:
        """``P(position j accepted | positions 1..j-1 accepted)`` (``None`` where never reached)."""
        out: list[float | None] = []
        previous = 1.0
        for p in self.per_position:
            out.append(p / previous if previous > 0 else None)
            previous = p
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the derived figures."""
        return {
            "mode": self.mode,
            "mean_accept_length": self.mean_accept_length,
            "per_position_acceptance": self.per_position,
            "per_position_conditional": self.per_position_conditional,
            "accept_histogram": list(self.histogram),
            "num_steps": self.num_steps,
            "num_prompts": self.num_prompts,
            "num_tokens": self.num_tokens,
            "seconds": round(self.seconds, 3),
            "settings": self.settings,
            **self.extra,
        }
