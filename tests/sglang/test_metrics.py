import torch

from sglang_dspark.sglang.metrics import RunningCalibrationError


def test_running_ece_matches_hand_computation():
    ece = RunningCalibrationError(n_bins=10)
    # Request 0 verifies 3 positions, 2 accepted; request 1 verifies 1, none accepted.
    survival = torch.tensor([[0.95, 0.85, 0.45], [0.55, 0.3, 0.1]])
    ece.update(survival, torch.tensor([3, 1]), torch.tensor([2, 0]))
    # bins: 0.95 -> hit 1; 0.85 -> hit 1; 0.45 -> miss; 0.55 -> miss (0.3, 0.1 not verified)
    expected = (abs(0.95 - 1) + abs(0.85 - 1) + abs(0.45 - 0) + abs(0.55 - 0)) / 4
    assert abs(ece.value - expected) < 1e-6


def test_running_ece_perfectly_calibrated_is_zero():
    ece = RunningCalibrationError(n_bins=2)
    # Four predictions of 0.75 in one bin with three hits: calibrated.
    survival = torch.full((4, 1), 0.75)
    ece.update(survival, torch.ones(4, dtype=torch.long), torch.tensor([1, 1, 1, 0]))
    assert ece.value < 1e-12
