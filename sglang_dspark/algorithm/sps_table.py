"""Steps-per-second (SPS) tables: how fast the target runs a verify step.

``SPS(n)`` is the number of target forward steps per second when the whole
batch verifies ``n`` tokens in total. The prefix scheduler multiplies it with
the expected number of committed tokens to get the expected throughput, so
only the shape of the curve matters for scheduling, not its scale.

JSON format (``sglang-dspark-sps/1``)::

    {
      "format": "sglang-dspark-sps/1",
      "device": "NVIDIA H100 80GB HBM3",
      "measured_at": "2026-11-20",
      "notes": "optional free text",
      "points": [
        {"tokens": 1, "steps_per_second": 52.1},
        {"tokens": 64, "steps_per_second": 50.3},
        ...
      ]
    }

``points`` must be sorted by strictly increasing ``tokens``; every value must
be positive. ``notes`` may be omitted; ``measured_at`` is an ISO 8601 date or
date-time, or ``""`` for curves that were not measured.
"""

from __future__ import annotations

import bisect
import json
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, overload

import torch
from tqdm.auto import tqdm

__all__ = [
    "SPS_FORMAT",
    "SpsTable",
    "SpsTableFormatError",
    "default_sps_table",
    "profile_sps",
]

SPS_FORMAT = "sglang-dspark-sps/1"


class SpsTableFormatError(ValueError):
    """A JSON file is not a valid ``sglang-dspark-sps/1`` table."""


