import pytest

from sglang_dspark.algorithm.acceptance_guard import AcceptanceGuard, AcceptanceGuardConfig


def test_no_verdict_before_warmup_then_collapse_when_nothing_is_accepted() -> None:
    guard = AcceptanceGuard(AcceptanceGuardConfig(threshold=0.05, warmup_drafts=100))
    for _ in range(24):
        guard.update(0, 4)
    assert not guard.collapsed  # 96 drafts < warm-up
    guard.update(0, 4)
    assert guard.collapsed and guard.rate == 0.0


def test_healthy_drafter_never_collapses_and_recovery_clears_it() -> None:
    guard = AcceptanceGuard(AcceptanceGuardConfig(threshold=0.05, warmup_drafts=40, halflife_drafts=40))
    for _ in range(200):
        guard.update(2, 4)
    assert not guard.collapsed and guard.rate == pytest.approx(0.5)
    for _ in range(100):
        guard.update(0, 4)
    assert guard.collapsed
    for _ in range(100):
        guard.update(3, 4)
    assert not guard.collapsed


def test_guard_validation() -> None:
    with pytest.raises(ValueError, match="threshold"):
        AcceptanceGuardConfig(threshold=0.0)
    with pytest.raises(ValueError, match="accepted 5 of 4"):
        AcceptanceGuard().update(5, 4)
    guard = AcceptanceGuard()
    guard.update(0, 0)  # steps that verified nothing carry no evidence
    assert guard.verified_drafts == 0
