"""The selftest must fail when the code it checks is wrong: errors planted by monkeypatching.

Each plant replaces a function the checks call (the dequantiser the pure-torch
reference and the baseline use, the verify step of the draft-verify loop) for
one test only; nothing in the product knows about it.
"""

from __future__ import annotations

import contextlib
import io
import json
import re

import torch

from sglang_dspark import cli
from sglang_dspark.models.synthetic import write_synthetic_v4_config
from sglang_dspark.moe import mxfp4
from sglang_dspark.selftest.config import MoeShape, SelftestConfig, SelftestPlan
from sglang_dspark.selftest.results import Status
from sglang_dspark.selftest.runner import run_selftest

REAL_DEQUANTIZE = mxfp4.dequantize
REAL_SCALES_TO_FLOAT = mxfp4.scales_to_float

# A small layer for the plants that go through the API: the interpreter stays under a second.
SMALL = MoeShape(hidden=256, intermediate=128, experts=8, top_k=3, swiglu_limit=10.0)
SMALL_PLAN = SelftestPlan(tokens=(1, 5), num_experts=8, act_dtype="float32", rel_error_bound=1e-4,
                          tiles=(16, 128, 256), warmup=0, repeats=1, draft_prompts=2, draft_new_tokens=24,
                          trainer_steps=2)


def swapped_nibbles(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The planted bug: element 2i read from the high nibble instead of the low one."""
    byte = packed.contiguous().view(torch.uint8)
    return REAL_DEQUANTIZE(((byte >> 4) | (byte << 4)).view(torch.int8), scales)


def _small_run(tmp_path, checks: tuple[str, ...]):
    config = SelftestConfig(device="cpu", quick=True, out_dir=tmp_path, checks=checks, shape=SMALL,
                            plan=SMALL_PLAN, progress=False)
    return run_selftest(config)


def _table(text: str) -> dict[str, str]:
    """``"check | case"`` -> verdict, from the printed table."""
    rows = (re.split(r"\s{2,}", line.strip()) for line in text.splitlines())
    return {f"{r[0]} | {r[1]}": r[2] for r in rows if len(r) > 2 and r[2] in ("PASS", "FAIL", "SKIP")}


def test_wrong_nibble_order_fails_the_command(monkeypatch, tmp_path):
    # The command on a small V4-style layer (--model-config), so the interpreter stays fast.
    config = write_synthetic_v4_config(tmp_path / "model", hidden_size=SMALL.hidden, overrides={
        "moe_intermediate_size": SMALL.intermediate, "n_routed_experts": SMALL.experts,
        "num_experts_per_tok": SMALL.top_k})
    monkeypatch.setattr(mxfp4, "dequantize", swapped_nibbles)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(["selftest", "--device", "cpu", "--quick", "--only", "moe", "--model-config", str(config),
                         "--out", str(tmp_path / "out"), "--no-progress"])
    text = stdout.getvalue()
    assert code == 1, text
    assert "selftest FAILED" in text and "values differ" in text and "> bound" in text
    verdicts = _table(text)
    assert verdicts["mxfp4 dequant | 256 bytes x 8 scales"] == "FAIL"
    assert verdicts["mxfp4 dequant | T=1: 3 experts"] == "FAIL"
    # The Triton kernel decodes in registers, so it now disagrees with the (planted) reference.
    assert verdicts["triton moe | T=1: 3 experts"] == "FAIL"
    # Reference and baseline share the planted dequantiser, so they still agree.
    assert verdicts["dequant+gemm | T=1: 3 experts"] == "PASS"
    assert json.loads((tmp_path / "out" / "selftest.json").read_text())["exit_code"] == 1


def test_scale_offset_fails(monkeypatch, tmp_path):
    monkeypatch.setattr(mxfp4, "scales_to_float", lambda scales: 2.0 * REAL_SCALES_TO_FLOAT(scales))
    report = _small_run(tmp_path, ("moe",))
    assert report.exit_code == 1
    failed = {(r.check, r.case) for r in report.results if r.status is Status.FAIL}
    assert ("mxfp4 dequant", "256 bytes x 8 scales") in failed
    assert {r.tokens for r in report.results if r.check == "triton moe" and r.failed} == {1, 5}


def test_small_layer_passes_without_a_plant(tmp_path):
    report = _small_run(tmp_path, ("moe",))
    assert report.exit_code == 0, [r.to_dict() for r in report.results if r.failed]
    assert {r.check for r in report.results} == {"mxfp4 dequant", "triton moe", "dequant+gemm"}


def test_lossy_verify_fails_draft_verify(monkeypatch, tmp_path):
    from sglang_dspark.algorithm.verify import VerifyResult
    from sglang_dspark.train import evaluate

    real_verify = evaluate.verify_block

    def accept_everything(draft_tokens, draft_probs, target_probs, **kwargs):
        """The planted bug: every draft is committed, right or wrong."""
        result = real_verify(draft_tokens, draft_probs, target_probs, **kwargs)
        batch, k = draft_tokens.shape
        bonus = target_probs[:, k].argmax(dim=-1, keepdim=True)
        return VerifyResult(num_accepted=torch.full_like(result.num_accepted, k),
                            tokens=torch.cat([draft_tokens.long(), bonus], dim=1))

    monkeypatch.setattr(evaluate, "verify_block", accept_everything)
    report = _small_run(tmp_path, ("draft-verify",))
    (result,) = report.results
    assert result.status is Status.FAIL and report.exit_code == 1
    assert "differ from plain greedy decoding" in result.note


def test_a_crashing_kernel_is_a_fail_line_and_the_rest_still_runs(monkeypatch, tmp_path):
    from kernels.mxfp4_moe import kernel

    def crash(*args, **kwargs):
        raise RuntimeError("planted\nlaunch failure")

    monkeypatch.setattr(kernel, "fused_moe_mxfp4", crash)
    report = _small_run(tmp_path, ("moe",))
    assert report.exit_code == 1
    triton = [r for r in report.results if r.check == "triton moe"]
    assert [r.status for r in triton] == [Status.FAIL, Status.FAIL]
    assert triton[0].note == "RuntimeError: planted launch failure" and "Traceback" in triton[0].data["traceback"]
    assert all(r.status is Status.PASS for r in report.results if r.check != "triton moe")
