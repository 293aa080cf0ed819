"""The skinny CPU GEMM, its choice and SGLang's two hooks into it (no server needed)."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from sglang_dspark.skinny_gemm import SKINNY_MAX_ROWS, SkinnyGemmMeasurement, measure_skinny_gemm, skinny_linear
from sglang_dspark.sglang import cpu_linear
from sglang_dspark.sglang.serving_choice import (
    CPU_LINEAR_ENV,
    CPU_LINEAR_MIN_SPEEDUP,
    OURS,
    SGLANG,
    ServingChoiceError,
    choose_cpu_linear,
    requested,
)


@pytest.mark.parametrize("shape", [(1, 64), (3, 64), (8, 64), (2, 5, 64), (1, 1, 64)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_skinny_linear_equals_f_linear(shape, with_bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    w = torch.randn(96, 64, generator=g)
    b = torch.randn(96, generator=g) if with_bias else None
    got = skinny_linear(x, w, b)
    assert got.shape == F.linear(x, w, b).shape and got.is_contiguous()
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_skinny_linear_bf16():
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(3, 64, generator=g).bfloat16(), torch.randn(40, 64, generator=g).bfloat16()
    got = skinny_linear(x, w)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), F.linear(x.float(), w.float()), rtol=2e-2, atol=5e-2)


def test_measurement_reports_both_forms():
    m = measure_skinny_gemm(torch.randn(128, 64), rows=(1, 4), min_rounds=2, max_seconds=1.0,
                            sweep_bytes=128 * 64 * 4 * 3)
    assert m.rows == (1, 4) and m.copies == 3 and len(m.torch_ms) == len(m.skinny_ms) == 2
    assert all(t > 0 for t in m.torch_ms + m.skinny_ms)
    assert m.speedup > 0 and m.max_rows in (0, 1, 4)
    assert "3 copies of a [128x64] float32" in m.summary()
    assert measure_skinny_gemm(torch.randn(8, 8), rows=(1,), max_seconds=0.0, sweep_bytes=1).copies == 1
    with pytest.raises(ValueError, match="2-D CPU weight"):
        measure_skinny_gemm(torch.randn(4))
    with pytest.raises(ValueError, match="one length"):
        SkinnyGemmMeasurement((1, 1), 1, "float32", (1, 2), (1.0,), (1.0, 2.0))


def test_rounds_continue_until_each_minimum_is_confirmed(monkeypatch):
    from sglang_dspark import skinny_gemm

    clock = iter([0.0, 5.0, 0.0, 1.0, 0.0, 50.0, 0.0, 1.1, 0.0, 2.0, 0.0, 1.05])
    monkeypatch.setattr(skinny_gemm.time, "perf_counter", lambda: next(clock) / 1000)
    # Two callables; round 1: 5, 1; round 2: 50, 1.1; round 3: 2, 1.05 -> first's best two 2, 5: unstable.
    minima, stable = skinny_gemm._stable_minima([lambda: None, lambda: None], min_rounds=3, max_seconds=0.0,
                                                tolerance=1.15)
    assert minima == pytest.approx([2.0, 1.0]) and not stable
    clock2 = iter([0.0, 2.0, 0.0, 1.0, 0.0, 2.1, 0.0, 1.1])
    monkeypatch.setattr(skinny_gemm.time, "perf_counter", lambda: next(clock2) / 1000)
    minima, stable = skinny_gemm._stable_minima([lambda: None, lambda: None], min_rounds=2, max_seconds=60.0,
                                                tolerance=1.15)
    assert minima == pytest.approx([2.0, 1.0]) and stable


def _timed(monkeypatch, durations_ms):
    """Make _stable_minima see ``durations_ms`` (one per timed call, in order)."""
    from sglang_dspark import skinny_gemm

    clock = iter([t for d in durations_ms for t in (0.0, d)])
    monkeypatch.setattr(skinny_gemm.time, "perf_counter", lambda: next(clock) / 1000)


def test_a_lone_fast_outlier_settles_instead_of_running_to_the_limit(monkeypatch):
    from sglang_dspark import skinny_gemm

    monkeypatch.setattr(skinny_gemm, "_SETTLE_SECONDS", 0.0)
    # One callable: a fast outlier in round 1 that no later time matches within 15 %.
    _timed(monkeypatch, [1.0] + [1.5] * 100)
    minima, stable = skinny_gemm._stable_minima([lambda: None], min_rounds=3, max_seconds=1e9, tolerance=1.15)
    assert minima == [1.0] and stable  # settled at round 20, well before the 100 times ran out


def test_load_that_passes_does_not_set_the_minimum(monkeypatch):
    from sglang_dspark import skinny_gemm

    monkeypatch.setattr(skinny_gemm, "_SETTLE_SECONDS", 0.0)
    # Load for 15 rounds (times 20 % apart, never two within 15 %), then it passes.
    _timed(monkeypatch, [300.0 * 1.2**i for i in range(15)] + [10.0] * 100)
    minima, stable = skinny_gemm._stable_minima([lambda: None], min_rounds=3, max_seconds=1e9, tolerance=1.15)
    assert minima == [10.0] and stable


def test_choice_follows_the_measurement_and_requests():
    assert choose_cpu_linear(measured_speedup=2.5, detail="d", asked=None).impl == OURS
    assert choose_cpu_linear(measured_speedup=CPU_LINEAR_MIN_SPEEDUP, detail="d", asked=None).impl == OURS
    slower = choose_cpu_linear(measured_speedup=1.1, detail="1.10x", asked=None)
    assert slower.impl == SGLANG and CPU_LINEAR_ENV in slower.reason
    assert choose_cpu_linear(measured_speedup=None, detail="", asked=OURS).impl == OURS
    assert choose_cpu_linear(measured_speedup=None, detail="", asked=SGLANG).impl == SGLANG
    with pytest.raises(ValueError, match="needs a measurement"):
        choose_cpu_linear(measured_speedup=None, detail="", asked=None)
    with pytest.raises(ServingChoiceError):
        requested(CPU_LINEAR_ENV, {CPU_LINEAR_ENV: "fastest"})


@pytest.fixture
def decided(monkeypatch):
    """Start each test undecided; return a setter for the environment's request."""
    monkeypatch.setattr(cpu_linear, "_decided", {})
    return lambda value: monkeypatch.setenv(CPU_LINEAR_ENV, value)


