"""Tests for sglang_dspark.algorithm.calibration."""

from __future__ import annotations

import json

import pytest
import torch

from sglang_dspark.algorithm.calibration import (
    STS_FORMAT,
    StsCalibration,
    StsFormatError,
    default_temperature_grid,
    expected_calibration_error,
    fit_sts,
)

TRUE_TEMPERATURES = (2.0, 1.5, 3.0)


def _overconfident_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits the head reports, and outcomes drawn from the tempered truth."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 3, generator=gen) * 3.0 + 1.5
    true_conditional = torch.sigmoid(logits / torch.tensor(TRUE_TEMPERATURES))
    accepted = torch.rand(n, 3, generator=gen) < true_conditional
    # What happens after the first rejection is irrelevant: scramble it.
    earlier_accepted = torch.cat([torch.ones(n, 1, dtype=torch.long), accepted.long().cumprod(dim=1)[:, :-1]], dim=1)
    after_rejection = earlier_accepted == 0
    accepted = torch.where(after_rejection, torch.rand(n, 3, generator=gen) < 0.5, accepted)
    return logits, accepted


def test_ece_hand_computed() -> None:
    # Bins of width 0.5: {0.1, 0.3} with outcomes {0, 1}: |0.2 - 0.5| * 2/4;
    # {0.7, 0.9} with outcomes {1, 1}: |0.8 - 1.0| * 2/4. Total 0.15 + 0.1.
    ece = expected_calibration_error([0.1, 0.3, 0.7, 0.9], [0, 1, 1, 1], n_bins=2)
    assert ece == pytest.approx(0.25)
    # Perfect calibration within every bin.
    assert expected_calibration_error([0.25, 0.25, 0.25, 0.25], [1, 0, 0, 0], n_bins=10) == pytest.approx(0.0)
    # A single bin compares the overall means.
    assert expected_calibration_error([0.9, 0.8], [0, 0], n_bins=1) == pytest.approx(0.85)
    # Probability 1 falls into the last bin, 0 into the first.
    assert expected_calibration_error([1.0, 0.0], [1, 0], n_bins=15) == pytest.approx(0.0)
    assert expected_calibration_error(torch.tensor([[0.6, 0.6], [0.6, 0.6]]), torch.tensor([[1, 1], [0, 1]])) == pytest.approx(0.15)


def test_ece_validation() -> None:
    with pytest.raises(ValueError, match="differ in size"):
        expected_calibration_error([0.5, 0.5], [1])
    with pytest.raises(ValueError, match="no samples"):
        expected_calibration_error([], [])


def test_fit_recovers_true_temperatures() -> None:
    logits, accepted = _overconfident_data(60_000, seed=0)
    calibration = fit_sts(logits, accepted)
    for fitted, true in zip(calibration.temperatures, TRUE_TEMPERATURES):
        assert fitted == pytest.approx(true, rel=0.15)
    assert calibration.num_samples == 60_000
    assert calibration.ece_before > 0.05
    assert calibration.ece_after < calibration.ece_before / 5
    survival = calibration.survival(logits)
    observed = accepted.long().cumprod(dim=1)
    assert calibration.ece_after == pytest.approx(expected_calibration_error(survival, observed))


def test_fit_keeps_calibrated_head_near_identity() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(40_000, 2, generator=gen) * 2.0
    accepted = torch.rand(40_000, 2, generator=gen) < torch.sigmoid(logits)
    calibration = fit_sts(logits, accepted)
    for fitted in calibration.temperatures:
        assert fitted == pytest.approx(1.0, rel=0.15)


def test_apply_and_survival() -> None:
    calibration = StsCalibration(temperatures=(2.0, 0.5))
    logits = torch.tensor([[2.0, -1.0], [0.0, 1.0]])
    conditional = calibration.apply(logits)
    expected = torch.sigmoid(torch.tensor([[1.0, -2.0], [0.0, 2.0]]))
    assert torch.allclose(conditional, expected)
    assert torch.allclose(calibration.survival(logits), expected.cumprod(dim=1))
    assert torch.equal(StsCalibration.identity(2).apply(logits), torch.sigmoid(logits))
    with pytest.raises(ValueError, match="3 positions"):
        calibration.apply(torch.zeros(1, 3))


def test_default_grid() -> None:
    grid = default_temperature_grid()
    assert grid[0] == pytest.approx(0.25) and grid[-1] == pytest.approx(8.0)
    assert bool((grid == 1.0).any())
    assert bool((grid[1:] > grid[:-1]).all())


def test_custom_grid_and_validation() -> None:
    logits, accepted = _overconfident_data(5_000, seed=2)
    calibration = fit_sts(logits, accepted, grid=[1.0, 2.0])
    assert set(calibration.temperatures) <= {1.0, 2.0}
    with pytest.raises(ValueError, match="N, K"):
        fit_sts(logits, accepted[:, :2])
    with pytest.raises(ValueError, match="positive"):
        fit_sts(logits, accepted, grid=[0.0, 1.0])
    with pytest.raises(ValueError, match="positive"):
        StsCalibration(temperatures=(1.0, -1.0))


def test_json_round_trip(tmp_path) -> None:
    calibration = StsCalibration(temperatures=(2.0, 1.5, 3.0), ece_before=0.09, ece_after=0.004, num_samples=123)
    path = tmp_path / "sts.json"
    calibration.to_json(path)
    data = json.loads(path.read_text())
    assert data["format"] == STS_FORMAT and data["temperatures"] == [2.0, 1.5, 3.0]
    assert StsCalibration.from_json(path) == calibration


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"format": "other/1", "temperatures": [1.0]}', "format"),
        (f'{{"format": "{STS_FORMAT}", "temperatures": "1.0"}}', "list of numbers"),
        (f'{{"format": "{STS_FORMAT}", "temperatures": []}}', "at least one"),
        (f'{{"format": "{STS_FORMAT}", "temperatures": [1.0, 0]}}', "positive"),
        (f'{{"format": "{STS_FORMAT}", "temperatures": [1.0], "ece_after": "x"}}', "ece_after"),
        (f'{{"format": "{STS_FORMAT}", "temperatures": [1.0], "num_samples": 1.5}}', "num_samples"),
    ],
)
def test_malformed_json(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(StsFormatError, match=message) as info:
        StsCalibration.from_json(path)
    assert str(path) in str(info.value)
