import pytest

from sglang_dspark.sglang.fault_injection import DraftFaultInjector, InjectedDraftFault


def test_fault_injector(monkeypatch) -> None:
    monkeypatch.setenv("SGLANG_DSPARK_INJECT_DRAFT_FAULT", "3")
    inj = DraftFaultInjector.from_env()
    outcomes = []
    for _ in range(6):
        try:
            inj.maybe_raise()
            outcomes.append(False)
        except InjectedDraftFault:
            outcomes.append(True)
    assert outcomes == [False, False, True, False, False, True]
    monkeypatch.setenv("SGLANG_DSPARK_INJECT_DRAFT_FAULT", "x")
    with pytest.raises(ValueError, match="non-negative integer"):
        DraftFaultInjector.from_env()
    monkeypatch.delenv("SGLANG_DSPARK_INJECT_DRAFT_FAULT")
    DraftFaultInjector.from_env().maybe_raise()  # off by default
