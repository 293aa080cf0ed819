"""The selftest's parts that need no kernel run: shapes, plans, GPU peaks, the bit decoder, the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sglang_dspark.models.synthetic import write_synthetic_v4_config
from sglang_dspark.moe import mxfp4
from sglang_dspark.selftest import config as cfg
from sglang_dspark.selftest.dequant_check import SWEEP_EXPONENTS, check_code_sweep, decode_from_bits
from sglang_dspark.selftest.device_facts import describe_device, hbm_peak
from sglang_dspark.selftest.report import render_table, write_outputs
from sglang_dspark.selftest.results import CheckResult, SelftestReport, Status, Timing, judged
from sglang_dspark.selftest.timing import timed_calls
from sglang_dspark.selftest.trainer_check import TINY_RECIPE, selftest_recipe
from sglang_dspark.train.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]


def test_default_shape_is_the_v4_flash_release_config(tmp_path):
    assert cfg.moe_shape_from_config(write_synthetic_v4_config(tmp_path)) == cfg.V4_FLASH_MOE
    assert cfg.V4_FLASH_MOE == cfg.MoeShape(hidden=4096, intermediate=2048, experts=256, top_k=6, swiglu_limit=10.0)
    assert cfg.MX_BLOCK == mxfp4.BLOCK_SIZE
    assert cfg.V4_FLASH_MOE.bytes_per_expert == 3 * 4096 * 2048 * 17 // 32  # 4.25 bits per weight


def test_shape_from_deepseek_inference_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"dim": 7168, "moe_inter_dim": 2048, "n_routed_experts": 384, "n_activated_experts": 8}))
    assert cfg.moe_shape_from_config(path) == cfg.MoeShape(7168, 2048, 384, 8, None)
    path.write_text(json.dumps({"hidden_size": 4096}))
    with pytest.raises(cfg.SelftestConfigError, match="moe_intermediate_size"):
        cfg.moe_shape_from_config(path)


@pytest.mark.parametrize("bad", [dict(hidden=100), dict(top_k=300), dict(swiglu_limit=-1.0)])
def test_shape_is_validated(bad):
    with pytest.raises(cfg.SelftestConfigError):
        cfg.MoeShape(**{**vars(cfg.V4_FLASH_MOE), **bad})


def test_plans():
    cuda = cfg.make_plan("cuda", False, cfg.V4_FLASH_MOE)
    assert cuda.tokens == (1, 8, 32, 128, 512) and cuda.num_experts == 256 and cuda.act_dtype == "bfloat16"
    assert cuda.tiles is None and cuda.repeats >= 10 and cuda.warmup >= 1
    quick = cfg.make_plan("cuda", True, cfg.V4_FLASH_MOE)
    assert set(quick.tokens) < set(cuda.tokens) and quick.num_experts == 256
    cpu = cfg.make_plan("cpu", True, cfg.V4_FLASH_MOE)
    assert cpu.tokens == (1,) and cpu.num_experts == 8 and cpu.act_dtype == "float32"
    with pytest.raises(cfg.SelftestConfigError):
        cfg.make_plan("rocm", False, cfg.V4_FLASH_MOE)
    with pytest.raises(cfg.SelftestConfigError, match="checks"):
        cfg.SelftestConfig(device="cpu", quick=True, out_dir=Path("x"), checks=("moe", "nope"))
    with pytest.raises(cfg.SelftestConfigError, match="num_experts"):
        cfg.SelftestConfig(device="cpu", quick=True, out_dir=Path("x"), plan=cfg.SelftestPlan(
            tokens=(1,), num_experts=4, act_dtype="float32", rel_error_bound=1e-4, tiles=None, warmup=0,
            repeats=1, draft_prompts=1, draft_new_tokens=8, trainer_steps=2))


@pytest.mark.parametrize(
    ("name", "label", "tbps"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 3.35),
        ("NVIDIA H100 PCIe", "H100 PCIe", 2.0),
        ("NVIDIA H100 NVL", "H100 NVL", 3.9),
        ("NVIDIA H200", "H200", 4.8),
        ("NVIDIA H20", "H20", 4.0),
        ("NVIDIA H800", "H800", 3.35),
        ("NVIDIA A100-SXM4-80GB", "A100 80GB", 2.0),
        ("NVIDIA A100 80GB PCIe", "A100 80GB", 2.0),
        ("NVIDIA B200", "B200", 8.0),
        ("NVIDIA L40S", "L40S", 0.864),
    ],
)
def test_hbm_peak_by_device_name(name, label, tbps):
    assert hbm_peak(name) == (label, pytest.approx(tbps * 1e12))


@pytest.mark.parametrize("name", ["Tesla T4", "NVIDIA GH200 480GB", "NVIDIA GeForce RTX 4090"])
def test_unknown_gpus_have_no_peak(name):
    assert hbm_peak(name) is None


def test_cuda_device_facts_from_the_driver(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H20")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    facts = describe_device("cuda")
    assert facts.peak_bytes_per_s == pytest.approx(4.0e12) and facts.capability == (9, 0)
    assert "NVIDIA H20 (SM90), peak HBM 4 TB/s (H20, vendor data sheet)" in facts.line()
    assert describe_device("cuda", peak_tbps=1.5).peak_bytes_per_s == 1.5e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    assert "give --peak-tbps" in describe_device("cuda").line()


def test_bit_decoder_by_hand():
    # Low nibble 1 (0.5) is element 0, high nibble 7 (6.0) element 1; scale 2**(128 - 127).
    packed = torch.tensor([[0x71, 0xF8] + [0] * 14], dtype=torch.uint8).view(torch.int8)
    got = decode_from_bits(packed, torch.tensor([[128]], dtype=torch.uint8))
    assert got[0, :4].tolist() == [1.0, 12.0, -0.0, -12.0]
    assert decode_from_bits(packed, torch.tensor([[0]], dtype=torch.uint8))[0, 1].item() == 6.0 * 2.0**-127
    assert 0 in SWEEP_EXPONENTS and 255 not in SWEEP_EXPONENTS
    assert check_code_sweep("cpu").status is Status.PASS


def test_tiny_recipe_is_the_repository_recipe():
    """Only the corpus size and the logging / checkpoint cadence differ from recipes/tiny-drafter.json."""
    repo = load_recipe(REPO / "recipes" / "tiny-drafter.json").to_dict()
    ours = selftest_recipe(7).to_dict()
    for section in ("drafter", "distill", "loss", "calibration", "export"):
        assert ours[section] == repo[section], section
    keep = {"num_anchors", "micro_batch_size", "batch_size", "lr", "warmup_ratio", "weight_decay", "max_grad_norm",
            "max_seq_len"}
    assert {k: ours["train"][k] for k in keep} == {k: repo["train"][k] for k in keep}
    assert ours["train"]["max_steps"] == 7 and ours["train"]["log_every"] == 1 and ours["train"]["val_blocks"] == 0
    assert TINY_RECIPE["train"]["checkpoint_every"] > 1000


def test_judged_and_timing():
    assert judged("c", "x", 1e-3, 1e-2).status is Status.PASS
    failed = judged("c", "x", 0.5, 1e-2)
    assert failed.failed and "0.5 > bound 0.01" in failed.note
    assert judged("c", "x", math.nan, 1e-2).failed
    t = Timing(median_ms=2.0, repeats=5, weight_bytes=4_000_000_000, peak_bytes_per_s=4e12)
    assert t.bytes_per_s == 2e12 and t.peak_share == 0.5
    timed = timed_calls(lambda: 41 + 1, "cpu", warmup=1, repeats=3)
    assert timed.output == 42 and len(timed.times_ms) == 3


def test_report_table_json_and_plot(tmp_path):
    rows = (
        CheckResult("triton moe", "T=1: 6 experts", Status.PASS, error=3e-3, bound=2e-2, tokens=1,
                    timing=Timing(0.05, 20, 80_000_000, 3.35e12)),
        CheckResult("flashinfer moe", "T=1: 6 experts", Status.SKIP, tokens=1, note="not installed"),
        CheckResult("triton moe", "T=8: 40 experts", Status.FAIL, error=math.nan, bound=2e-2, tokens=8,
                    note="error nan > bound 0.02"),
    )
    report = SelftestReport("title", ("device: test",), rows, 61.0, {"plan": {"tokens": [1, 8]}})
    table = render_table(report)
    assert table.splitlines()[0] == "title"
    assert "selftest FAILED: 1 passed, 1 failed, 1 skipped in 1.0 min" in table
    assert "failed: triton moe T=8: 40 experts" in table
    line = next(x for x in table.splitlines() if x.startswith("triton moe") and "PASS" in x)
    assert "3.00e-03" in line and "2e-02" in line and "1600" in line and "47.8%" in line
    lines = write_outputs(report, tmp_path)
    saved = json.loads((tmp_path / "selftest.json").read_text())
    assert saved["exit_code"] == 1 and saved["results"][2]["error"] is None  # NaN -> null, strict JSON
    assert saved["results"][0]["timing"]["peak_share"] == pytest.approx(80e6 / 0.05e-3 / 3.35e12)
    assert any("selftest.png" in x for x in lines)
