"""Consecutive named phases of one worker step: wall-clock marks, and ``torch.profiler`` ranges.

Each :meth:`StepPhases.next` ends the running phase and starts the next; the
ranges are named ``dspark.<phase>`` so that a profile taken through SGLang's
``/start_profile`` (e.g. by ``python -m bench.profile_step``) shows them. With
no profiler running no range is opened (in a serving process the five ranges of
a step took ~0.2 ms, sampled with py-spy: ~0.3 % of a SmolLM2 decode step).
"""

from __future__ import annotations

import time

import torch
from torch.profiler import record_function


class StepPhases:
    """``next(name)`` -> the time it was called; ``end()`` closes the last phase."""

    def __init__(self) -> None:
        self._range = None

    def _close(self) -> None:
        if self._range is not None:
            self._range.__exit__(None, None, None)
            self._range = None

    def next(self, name: str) -> float:
        now = time.perf_counter()
        self._close()
        if torch.autograd._profiler_enabled():
            self._range = record_function(f"dspark.{name}")
            self._range.__enter__()
        return now

    def end(self) -> float:
        now = time.perf_counter()
        self._close()
        return now
