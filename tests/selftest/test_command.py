"""``sglang-dspark selftest --device cpu --quick``: the CPU subset end to end, as ``make test`` runs it."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from sglang_dspark import cli
from sglang_dspark.selftest.report import JSON_NAME, PNG_NAME, TEXT_NAME

pytestmark = pytest.mark.slow  # trains the tiny drafter for a few steps


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("selftest-out")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(["selftest", "--device", "cpu", "--quick", "--out", str(out), "--no-progress"])
    return code, stdout.getvalue(), out


def _lines(text: str, check: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(check + " ")]


def test_cpu_subset_passes_every_check(quick_run):
    code, text, _ = quick_run
    assert code == 0, text
    assert "selftest PASSED" in text
    assert "FAIL" not in text
    for check in ("mxfp4 dequant", "triton moe", "dequant+gemm", "draft-verify", "trainer step"):
        lines = _lines(text, check)
        assert lines and all(" PASS " in line for line in lines), (check, text)
    # DeepSeek-V4-Flash's expert shapes, not a toy layer.
    assert "hidden 4096, intermediate 2048, 256 experts, top-6, SwiGLU limit 10" in text
    (skip,) = _lines(text, "flashinfer moe")
    assert " SKIP " in skip and "CUDA" in skip  # skipped, with the reason


def test_writes_json_text_and_png(quick_run):
    _, text, out = quick_run
    report = json.loads((out / JSON_NAME).read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert report["passed"] is True and report["exit_code"] == 0
    assert report["moe_shape"] == {"hidden": 4096, "intermediate": 2048, "experts": 256, "top_k": 6,
                                   "swiglu_limit": 10.0}
    assert report["plan"]["tokens"] == [1] and report["plan"]["num_experts"] == 8
    triton = [r for r in report["results"] if r["check"] == "triton moe"]
    assert triton and triton[0]["error"] <= triton[0]["bound"] == 1e-4
    assert triton[0]["timing"]["weight_bytes"] == 6 * 3 * 4096 * 2048 * 17 // 32
    dv = next(r for r in report["results"] if r["check"] == "draft-verify")
    assert dv["data"]["device_outputs"] == dv["data"]["cpu_outputs"]
    assert dv["data"]["mean_committed_per_step"] > 1.0
    trainer = next(r for r in report["results"] if r["check"] == "trainer step")
    assert len(trainer["data"]["step_ms"]) == 6 and trainer["data"]["median_step_ms"] > 0
    assert (out / TEXT_NAME).read_text().strip() in text
    assert (out / PNG_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cuda_without_a_gpu_is_a_usage_error(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert cli.main(["selftest", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_unknown_check_group_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["selftest", "--only", "moe,nope"])
    assert exc.value.code == 2
    assert "choose from moe, flashinfer, draft-verify, trainer" in capsys.readouterr().err
