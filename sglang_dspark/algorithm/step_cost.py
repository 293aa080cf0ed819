"""The verify step's cost curve, measured online from the worker's own steps.

The prefix scheduler needs ``SPS(n)``: how fast the target runs a step that
verifies ``n`` tokens. Without a profiled table it had a generic guess, which
on the 2-core development box said that verifying 8 tokens costs 10 % more
than one; a step there took 26 % more, and a curve from the box's timings made
forced speculation verify fewer tokens at the same committed tokens per step,
6 % faster (bench/RESULTS.md, eleventh session).

:class:`OnlineStepCost` fits ``seconds = a + b * n`` per batch-size bucket
(1, 2, 3-4, 5-8, ... requests) by exponentially weighted least squares over
the steps the worker runs anyway: plain steps verify ``n = B`` tokens,
speculative ones more, so the spread that a slope needs comes for free. Until
a bucket has enough steps with enough spread, the prior curve (the generic
table) serves. Curves are refitted every ``refit_steps`` steps and rounded, so
that the scheduler's per-shape cache keeps hitting between refits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sglang_dspark.algorithm.speculation_gate import batch_bucket, bucket_label
from sglang_dspark.algorithm.sps_table import SpsTable

__all__ = ["OnlineStepCost", "StepCostConfig"]


@dataclass(frozen=True)
class StepCostConfig:
    """How the cost curve is fitted.

    Attributes:
        halflife_steps: steps of a bucket over which old samples lose half
            their weight.
        min_steps: steps a bucket needs before its fit replaces the prior.
        min_spread_tokens: weighted standard deviation of the verified token
            counts below which the slope is not identifiable (prior kept).
        refit_steps: steps of a bucket between two refits of its curve.
        max_verify_per_request: verified tokens per request the curve must
            cover (anchor plus block).
    """

    halflife_steps: float = 128.0
    min_steps: int = 32
    min_spread_tokens: float = 0.5
    refit_steps: int = 16
    max_verify_per_request: int = 8

    def __post_init__(self) -> None:
        if self.halflife_steps <= 0:
            raise ValueError(f"halflife_steps must be > 0, got {self.halflife_steps}")
        if self.min_steps < 2 or self.refit_steps < 1 or self.max_verify_per_request < 1:
            raise ValueError("need min_steps >= 2, refit_steps >= 1 and max_verify_per_request >= 1")
        if self.min_spread_tokens <= 0:
            raise ValueError(f"min_spread_tokens must be > 0, got {self.min_spread_tokens}")


@dataclass
class _Fit:
    """Exponentially weighted sums for the least-squares line of seconds on tokens."""

    w: float = 0.0
    n: float = 0.0
    nn: float = 0.0
    t: float = 0.0
    nt: float = 0.0
    steps: int = 0
    curve: SpsTable | None = field(default=None, repr=False)

    def add(self, tokens: float, seconds: float, keep: float) -> None:
        self.w = keep * self.w + 1.0
        self.n = keep * self.n + tokens
        self.nn = keep * self.nn + tokens * tokens
        self.t = keep * self.t + seconds
        self.nt = keep * self.nt + tokens * seconds
        self.steps += 1

    def line(self, min_spread: float) -> tuple[float, float] | None:
        """``(a, b)`` of ``seconds = a + b * n``, or ``None`` when the data cannot tell the slope."""
        mean_n, mean_t = self.n / self.w, self.t / self.w
        var_n = self.nn / self.w - mean_n * mean_n
        if var_n < min_spread * min_spread:
            return None
        slope = max((self.nt / self.w - mean_n * mean_t) / var_n, 0.0)
        return mean_t - slope * mean_n, slope


class OnlineStepCost:
    """Per-bucket ``SPS(n)`` curves fitted from measured verify steps, the prior until then."""

    def __init__(self, prior: SpsTable, config: StepCostConfig | None = None) -> None:
        self.prior = prior
        self.config = config or StepCostConfig()
        self._keep = 0.5 ** (1.0 / self.config.halflife_steps)
        self._fits: dict[int, _Fit] = {}

    def record(self, batch_size: int, verified_tokens: int, seconds: float) -> None:
        """One step of ``batch_size`` requests verified ``verified_tokens`` tokens in ``seconds``."""
        if verified_tokens < batch_size or not (math.isfinite(seconds) and seconds > 0):
            return
        fit = self._fits.setdefault(batch_bucket(batch_size), _Fit())
        fit.add(float(verified_tokens), seconds, self._keep)
        if fit.steps >= self.config.min_steps and fit.steps % self.config.refit_steps == 0:
            fit.curve = self._curve(fit, batch_size)

    def curve(self, batch_size: int) -> SpsTable:
        """The curve the prefix scheduler uses for a batch of ``batch_size`` requests."""
        fit = self._fits.get(batch_bucket(batch_size))
        return self.prior if fit is None or fit.curve is None else fit.curve

    def summary(self) -> dict[str, dict[str, float] | str]:
        """Per bucket (labelled as the gate's): the fitted ms per step and per extra token, or ``"prior"``."""
        out: dict[str, dict[str, float] | str] = {}
        for bucket, fit in sorted(self._fits.items()):
            line = fit.line(self.config.min_spread_tokens) if fit.curve is not None else None
            out[bucket_label(bucket)] = "prior" if line is None else {"base_ms": 1000 * line[0], "per_token_ms": 1000 * line[1]}
        return out

    def _curve(self, fit: _Fit, batch_size: int) -> SpsTable | None:
        line = fit.line(self.config.min_spread_tokens)
        if line is None:
            return None
        base, slope = line
        # The bucket's widest batch verifying every drafted token: the range the scheduler evaluates.
        widest = 2 ** batch_bucket(batch_size) * self.config.max_verify_per_request
        lo, hi = 1, max(widest, 2)
        t_lo, t_hi = base + slope * lo, base + slope * hi
        if t_lo <= 0:
            return None  # an intercept the data does not support: keep the prior
        # Rounded to 0.1 ms so that consecutive refits usually give an equal table (a cache hit).
        t_lo, t_hi = round(t_lo, 4), max(round(t_hi, 4), round(t_lo, 4))
        return SpsTable(token_counts=(lo, hi), steps_per_second=(1.0 / t_lo, 1.0 / t_hi),
                        device=self.prior.device, notes="fitted online from verify steps")
