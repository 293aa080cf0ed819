"""The GPU benchmark script's CPU-checkable parts: sizes, peaks, report."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "moe_mxfp4.py"
_spec = importlib.util.spec_from_file_location("bench_moe_mxfp4", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up there
_spec.loader.exec_module(bench)


def test_sizes_from_hf_and_deepseek_configs(tmp_path: Path) -> None:
    hf = tmp_path / "hf.json"
    hf.write_text(json.dumps({
        "hidden_size": 4096, "moe_intermediate_size": 2048, "n_routed_experts": 256,
        "num_experts_per_tok": 6, "swiglu_limit": 10.0,
    }))  # fmt: skip
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"dim": 4096, "moe_inter_dim": 2048, "n_routed_experts": 256, "n_activated_experts": 6}))
    assert bench.shape_from_config(str(hf)) == bench.V4_FLASH
    assert bench.shape_from_config(str(ds)) == bench.MoeShape(4096, 2048, 256, 6, None)
    assert bench.shape_from_config(None) == bench.V4_FLASH


@pytest.mark.parametrize(
    ("name", "tbps"),
    [
        ("NVIDIA H100 80GB HBM3", 3.35),
        ("NVIDIA H200", 4.8),
        ("NVIDIA H20", 4.0),
        ("NVIDIA H100 PCIe", 2.0),
        ("Tesla T4", None),
    ],
)
def test_hbm_peak_by_device_name(name: str, tbps: float | None) -> None:
    peak = bench.hbm_peak(name)
    assert (peak is None and tbps is None) or peak == pytest.approx(tbps * 1e12)


def test_bytes_per_expert_and_report() -> None:
    assert bench.bytes_per_expert(bench.V4_FLASH) == 3 * 4096 * 2048 * 17 // 32
    result = {
        "device": "NVIDIA H100 80GB HBM3", "hbm_peak_tbps": 3.35, "shape": {}, "ep_size": 1, "timing": "t",
        "verify_max_rel_err": {"triton": 1e-3}, "skipped": {"flashinfer": "not installed"},
        "rows": [{"tokens": 1, "touched_experts": 6, "weight_bytes": 2**20,
                  "impls": {"triton": {"ms": 0.5, "tbps": 2.0, "frac_of_peak": 0.6}}}],
    }  # fmt: skip
    table = bench.markdown(result)
    assert "| 1 | 6 | 1.0 | 500.0 | 2.00 | 60.0 |" in table
    assert "skipped flashinfer: not installed" in table
    assert bench.parse_args(["--tokens", "1", "8"]).tokens == [1, 8]
