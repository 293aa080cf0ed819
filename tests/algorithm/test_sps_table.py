"""Tests for sglang_dspark.algorithm.sps_table."""

from __future__ import annotations

import json
import time

import pytest
import torch

from sglang_dspark.algorithm.sps_table import (
    SPS_FORMAT,
    SpsTable,
    SpsTableFormatError,
    default_sps_table,
    profile_sps,
)

# Step times 10 ms, 10 ms, 20 ms, 40 ms.
TABLE = SpsTable(
    token_counts=(1, 8, 16, 32),
    steps_per_second=(100.0, 100.0, 50.0, 25.0),
    device="test device",
    measured_at="2026-11-20",
    notes="hand-made",
)


@pytest.mark.parametrize(
    ("n", "step_time"),
    [
        (0, 0.010),  # flat below the first point
        (1, 0.010),
        (4, 0.010),
        (12, 0.015),  # halfway in time between 8 and 16
        (16, 0.020),
        (24, 0.030),
        (32, 0.040),
        (48, 0.060),  # extrapolated along the last segment, 1.25 ms per token
        (64, 0.080),
    ],
)
def test_interpolates_step_time(n: int, step_time: float) -> None:
    assert TABLE.step_time(n) == pytest.approx(step_time)
    assert TABLE(n) == pytest.approx(1.0 / step_time)
    tensor_value = TABLE(torch.tensor([n]))
    assert tensor_value.dtype == torch.float64
    assert float(tensor_value) == pytest.approx(1.0 / step_time)


def test_tensor_and_scalar_evaluation_agree() -> None:
    n = torch.arange(0, 100)
    assert torch.allclose(TABLE(n), torch.tensor([TABLE(int(i)) for i in n], dtype=torch.float64))


def test_extrapolation_never_speeds_up() -> None:
    noisy = SpsTable(token_counts=(1, 16, 32), steps_per_second=(100.0, 40.0, 50.0))
    assert noisy(64) == pytest.approx(50.0)  # last segment slope clamped to 0
    single = SpsTable(token_counts=(8,), steps_per_second=(100.0,))
    assert single(4) == pytest.approx(100.0)
    assert single(16) == pytest.approx(50.0)  # time proportional to tokens beyond
    assert float(single(torch.tensor([4, 16]))[1]) == pytest.approx(50.0)


def test_validation() -> None:
    with pytest.raises(ValueError, match="at least one"):
        SpsTable(token_counts=(), steps_per_second=())
    with pytest.raises(ValueError, match="differ in length"):
        SpsTable(token_counts=(1, 2), steps_per_second=(1.0,))
    with pytest.raises(ValueError, match="strictly increasing"):
        SpsTable(token_counts=(4, 2), steps_per_second=(1.0, 1.0))
    with pytest.raises(ValueError, match="strictly increasing"):
        SpsTable(token_counts=(2, 2), steps_per_second=(1.0, 1.0))
    with pytest.raises(ValueError, match="positive integers"):
        SpsTable(token_counts=(0, 2), steps_per_second=(1.0, 1.0))
    with pytest.raises(ValueError, match="positive and finite"):
        SpsTable(token_counts=(1, 2), steps_per_second=(1.0, -1.0))
    with pytest.raises(ValueError, match="ISO 8601"):
        SpsTable(token_counts=(1,), steps_per_second=(1.0,), measured_at="yesterday")


def test_json_round_trip(tmp_path) -> None:
    path = tmp_path / "sps.json"
    TABLE.to_json(path)
    data = json.loads(path.read_text())
    assert data["format"] == SPS_FORMAT
    assert data["points"][2] == {"tokens": 16, "steps_per_second": 50.0}
    assert SpsTable.from_json(path) == TABLE


def test_json_optional_fields(tmp_path) -> None:
    path = tmp_path / "sps.json"
    path.write_text(json.dumps({"format": SPS_FORMAT, "points": [{"tokens": 1, "steps_per_second": 7}]}))
    table = SpsTable.from_json(path)
    assert table.steps_per_second == (7.0,) and table.device == "" and table.notes == ""