@dataclass(frozen=True)
class SpsTable:
    """Measured steps per second as a function of verified tokens per step.

    Calling the table interpolates step *time* (``1 / SPS``) piecewise
    linearly between points, because time is what adds up and is close to
    linear in the token count. Below the first point the step time is flat;
    beyond the last point it is extrapolated along the last segment (never
    decreasing), which errs on the slow, conservative side.

    Attributes:
        token_counts: strictly increasing positive token counts.
        steps_per_second: positive steps per second, one per token count.
        device: the device the table was measured on, in words.
        measured_at: ISO 8601 date (or date-time) of the measurement, ``""``
            for curves that were not measured.
        notes: free text.
    """

    token_counts: tuple[int, ...]
    steps_per_second: tuple[float, ...]
    device: str = ""
    measured_at: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        counts = tuple(self.token_counts)
        sps = tuple(float(s) for s in self.steps_per_second)
        if not counts:
            raise ValueError("SpsTable needs at least one point")
        if len(counts) != len(sps):
            raise ValueError(
                f"token_counts and steps_per_second differ in length ({len(counts)} vs {len(sps)})"
            )
        for n in counts:
            if isinstance(n, bool) or int(n) != n or n <= 0:
                raise ValueError(f"token counts must be positive integers, got {n!r}")
        counts = tuple(int(n) for n in counts)
        if any(b <= a for a, b in zip(counts, counts[1:])):
            raise ValueError(f"token counts must be strictly increasing, got {counts}")
        if not all(math.isfinite(s) and s > 0 for s in sps):
            raise ValueError(f"steps per second must be positive and finite, got {sps}")
        if self.measured_at:
            try:
                datetime.fromisoformat(self.measured_at)
            except ValueError as exc:
                raise ValueError(f"measured_at must be an ISO 8601 date, got {self.measured_at!r}") from exc
        object.__setattr__(self, "token_counts", counts)
        object.__setattr__(self, "steps_per_second", sps)

    @overload
    def __call__(self, n: float) -> float: ...
    @overload
    def __call__(self, n: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, n: float | torch.Tensor) -> float | torch.Tensor:
        """Steps per second when ``n`` tokens are verified in one step.

        A tensor argument is evaluated element-wise (float64 result on the
        same device), which is how the prefix scheduler evaluates every
        candidate total at once.
        """
        return 1.0 / self.step_time(n)

    @overload
    def step_time(self, n: float) -> float: ...
    @overload
    def step_time(self, n: torch.Tensor) -> torch.Tensor: ...

    def step_time(self, n: float | torch.Tensor) -> float | torch.Tensor:
        """Seconds per step when ``n`` tokens are verified (``1 / SPS(n)``)."""
        xs = self.token_counts
        ts = [1.0 / s for s in self.steps_per_second]
        if len(xs) == 1:
            # One point: assume time proportional to tokens beyond it.
            last_slope = ts[0] / xs[0]
        else:
            last_slope = max((ts[-1] - ts[-2]) / (xs[-1] - xs[-2]), 0.0)
        if isinstance(n, torch.Tensor):
            return self._step_time_tensor(n, xs, ts, last_slope)
        if n <= xs[0]:
            return ts[0]
        if n >= xs[-1]:
            return ts[-1] + last_slope * (n - xs[-1])
        i = bisect.bisect_left(xs, n)
        return ts[i - 1] + (ts[i] - ts[i - 1]) * (n - xs[i - 1]) / (xs[i] - xs[i - 1])

    @staticmethod
    def _step_time_tensor(
        n: torch.Tensor, xs: tuple[int, ...], ts: list[float], last_slope: float
    ) -> torch.Tensor:
        n = n.to(torch.float64)
        x = torch.tensor(xs, dtype=torch.float64, device=n.device)
        t = torch.tensor(ts, dtype=torch.float64, device=n.device)
        if len(xs) > 1:
            i = torch.searchsorted(x, n).clamp_(1, len(xs) - 1)
            x0, x1, t0, t1 = x[i - 1], x[i], t[i - 1], t[i]
            inside = t0 + (t1 - t0) * (n - x0) / (x1 - x0)
        else:
            inside = t[0].expand_as(n)
        beyond = t[-1] + last_slope * (n - x[-1])
        return torch.where(n <= x[0], t[0], torch.where(n >= x[-1], beyond, inside))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready ``sglang-dspark-sps/1`` representation."""
        return {
            "format": SPS_FORMAT,
            "device": self.device,
            "measured_at": self.measured_at,
            "notes": self.notes,
            "points": [
                {"tokens": n, "steps_per_second": s}
                for n, s in zip(self.token_counts, self.steps_per_second)
            ],
        }

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "SPS table") -> SpsTable:
        """Parse the ``sglang-dspark-sps/1`` representation.

        Raises:
            SpsTableFormatError: naming ``source`` and what is wrong.
        """

        def fail(msg: str) -> SpsTableFormatError:
            return SpsTableFormatError(f"{source}: {msg}")

        if not isinstance(data, dict):
            raise fail(f"expected a JSON object, got {type(data).__name__}")
        if data.get("format") != SPS_FORMAT:
            raise fail(f"expected \"format\": \"{SPS_FORMAT}\", got {data.get('format')!r}")
        points = data.get("points")
        if not isinstance(points, list) or not points:
            raise fail("\"points\" must be a non-empty list")
        counts, sps = [], []
        for i, point in enumerate(points):
            if not isinstance(point, dict) or "tokens" not in point or "steps_per_second" not in point:
                raise fail(f"points[{i}] must be an object with \"tokens\" and \"steps_per_second\"")
            n, s = point["tokens"], point["steps_per_second"]
            if isinstance(n, bool) or not isinstance(n, int):
                raise fail(f"points[{i}].tokens must be an integer, got {n!r}")
            if isinstance(s, bool) or not isinstance(s, (int, float)):
                raise fail(f"points[{i}].steps_per_second must be a number, got {s!r}")
            counts.append(n)
            sps.append(float(s))
        for key in ("device", "measured_at", "notes"):
            if not isinstance(data.get(key, ""), str):
                raise fail(f"\"{key}\" must be a string")
        try:
            return cls(
                token_counts=tuple(counts),
                steps_per_second=tuple(sps),
                device=data.get("device", ""),
                measured_at=data.get("measured_at", ""),
                notes=data.get("notes", ""),
            )
        except ValueError as exc:
            raise fail(str(exc)) from exc

    def to_json(self, path: str | Path) -> None:
        """Write the table to ``path`` in the ``sglang-dspark-sps/1`` format."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> SpsTable:
        """Read a table written by :meth:`to_json` (or by hand).

        Raises:
            SpsTableFormatError: the file is not valid JSON or not a valid table.
            OSError: the file cannot be read.
        """
        text = Path(path).read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpsTableFormatError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(data, source=str(path))


