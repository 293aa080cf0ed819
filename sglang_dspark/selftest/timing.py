"""Median time of a call: CUDA events on a GPU (L2 flushed before each call), wall clock on CPU."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

# Larger than the L2 cache of every GPU in the peak table (B200: 126 MB), so each
# timed call reads its weights from HBM as a decode step does.
_L2_FLUSH_BYTES = 256 * 2**20


@dataclass(frozen=True, eq=False)
class Timed:
    """The last call's result and the median of the timed calls."""

    output: object
    median_ms: float
    times_ms: tuple[float, ...]


def timed_calls(fn: Callable[[], object], device: str, *, warmup: int, repeats: int) -> Timed:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; return the last output.

    On CUDA each timed call sits between two recorded events, after a write of
    256 MiB that evicts the L2 cache; the events are read after one final
    synchronisation. On CPU the wall clock times each call.
    """
    if device == "cuda":
        return _timed_cuda(fn, warmup, repeats)
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - tic) * 1e3)
    return Timed(out, statistics.median(times), tuple(times))


def _timed_cuda(fn: Callable[[], object], warmup: int, repeats: int) -> Timed:
    flush = torch.empty(_L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    out = None
    for _ in range(warmup):
        out = fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for start, end in zip(starts, ends):
        flush.zero_()
        start.record()
        out = fn()
        end.record()
    torch.cuda.synchronize()
    times = tuple(start.elapsed_time(end) for start, end in zip(starts, ends))
    return Timed(out, statistics.median(times), times)