def _points(*points) -> str:
    return json.dumps({"format": SPS_FORMAT, "device": "d", "measured_at": "2026-11-20", "points": list(points)})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "JSON object"),
        (json.dumps({"format": "sglang-dspark-sps/2", "points": []}), "format"),
        (json.dumps({"format": SPS_FORMAT}), "non-empty list"),
        (_points(), "non-empty list"),
        (_points({"tokens": 1}), "points\\[0\\]"),
        (_points({"tokens": "1", "steps_per_second": 1.0}), "tokens must be an integer"),
        (_points({"tokens": 1, "steps_per_second": "fast"}), "steps_per_second must be a number"),
        (_points({"tokens": 4, "steps_per_second": 1.0}, {"tokens": 2, "steps_per_second": 1.0}), "strictly increasing"),
        (_points({"tokens": 1, "steps_per_second": 0}), "positive"),
        (json.dumps({"format": SPS_FORMAT, "device": 3, "points": [{"tokens": 1, "steps_per_second": 1}]}), "device"),
    ],
)
def test_malformed_json(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SpsTableFormatError, match=message) as info:
        SpsTable.from_json(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("kind", "knee"), [("NVIDIA H100 80GB HBM3", 256), ("NVIDIA H20", 64), ("NVIDIA H200", 256), ("mystery", 128)])
def test_default_table_shape(kind: str, knee: int) -> None:
    table = default_sps_table(kind)
    assert table.device == kind and "not measured" in table.notes
    # Flat-ish (within 10 %) up to the knee, then time grows linearly with tokens.
    assert table.step_time(knee) / table.step_time(1) == pytest.approx(1.1, rel=0.01)
    assert table.step_time(4 * knee) / table.step_time(2 * knee) == pytest.approx(4.1 / 2.1)
    sps = table(torch.arange(1, 16 * knee))
    assert bool((sps[1:] <= sps[:-1]).all())
    assert default_sps_table("h100", knee_tokens=32).step_time(32) == pytest.approx(0.022)


class _FakeDevice:
    """A fake clock and forward function: a step over n tokens takes 1 ms + 0.1 ms * n."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[int] = []
        self.syncs = 0

    def clock(self) -> float:
        return self.now

    def forward(self, n: int) -> None:
        self.calls.append(n)
        # Every third call is slow, so the median (not the mean) is exact.
        slow = 5.0 if len(self.calls) % 3 == 0 else 1.0
        self.now += slow * (1e-3 + 1e-4 * n)

    def synchronize(self) -> None:
        self.syncs += 1


def test_profile_with_fake_clock() -> None:
    fake = _FakeDevice()
    table = profile_sps(
        fake.forward, [16, 1, 4, 4], warmup=1, repeats=3, synchronize=fake.synchronize,
        device="fake", progress=False, clock=fake.clock,
    )
    assert table.token_counts == (1, 4, 16)
    assert len(fake.calls) == 3 * (1 + 3)
    assert fake.syncs > 0
    for n, sps in zip(table.token_counts, table.steps_per_second):
        assert sps == pytest.approx(1.0 / (1e-3 + 1e-4 * n))
    assert table.device == "fake" and table.measured_at


def test_profile_real_clock_is_monotone() -> None:
    def forward(n: int) -> None:
        time.sleep(0.0005 + 0.0001 * n)

    table = profile_sps(forward, [1, 8, 32, 64], warmup=1, repeats=3, progress=True)
    assert all(b <= a for a, b in zip(table.steps_per_second, table.steps_per_second[1:]))
    assert table.steps_per_second[-1] < table.steps_per_second[0] / 2


def test_profile_makes_noisy_times_monotone() -> None:
    fake = _FakeDevice()
    times = {1: 2e-3, 2: 1e-3, 3: 3e-3}  # 2 tokens measured faster than 1

    def forward(n: int) -> None:
        fake.now += times[n]

    table = profile_sps(forward, [1, 2, 3], warmup=0, repeats=1, progress=False, clock=fake.clock)
    assert table.steps_per_second == pytest.approx((500.0, 500.0, 1000.0 / 3))
    with pytest.raises(ValueError, match="empty"):
        profile_sps(forward, [], progress=False)
    with pytest.raises(ValueError, match="positive"):
        profile_sps(forward, [0, 1], progress=False)