# Batch-wide verified tokens at which a verify step stops being memory bound,
# by device family; longer names first, since "h20" is a prefix of "h200".
_KNEE_TOKENS = {
    "b200": 512,
    "h200": 256,
    "h100": 256,
    "h800": 256,
    "a100": 128,
    "h20": 64,
    "l40": 64,
    "cpu": 8,
}
_GENERIC_KNEE = 128


def default_sps_table(device_kind: str = "", *, knee_tokens: int | None = None) -> SpsTable:
    """A generic, unmeasured SPS curve for when no profiled table is given.

    Step time is flat-ish up to a knee (the step is memory bound: reading the
    weights dominates, so extra tokens are almost free; 10 % growth up to the
    knee) and then grows linearly with the token count (compute bound)::

        time(n) = t0 * (1 + 0.1 * min(n, knee) / knee + max(0, n - knee) / knee)

    The knee depends on the device's compute-to-bandwidth ratio and on the
    model (MoE models move it up); ``knee_tokens`` overrides the per-device
    guess. ``t0`` is a nominal 20 ms: only the shape matters to the scheduler.
    Profile the real curve with :func:`profile_sps` for production use.

    Args:
        device_kind: a device name such as ``"NVIDIA H100 80GB HBM3"``,
            ``"h20"`` or ``"cpu"``, matched case-insensitively by family.
        knee_tokens: the knee, overriding the per-device guess.
    """
    kind = device_kind.lower()
    if knee_tokens is None:
        knee_tokens = next((k for name, k in _KNEE_TOKENS.items() if name in kind), _GENERIC_KNEE)
    if knee_tokens < 1:
        raise ValueError(f"knee_tokens must be positive, got {knee_tokens}")
    t0 = 0.02
    counts = sorted({1, *(max(1, round(knee_tokens * f)) for f in (0.25, 0.5, 1, 2, 4, 8))})
    times = [t0 * (1 + 0.1 * min(n, knee_tokens) / knee_tokens + max(0, n - knee_tokens) / knee_tokens) for n in counts]
    return SpsTable(
        token_counts=tuple(counts),
        steps_per_second=tuple(1.0 / t for t in times),
        device=device_kind,
        measured_at="",
        notes=f"default curve, not measured: memory-bound knee at {knee_tokens} tokens",
    )


def profile_sps(
    forward_fn: Callable[[int], object],
    token_counts: Iterable[int],
    *,
    warmup: int = 2,
    repeats: int = 5,
    synchronize: Callable[[], None] | None = None,
    device: str = "",
    progress: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> SpsTable:
    """Measure an SPS table by timing ``forward_fn``.

    Args:
        forward_fn: ``forward_fn(n)`` runs one target step verifying ``n``
            tokens in total.
        token_counts: the token counts to measure (deduplicated, sorted).
        warmup: untimed calls per token count before timing.
        repeats: timed calls per token count; the median is kept.
        synchronize: waits for queued device work (e.g.
            ``torch.cuda.synchronize``); called before and after each timed call.
        device: recorded in the table.
        progress: show a tqdm progress bar.
        clock: the timer, in seconds.

    Returns:
        A table whose step times are made non-decreasing in the token count
        (running maximum): verifying more tokens never takes less time, and
        measurement noise would otherwise make the scheduler chase jitter.
    """
    counts = sorted(set(token_counts))
    if not counts:
        raise ValueError("token_counts is empty")
    if counts[0] < 1:
        raise ValueError(f"token counts must be positive, got {counts[0]}")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got {warmup} and {repeats}")
    sync = synchronize or (lambda: None)

    medians: list[float] = []
    for n in tqdm(counts, desc="profiling SPS", unit="point", disable=not progress):
        for _ in range(warmup):
            forward_fn(n)
        sync()
        samples = []
        for _ in range(repeats):
            sync()
            start = clock()
            forward_fn(n)
            sync()
            samples.append(clock() - start)
        medians.append(max(statistics.median(samples), 1e-9))

    times = []
    for t in medians:
        times.append(max(t, times[-1]) if times else t)
    return SpsTable(
        token_counts=tuple(counts),
        steps_per_second=tuple(1.0 / t for t in times),
        device=device,
        measured_at=datetime.now(timezone.utc).date().isoformat(),
        notes=f"median of {repeats} timed steps after {warmup} warm-up steps per point",
    )