def _orig(self, layer, x, bias=None):
    return ("orig", x.shape[0])


def _layer(rows_out=32, k=16, dtype=torch.float32):
    return types.SimpleNamespace(weight=torch.randn(rows_out, k, dtype=dtype))


@torch.no_grad()
def test_linear_hook_serves_few_rows_when_chosen(decided):
    decided(OURS)
    layer = _layer()
    x = torch.randn(3, 16)
    torch.testing.assert_close(cpu_linear.linear_apply(_orig, None, layer, x), F.linear(x, layer.weight))
    # Too many rows, another dtype, AMX-packed weights, autograd: SGLang's own code.
    assert cpu_linear.linear_apply(_orig, None, layer, torch.randn(SKINNY_MAX_ROWS + 1, 16)) == ("orig", 9)
    assert cpu_linear.linear_apply(_orig, None, layer, x.double()) == ("orig", 3)
    amx = types.SimpleNamespace(weight=layer.weight, use_intel_amx_backend=True)
    assert cpu_linear.linear_apply(_orig, None, amx, x) == ("orig", 3)
    with torch.enable_grad():
        assert cpu_linear.linear_apply(_orig, None, layer, x) == ("orig", 3)


@torch.no_grad()
def test_linear_hook_keeps_sglang_when_asked_or_slower(decided, monkeypatch):
    decided("builtin")
    assert cpu_linear.linear_apply(_orig, None, _layer(), torch.randn(2, 16)) == ("orig", 2)
    monkeypatch.setattr(cpu_linear, "_decided", {})
    decided("auto")
    slow = SkinnyGemmMeasurement((32, 16), 1, "float32", (1,), (1.0,), (2.0,))
    monkeypatch.setattr(cpu_linear, "measure_skinny_gemm", lambda w: slow)
    assert cpu_linear.linear_apply(_orig, None, _layer(), torch.randn(2, 16)) == ("orig", 2)
    assert cpu_linear._decided == {torch.float32: 0}


