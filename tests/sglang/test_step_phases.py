"""StepPhases: consecutive, non-nested ``dspark.*`` profiler ranges and wall-clock marks."""

from __future__ import annotations

import torch
from torch.profiler import profile

from sglang_dspark.sglang.step_phases import StepPhases


def test_phases_are_consecutive_ranges_a_profiler_sees():
    with profile() as prof:
        phases = StepPhases()
        t0 = phases.next("draft")
        torch.randn(64, 64) @ torch.randn(64, 64)
        t1 = phases.next("verify")
        torch.randn(8)
        t2 = phases.end()
    assert t0 <= t1 <= t2
    events = sorted((e for e in prof.events() if e.name.startswith("dspark.")), key=lambda e: e.time_range.start)
    assert [e.name for e in events] == ["dspark.draft", "dspark.verify"]
    draft, verify = events
    assert draft.time_range.end <= verify.time_range.start  # closed before the next opens, not nested
    assert any(e.name == "aten::mm" and draft.time_range.start <= e.time_range.start <= draft.time_range.end
               for e in prof.events())
