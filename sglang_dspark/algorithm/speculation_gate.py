"""Speculate or decode plainly: a per-batch-size choice from measured step throughput.

The prefix scheduler chooses verify lengths from the drafter's confidences, but
the drafter's forward is paid before any of that, whatever lengths it picks.
When blocks are rarely accepted (a weak drafter, text unlike its training
data) or the batch is large enough that verifying extra tokens is no longer
nearly free, plain decoding commits more tokens per second than speculation.

The gate measures both modes where they run: committed tokens and seconds per
step, as exponential moving averages for each batch-size bucket (1, 2, 3-4,
5-8, ...). It runs the faster mode and probes the other one at intervals that
double while the verdict holds and that grow with the measured gap, so that a
workload whose acceptance changes is noticed while a drafter that never pays
costs a bounded share of the throughput (``probe_budget``).

Committed tokens per speculative step are few and skewed (with a weak drafter
most steps commit one token, a few commit several), so a handful of steps says
little: the median of three steps' mean lies below the mean. Every comparison
therefore weighs the difference of the two rates against their standard errors
(a ratio estimator's, from the same moving averages), a probe lasts until its
verdict is clear or ``max_probe_steps`` have run, and a winner loses between
probes only when it is clearly slower than the other mode's last measurement.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

__all__ = ["Mode", "SpeculationGate", "SpeculationGateConfig", "batch_bucket", "bucket_label"]


class Mode(enum.Enum):
    """How a decode step runs."""

    SPECULATE = "speculate"
    PLAIN = "plain"

    @property
    def other(self) -> "Mode":
        return Mode.PLAIN if self is Mode.SPECULATE else Mode.SPECULATE


@dataclass(frozen=True)
class SpeculationGateConfig:
    """When to measure which mode.

    Attributes:
        warmup_steps: measured speculative steps in a fresh bucket before
            plain decoding is first tried there.
        probe_steps: measured steps a probe of the losing mode lasts at least
            (plus one settling step, see below).
        max_probe_steps: measured steps a probe lasts at most; one whose
            verdict is still unclear then is decided by the estimates alone.
        min_probe_interval: winning-mode steps between probes after the
            verdict changed.
        max_probe_interval: bound on the interval, which doubles after each
            probe that confirms the verdict and is at least what keeps the
            probes' cost within ``probe_budget``.
        probe_budget: share of the winner's throughput the probes may cost:
            a loser measured at ``r`` times the winner's rate is probed every
            ``(probe_steps + 1) * (1 / r - 1) / probe_budget`` steps or less often.
        halflife_steps: steps of one mode over which its old measurements
            lose half their weight.
        margin: the losing mode takes over only when it is faster by this
            fraction (hysteresis against timing noise).
        confidence_z: how many standard errors of the difference a verdict
            needs to count as clear.

    The first step after a change of mode in a bucket is not measured: it
    pays for the change (caches, first use of a shape), not for the mode.
    A bucket seen for the first time takes the verdict and probe interval
    of the nearest bucket already measured when that verdict must carry
    over (plain decoding at a smaller batch, speculation at a larger one).
    """

    warmup_steps: int = 16
    probe_steps: int = 3
    max_probe_steps: int = 64
    min_probe_interval: int = 32
    max_probe_interval: int = 1024
    probe_budget: float = 0.01
    halflife_steps: float = 32.0
    margin: float = 0.03
    confidence_z: float = 1.5

    def __post_init__(self) -> None:
        if self.warmup_steps < 1 or self.probe_steps < 1:
            raise ValueError("warmup_steps and probe_steps must be >= 1")
        if self.max_probe_steps < self.probe_steps:
            raise ValueError(f"max_probe_steps ({self.max_probe_steps}) must be >= probe_steps ({self.probe_steps})")
        if self.confidence_z < 0:
            raise ValueError(f"confidence_z must be >= 0, got {self.confidence_z}")
        if not 1 <= self.min_probe_interval <= self.max_probe_interval:
            raise ValueError(
                f"need 1 <= min_probe_interval ({self.min_probe_interval}) <= "
                f"max_probe_interval ({self.max_probe_interval})"
            )
        if not 0.0 < self.probe_budget < 1.0:
            raise ValueError(f"probe_budget must be in (0, 1), got {self.probe_budget}")
        if self.halflife_steps <= 0:
            raise ValueError(f"halflife_steps must be > 0, got {self.halflife_steps}")
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"margin must be in [0, 1), got {self.margin}")


def batch_bucket(batch_size: int) -> int:
    """Bucket index of a batch size: 0 for 1, 1 for 2, 2 for 3-4, 3 for 5-8, ..."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return math.ceil(math.log2(batch_size))


def bucket_label(bucket: int) -> str:
    """The batch sizes of a bucket index, as ``/server_info`` shows them: ``"1"``, ``"2"``, ``"3-4"``, ``"5-8"``, ..."""
    lo, hi = (1, 1) if bucket == 0 else (2 ** (bucket - 1) + 1, 2**bucket)
    return str(hi) if lo == hi else f"{lo}-{hi}"