def test_served_rows_stop_where_the_skinny_form_was_slower():
    m = SkinnyGemmMeasurement((8, 8), 1, "float32", (1, 2, 4, 8), (10.0, 20.0, 15.0, 13.0), (5.0, 5.0, 6.0, 17.0))
    assert m.max_rows == 4
    assert m.speedup == pytest.approx(45.0 / 16.0)
    assert "for 1-4 rows" in m.summary()
    within_noise = SkinnyGemmMeasurement((8, 8), 1, "float32", (1, 8), (10.0, 10.0), (5.0, 10.5))
    assert within_noise.max_rows == 8
    slower = SkinnyGemmMeasurement((8, 8), 1, "float32", (1, 2), (1.0, 1.0), (2.0, 0.5))
    assert slower.max_rows == 0 and slower.speedup == pytest.approx(0.5)


@torch.no_grad()
def test_rows_beyond_the_measured_limit_keep_f_linear(decided, monkeypatch):
    decided("auto")
    m = SkinnyGemmMeasurement((32, 16), 1, "float32", (1, 2, 8), (4.0, 4.0, 1.0), (1.0, 1.0, 2.0))
    monkeypatch.setattr(cpu_linear, "measure_skinny_gemm", lambda w: m)
    layer = _layer()
    x = torch.randn(2, 16)
    torch.testing.assert_close(cpu_linear.linear_apply(_orig, None, layer, x), F.linear(x, layer.weight))
    assert cpu_linear.linear_apply(_orig, None, layer, torch.randn(3, 16)) == ("orig", 3)


@torch.no_grad()
def test_measurement_happens_once_per_dtype(decided, monkeypatch):
    decided("auto")
    calls = []
    fast = SkinnyGemmMeasurement((32, 16), 1, "float32", (1,), (3.0,), (1.0,))
    monkeypatch.setattr(cpu_linear, "measure_skinny_gemm", lambda w: calls.append(w.dtype) or fast)
    for _ in range(3):
        cpu_linear.linear_apply(_orig, None, _layer(), torch.randn(1, 16))
    cpu_linear.linear_apply(_orig, None, _layer(dtype=torch.bfloat16), torch.randn(1, 16).bfloat16())
    assert calls == [torch.float32, torch.bfloat16]


class _Logits:
    use_fp32_lm_head = False
    rl_on_policy_target = None


def _lm_orig(self, hidden, lm_head, embedding_bias=None, **kwargs):
    return "orig"


@torch.no_grad()
def test_lm_head_hook_only_takes_the_plain_matmul_branch(decided):
    decided(OURS)
    head = types.SimpleNamespace(weight=torch.randn(50, 16), quant_method=None)
    h = torch.randn(4, 16)
    torch.testing.assert_close(cpu_linear.compute_lm_head(_lm_orig, _Logits(), h, head), h @ head.weight.T)
    assert cpu_linear.compute_lm_head(_lm_orig, _Logits(), h, head, torch.zeros(50)) == "orig"
    fp32_head = _Logits()
    fp32_head.use_fp32_lm_head = True
    assert cpu_linear.compute_lm_head(_lm_orig, fp32_head, h, head) == "orig"
    lora = types.SimpleNamespace(weight=head.weight, quant_method=None, set_lora=1, apply_lora=1)
    assert cpu_linear.compute_lm_head(_lm_orig, _Logits(), h, lora) == "orig"
    assert cpu_linear.compute_lm_head(_lm_orig, _Logits(), torch.randn(9, 16), head) == "orig"


def test_one_row_and_two_rows_share_their_best_skinny_time():
    from sglang_dspark.skinny_gemm import _same_work_same_time

    # One row is computed as two: a slow one-row time (load) must not stop the skinny form at 0 rows.
    assert _same_work_same_time((1, 2, 4), [76.4, 2.8, 3.8]) == (2.8, 2.8, 3.8)
    assert _same_work_same_time((1, 2), [2.5, 9.0]) == (2.5, 2.5)
    assert _same_work_same_time((1, 4), [76.4, 3.8]) == (76.4, 3.8)  # nothing to share without two rows


