"""The ragged / padded verify layouts the worker sends to the target."""

from __future__ import annotations

import pytest
import torch

from sglang_dspark.sglang.verify_batch import plan_verify_layout, ragged_supported


def test_ragged_layout_sends_only_the_verified_tokens() -> None:
    layout = plan_verify_layout([0, 3, 1], torch.device("cpu"), ragged=True)
    assert layout.ragged and layout.width == 4 and layout.counts_cpu == [1, 4, 2]
    assert layout.num_rows == 7
    ids = torch.arange(12).view(3, 4)
    rows = layout.select(ids)
    assert rows.tolist() == [0, 4, 5, 6, 7, 8, 9]
    back = layout.to_padded(rows[:, None].float())
    assert back.shape == (3, 4, 1)
    assert back[..., 0].tolist() == [[0, 0, 0, 0], [4, 5, 6, 7], [8, 9, 0, 0]]

    sg = layout.sglang_layout()
    assert sg.verify_lens.tolist() == [1, 4, 2]
    assert sg.qo_indptr_device.tolist() == [0, 1, 5, 7]
    assert sg.extend_start_loc.tolist() == [0, 1, 5]
    assert sg.total_verify_tokens == sg.graph_num_tokens == 7


@pytest.mark.parametrize("lens,ragged", [([2, 2, 2], True), ([0, 3], False)])
def test_uniform_or_disabled_layouts_are_padded(lens, ragged) -> None:
    layout = plan_verify_layout(lens, torch.device("cpu"), ragged=ragged)
    assert not layout.ragged
    assert layout.sglang_layout() is None
    assert layout.num_rows == len(lens) * layout.width
    x = torch.randn(len(lens), layout.width, 5)
    assert torch.equal(layout.to_padded(layout.select(x)), x)


def test_ragged_support_by_backend(monkeypatch) -> None:
    class TorchNativeAttnBackend:
        pass

    class FlashAttentionBackend:
        pass

    class TritonAttnBackend:
        pass

    monkeypatch.delenv("SGLANG_RAGGED_VERIFY_MODE", raising=False)
    assert ragged_supported(TorchNativeAttnBackend())
    assert not ragged_supported(FlashAttentionBackend())
    monkeypatch.setenv("SGLANG_RAGGED_VERIFY_MODE", "compact")
    assert ragged_supported(FlashAttentionBackend())
    assert not ragged_supported(TritonAttnBackend())
