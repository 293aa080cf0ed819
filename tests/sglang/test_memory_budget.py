import pytest
import torch

from sglang_dspark.sglang import memory_budget as mb


def test_parse_budget_accepts_integers_and_rejects_the_rest() -> None:
    assert mb.parse_budget(None) is None
    assert mb.parse_budget("  ") is None
    assert mb.parse_budget("12582912") == 12 * 2**20
    assert mb.parse_budget("12_582_912") == 12 * 2**20
    with pytest.raises(ValueError, match="integer number of bytes"):
        mb.parse_budget("12MB")
    with pytest.raises(ValueError, match="integer number of bytes"):
        mb.parse_budget("1e7")
    with pytest.raises(ValueError, match="at least 1048576 bytes"):
        mb.parse_budget("4096")
    with pytest.raises(ValueError, match="at least"):
        mb.parse_budget("-5")


def test_allocated_bytes_count_each_storage_once() -> None:
    before = mb.allocated_cpu_bytes()
    x = torch.zeros(1 << 18, dtype=torch.float32)  # 1 MiB
    views = [x[:10], x.view(512, 512), x[1::2]]
    after = mb.allocated_cpu_bytes()
    assert after - before == x.untyped_storage().nbytes()
    del x, views
    assert mb.allocated_cpu_bytes() == before


def test_hook_models_a_device_of_the_budget(monkeypatch) -> None:
    calls = []

    def orig(device, gpu_id, distributed=False, empty_cache=True, cpu_group=None):
        calls.append(device)
        return 123.0

    monkeypatch.delenv(mb.ENV, raising=False)
    assert mb.available_memory(orig, "cpu", 0) == 123.0  # unset: SGLang's answer
    monkeypatch.setenv(mb.ENV, str(64 * 2**20))
    assert mb.available_memory(orig, "cuda", 0) == 123.0  # other devices untouched
    assert calls == ["cpu", "cuda"]
    free = mb.available_memory(orig, "cpu", 0) * 2**30
    held = torch.zeros(1 << 20, dtype=torch.uint8)
    free_after = mb.available_memory(orig, "cpu", 0) * 2**30
    assert free == 64 * 2**20 - mb.allocated_cpu_bytes() + held.numel()
    assert free - free_after == held.numel()
    monkeypatch.setenv(mb.ENV, str(2**20))
    assert mb.available_memory(orig, "cpu", 0) >= 0.0  # never negative
    monkeypatch.setenv(mb.ENV, "lots")
    with pytest.raises(ValueError, match=mb.ENV):
        mb.available_memory(orig, "cpu", 0)


def test_server_args_check_and_install(monkeypatch) -> None:
    class Args:
        device = "cpu"

    monkeypatch.delenv(mb.ENV, raising=False)
    assert mb.install() is False
    assert mb.check_server_args("r", Args()) == "r"
    monkeypatch.setenv(mb.ENV, "oops")
    with pytest.raises(ValueError, match="integer number of bytes"):
        mb.check_server_args("r", Args())
    monkeypatch.setenv(mb.ENV, str(2**24))
    assert mb.check_server_args("r", Args()) == "r"
    Args.device = "cuda"
    with pytest.raises(ValueError, match="test-only switch for --device cpu"):
        mb.check_server_args("r", Args())