@dataclass
class _Throughput:
    """Weighted means of one mode's steps: committed tokens, seconds, and their second moments.

    Step ``i`` of ``n`` weighs ``keep ** (n - i)``, normalised: a plain mean
    while the steps are few, an exponential moving average once they are many.
    """

    weight: float = 0.0  # sum of the weights
    weight_sq: float = 0.0  # sum of their squares: effective steps = weight ** 2 / weight_sq
    sums: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)  # t, s, t*t, s*s, t*s
    steps: int = 0

    def add(self, tokens: float, seconds: float, keep: float) -> None:
        sample = (tokens, seconds, tokens * tokens, seconds * seconds, tokens * seconds)
        self.sums = tuple(keep * a + b for a, b in zip(self.sums, sample))
        self.weight = keep * self.weight + 1.0
        self.weight_sq = keep * keep * self.weight_sq + 1.0
        self.steps += 1

    def _mean(self, i: int) -> float:
        return self.sums[i] / self.weight if self.weight > 0 else 0.0

    @property
    def tokens(self) -> float:
        """Mean committed tokens per step."""
        return self._mean(0)

    @property
    def seconds(self) -> float:
        """Mean seconds per step."""
        return self._mean(1)

    @property
    def rate(self) -> float:
        """Committed tokens per second (0 before any step)."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def rate_se(self, token_variance_floor: float = 0.0) -> float:
        """Standard error of :attr:`rate` (infinite below two steps).

        The ratio estimator's: the spread of ``tokens - rate * seconds`` over
        the effective number of steps, divided by the mean step time, the
        spread being at least ``token_variance_floor`` (see
        :meth:`_Bucket.token_variance_floor`).
        """
        n = self.weight**2 / self.weight_sq if self.weight_sq > 0 else 0.0
        if self.steps < 2 or n <= 1.0 or self.seconds <= 0:
            return math.inf
        r = self.rate
        spread = self._mean(2) - 2.0 * r * self._mean(4) + r * r * self._mean(3)
        variance = max(spread * n / (n - 1.0), token_variance_floor)  # unbiased, as for n equal weights
        return math.sqrt(variance / n) / self.seconds


@dataclass
class _Bucket:
    measured: dict[Mode, _Throughput] = field(default_factory=lambda: {m: _Throughput() for m in Mode})
    winner: Mode = Mode.SPECULATE
    speculative_steps: int = 0  # measured, never reset: the warm-up counter
    speculative_request_steps: int = 0  # never reset, like the two below
    speculative_tokens: float = 0.0
    inherited: bool = False
    probe_interval: int = 0
    steps_since_probe: int = 0
    probe_left: int = 0
    probe_measured: int = 0
    last_mode: Mode | None = None

    def token_variance_floor(self, mode: Mode) -> float:
        """The least variance of committed tokens per step that ``mode``'s standard error assumes.

        A few steps' spread underestimates a skewed count's: three speculative
        steps that each commit one token show none. A geometric count of mean
        ``m`` per request (``m`` from every speculative step this bucket has
        measured) has variance ``m * (m - 1)``; requests add up. Plain steps
        always commit one token per request: 0.
        """
        if mode is Mode.PLAIN or self.speculative_steps == 0:
            return 0.0
        m = self.speculative_tokens / self.speculative_request_steps
        return self.speculative_request_steps / self.speculative_steps * m * max(0.0, m - 1.0)


class SpeculationGate:
    """Chooses :class:`Mode` per decode step from measured throughput.

    The caller asks :meth:`choose` before the step and reports it with
    :meth:`record` afterwards (only when the step ran in the chosen mode:
    a step whose drafter failed is neither mode's measurement)::

        mode = gate.choose(batch_size)
        ...                                   # run the step
        gate.record(batch_size, mode, committed_tokens, seconds)
    """

    def __init__(self, config: SpeculationGateConfig | None = None) -> None:
        self.config = config or SpeculationGateConfig()
        self._keep = 0.5 ** (1.0 / self.config.halflife_steps)
        self._buckets: dict[int, _Bucket] = {}
        self.switches = 0

    def _bucket(self, batch_size: int) -> _Bucket:
        key = batch_bucket(batch_size)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(probe_interval=self.config.min_probe_interval)
            if self._buckets:
                near_key = min(self._buckets, key=lambda k: (abs(k - key), k))
                near = self._buckets[near_key]
                # Verifying costs more as the batch grows, so speculation only gets relatively
                # worse with batch size: a neighbour's verdict carries over when it is plain
                # decoding at a smaller batch or speculation at a larger one; otherwise the
                # bucket is measured from scratch.
                if (near.winner is Mode.PLAIN) == (near_key < key):
                    bucket.winner, bucket.probe_interval = near.winner, near.probe_interval
                    bucket.inherited = True
            self._buckets[key] = bucket
        return bucket

    def choose(self, batch_size: int) -> Mode:
        """The mode the next step of this batch size should run in."""
        b = self._bucket(batch_size)
        loser = b.winner.other
        if b.probe_left > 0:
            return loser
        if not b.inherited and b.winner is Mode.SPECULATE and b.speculative_steps < self.config.warmup_steps:
            return Mode.SPECULATE
        if (not b.inherited and b.measured[loser].steps == 0) or b.steps_since_probe >= b.probe_interval:
            # The loser's old figures are stale by now: the probe measures it afresh.
            b.measured[loser] = _Throughput()
            b.probe_left, b.probe_measured = self.config.probe_steps, 0
            return loser
        return b.winner

    def record(self, batch_size: int, mode: Mode, committed_tokens: float, seconds: float) -> None:
        """Report a step that ran in ``mode``: tokens it committed and seconds it took."""
        if committed_tokens < 0 or seconds < 0:
            raise ValueError(f"committed_tokens ({committed_tokens}) and seconds ({seconds}) must be >= 0")
        b = self._bucket(batch_size)
        settling, b.last_mode = mode is not b.last_mode, mode
        if mode is b.winner:
            b.steps_since_probe += 1
        if settling:
            return
        b.measured[mode].add(committed_tokens, seconds, self._keep)
        if mode is Mode.SPECULATE:
            b.speculative_steps += 1
            b.speculative_request_steps += batch_size
            b.speculative_tokens += committed_tokens
        if mode is b.winner:
            # A winner clearly slower than the other's last measurement loses at once.
            if b.measured[mode.other].steps and self._lead(b, mode.other) > 0:
                self._switch(b, mode.other)
            return
        if b.probe_left > 0:
            b.probe_measured += 1
            b.probe_left -= 1
            if b.probe_left == 0:
                lead = self._lead(b, mode)
                if lead == 0 and b.probe_measured < self.config.max_probe_steps:
                    b.probe_left = 1  # not clear yet: measure on
                else:
                    self._end_probe(b, mode, lead)

    def _end_probe(self, b: _Bucket, challenger: Mode, lead: int) -> None:
        """Close a probe given ``challenger``'s lead at ``confidence_z`` (0: not clear, and
        then the point estimates decide)."""
        clear = lead != 0
        if not clear:
            lead = self._lead(b, challenger, z=0.0)
        if lead > 0:
            self._switch(b, challenger)
            return
        winner_rate = b.measured[b.winner].rate
        ratio = b.measured[challenger].rate / winner_rate if winner_rate > 0 else 1.0
        cfg = self.config
        affordable = (b.probe_measured + 1) * max(0.0, 1.0 / max(ratio, 1e-6) - 1.0) / cfg.probe_budget
        # A clear verdict spaces the probes out; an unclear one keeps their spacing (probes at most a third of steps).
        floor = 2 * b.probe_interval if clear else max(b.probe_interval, 2 * b.probe_measured)
        b.probe_interval = int(min(max(floor, affordable), cfg.max_probe_interval))
        b.steps_since_probe = 0

    def _lead(self, b: _Bucket, challenger: Mode, z: float | None = None) -> int:
        """+1 when ``challenger`` is clearly faster than the other mode by the margin, -1 when
        it is clearly not, 0 when the difference is within ``z`` standard errors."""
        z = self.config.confidence_z if z is None else z
        c, w = b.measured[challenger], b.measured[challenger.other]
        bar = 1.0 + self.config.margin
        diff = c.rate - bar * w.rate
        if z > 0:
            se = math.hypot(
                c.rate_se(b.token_variance_floor(challenger)),
                bar * w.rate_se(b.token_variance_floor(challenger.other)),
            )
            needed = z * se
        else:
            needed = 0.0  # the estimates alone
        if diff > needed:
            return 1
        if diff < -needed:
            return -1
        return 0

    def _switch(self, b: _Bucket, winner: Mode) -> None:
        b.winner = winner
        b.probe_interval = self.config.min_probe_interval
        b.steps_since_probe = 0
        b.probe_left = 0
        self.switches += 1

    def summary(self) -> dict[str, dict[str, float | str | int]]:
        """Per bucket (labelled by its batch sizes): winner, measured tokens/s and steps per mode.

        ``{mode}_steps`` count the steps behind the current estimate (a probe starts the
        losing mode's afresh); ``speculate_steps_total`` counts every measured speculative step.
        """
        out: dict[str, dict[str, float | str | int]] = {}
        for key in sorted(self._buckets):
            b = self._buckets[key]
            out[bucket_label(key)] = {
                "winner": b.winner.value,
                **{f"{m.value}_tokens_per_second": b.measured[m].rate for m in Mode},
                **{f"{m.value}_tokens_per_second_se": _finite(b.measured[m].rate_se(b.token_variance_floor(m))) for m in Mode},
                **{f"{m.value}_steps": b.measured[m].steps for m in Mode},  # since the mode's last probe
                "speculate_steps_total": b.speculative_steps,  # never reset
            }
        return out


def _finite(x: float) -> float | None:
    """JSON has no infinity: ``None`` for a standard error not yet measurable."""
    return x if math.isfinite(x) else None