def test_measurement_under_load_is_marked_by_the_cpu_share():
    quiet = SkinnyGemmMeasurement((8, 8), 1, "float32", (1,), (2.0,), (1.0,), True, 0.97)
    shared = SkinnyGemmMeasurement((8, 8), 1, "float32", (1,), (2.0,), (1.0,), True, 0.55)
    unstable = SkinnyGemmMeasurement((8, 8), 1, "float32", (1,), (2.0,), (1.0,), False, 1.0)
    assert not quiet.under_load and "load" not in quiet.summary()
    assert shared.under_load and "had 55% of the CPU time" in shared.summary()
    assert unstable.under_load and "unstable" in unstable.summary()
    m = measure_skinny_gemm(torch.randn(64, 32), rows=(1, 2), min_rounds=2, max_seconds=0.5, sweep_bytes=1)
    assert 0.0 < m.cpu_share <= 1.0


def _measurements(monkeypatch, *results):
    """Make cpu_linear measure ``results`` in turn; return the list of measured dtypes and a clock setter."""
    queue, calls, now = list(results), [], [0.0]
    monkeypatch.setattr(cpu_linear, "measure_skinny_gemm",
                        lambda w, **limit: calls.append((w.dtype, limit)) or queue.pop(0))
    monkeypatch.setattr(cpu_linear, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(cpu_linear, "_remeasure", {})

    def at(seconds):
        now[0] = seconds
    return calls, at


@torch.no_grad()
def test_a_decision_taken_under_load_is_measured_again_when_due(decided, monkeypatch):
    decided("auto")
    loaded = SkinnyGemmMeasurement((32, 16), 1, "float32", (1, 2), (4.0, 1.0), (1.0, 2.0), True, 0.5)
    quiet = SkinnyGemmMeasurement((32, 16), 1, "float32", (1, 2), (4.0, 4.0), (1.0, 1.0), True, 0.98)
    calls, at = _measurements(monkeypatch, loaded, quiet)
    layer, head = _layer(), types.SimpleNamespace(weight=torch.randn(50, 16), quant_method=None)
    x = torch.randn(2, 16)
    assert cpu_linear.linear_apply(_orig, None, layer, x) == ("orig", 2)  # loaded: skinny for one row only
    at(cpu_linear._REMEASURE_AFTER_SECONDS - 1)
    cpu_linear.compute_lm_head(_lm_orig, _Logits(), torch.randn(1, 16), head)
    assert len(calls) == 1  # not yet due
    at(cpu_linear._REMEASURE_AFTER_SECONDS + 1)
    cpu_linear.compute_lm_head(_lm_orig, _Logits(), torch.randn(1, 16), head)
    assert len(calls) == 2 and cpu_linear._decided == {torch.float32: 2} and cpu_linear._remeasure == {}
    # At start-up the measurement may wait out another server's start-up; inside a forward it stops sooner.
    assert calls == [(torch.float32, {}), (torch.float32, {"max_seconds": cpu_linear._REMEASURE_MAX_SECONDS})]
    torch.testing.assert_close(cpu_linear.linear_apply(_orig, None, layer, x), F.linear(x, layer.weight))


@torch.no_grad()
def test_measuring_again_stops_after_its_tries(decided, monkeypatch):
    decided("auto")
    loaded = SkinnyGemmMeasurement((32, 16), 1, "float32", (1,), (4.0,), (1.0,), False, 0.4)
    calls, at = _measurements(monkeypatch, *[loaded] * (cpu_linear._REMEASURE_TRIES + 2))
    head = types.SimpleNamespace(weight=torch.randn(50, 16), quant_method=None)
    cpu_linear.linear_apply(_orig, None, _layer(), torch.randn(1, 16))
    for i in range(1, cpu_linear._REMEASURE_TRIES + 3):
        at(i * (cpu_linear._REMEASURE_AFTER_SECONDS + 1))
        cpu_linear.compute_lm_head(_lm_orig, _Logits(), torch.randn(1, 16), head)
    assert len(calls) == 1 + cpu_linear._REMEASURE_TRIES and cpu_linear._remeasure == {}
