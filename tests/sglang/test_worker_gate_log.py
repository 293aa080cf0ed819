"""The worker logs each change of the speculation gate's verdict, with the figures behind it."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from sglang_dspark.algorithm.speculation_gate import Mode, SpeculationGate, SpeculationGateConfig
from sglang_dspark.sglang.worker import DSparkWorker


def test_a_verdict_change_is_logged_with_both_rates(caplog) -> None:
    gate = SpeculationGate(SpeculationGateConfig(warmup_steps=4, probe_steps=3))
    worker = SimpleNamespace(gate=gate)
    caplog.set_level(logging.INFO, logger="sglang_dspark.sglang.worker")
    while gate.switches == 0:
        mode = gate.choose(3)
        gate.record(3, mode, 3.0, 0.3 if mode is Mode.SPECULATE else 0.1)  # plain is 3x faster
    DSparkWorker._log_gate_switch(worker, 3)
    (record,) = [r for r in caplog.records if "speculation gate" in r.getMessage()]
    message = record.getMessage()
    assert "batch size 3-4 now decodes plainly" in message
    assert "speculating 10.0" in message and "plain 30.0" in message
