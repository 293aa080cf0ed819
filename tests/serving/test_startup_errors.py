"""Invalid DSPARK configurations fail during argument resolution, before weights load."""

from __future__ import annotations

import concurrent.futures as cf
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from sglang_dspark.server_process import CPU_ENV, ServerProcess, cpu_serve_args, dspark_args
from sglang_dspark.sglang.arg_resolution import resolve_in_subprocess
from sglang_dspark.sglang.server_args import DSparkArgumentError, check_dspark_args


def patched_drafter(src: Path, dst: Path, **config_changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(config_changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def damaged_drafter(src: Path, dst: Path, damage: str) -> Path:
    """A copy of ``src`` whose weights file is truncated, lacks a tensor, or holds an int tensor."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights_path = dst / "model.safetensors"
    if damage == "truncated":
        data = weights_path.read_bytes()
        weights_path.write_bytes(data[: len(data) - 1000])
        return dst
    weights = load_file(str(weights_path))
    if damage == "missing":
        del weights["markov_head.markov_w2.weight"]
    elif damage == "mistyped":
        weights["fc.weight"] = weights["fc.weight"].to(torch.int32)
    save_file(weights, str(weights_path))
    return dst


@pytest.fixture(scope="module")
def bad_drafters(tmp_path_factory, copy_drafter) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-drafters")
    return {
        "vocab": patched_drafter(copy_drafter, root / "vocab", vocab_size=300),
        "hidden": patched_drafter(copy_drafter, root / "hidden", hidden_size=96),
        "layers": patched_drafter(copy_drafter, root / "layers", target_layer_ids=[0, 7]),
        "last-layer": patched_drafter(copy_drafter, root / "last-layer", target_layer_ids=[0, 3]),
        **{d: damaged_drafter(copy_drafter, root / d, d) for d in ("truncated", "missing", "mistyped")},
    }


def _check(target, drafter, **overrides):
    kwargs = dict(
        device="cpu",
        attention_backend=None,
        model_path=str(target),
        draft_path=str(drafter),
        block_size_flag=None,
        num_draft_tokens_flag=None,
        eagle_topk=None,
        num_steps=None,
        sps_table_path=None,
        sts_path=None,
    )
    kwargs.update(overrides)
    return check_dspark_args(**kwargs)


def test_valid_configuration_passes(tiny_target, copy_drafter):
    assert _check(tiny_target, copy_drafter).block_size == 4


@pytest.mark.parametrize(
    "overrides, flag",
    [
        (dict(block_size_flag=6), "--speculative-dspark-block-size 6"),
        (dict(eagle_topk=2), "--speculative-eagle-topk 2"),
        (dict(num_steps=3), "--speculative-num-steps 3"),
        (dict(num_draft_tokens_flag=8), "--speculative-num-draft-tokens 8"),
        (dict(attention_backend="triton"), "--attention-backend triton"),
        (dict(device="npu"), "--device npu"),
        (dict(sps_table_path="/nonexistent/sps.json"), "--speculative-dspark-sps-table-path"),
    ],
)
def test_flag_errors_name_the_flag(tiny_target, copy_drafter, overrides, flag):
    with pytest.raises(DSparkArgumentError, match=flag.replace("-", r"\-").replace(" ", " ")):
        _check(tiny_target, copy_drafter, **overrides)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("vocab", "vocab_size"),
        ("hidden", "hidden_size"),
        ("layers", "target_layer_ids"),
        ("last-layer", "include the target's last layer"),
        ("truncated", "the file is truncated or corrupt"),
        ("missing", "missing from the checkpoint: markov_head.markov_w2.weight"),
        ("mistyped", "'fc.weight' in model.safetensors has dtype I32"),
    ],
)
def test_drafter_target_mismatch(tiny_target, bad_drafters, kind, message):
    with pytest.raises(DSparkArgumentError, match=message):
        _check(tiny_target, bad_drafters[kind])


def test_sts_length_must_match_block(tiny_target, copy_drafter, tmp_path):
    from sglang_dspark.algorithm.calibration import StsCalibration

    path = tmp_path / "sts.json"
    StsCalibration(temperatures=(1.0, 1.5), ece_before=0.1, ece_after=0.05, num_samples=10, n_bins=15).to_json(path)
    with pytest.raises(DSparkArgumentError, match="2 temperatures but the block size is 4"):
        _check(tiny_target, copy_drafter, sts_path=str(path))


def startup_cases(tiny_target: Path, copy_drafter: Path, bad_drafters: dict[str, Path]) -> dict:
    """name -> (``sglang serve`` arguments, text the error must contain)."""
    base = [*cpu_serve_args(tiny_target)]
    return {
        "block-size": ([*base, *dspark_args(copy_drafter), "--speculative-dspark-block-size", "6"],
                       "--speculative-dspark-block-size 6"),
        "topk": ([*base, *dspark_args(copy_drafter), "--speculative-eagle-topk", "2"],
                 "--speculative-eagle-topk 2"),
        "vocab": ([*base, *dspark_args(bad_drafters["vocab"])], "vocab_size=300"),
        "hidden": ([*base, *dspark_args(bad_drafters["hidden"])], "hidden_size=96"),
        "layers": ([*base, *dspark_args(bad_drafters["layers"])], "target_layer_ids"),
        "truncated": ([*base, *dspark_args(bad_drafters["truncated"])], "truncated or corrupt"),
        "attention": ([*base, *dspark_args(copy_drafter), "--attention-backend", "triton"],
                      "--attention-backend triton"),
        "no-drafter": ([*base, *dspark_args()], "--speculative-draft-model-path is required"),
        "tp-size": ([*base, "--tp-size", "3"], "--tp-size 3 does not divide the model's 4 attention heads"),
        "watermark": ([*base, *dspark_args(copy_drafter), "--enable-watermark"],
                      "--enable-watermark: sglang-dspark's DSPARK does not watermark drafted positions"),
    }


# One real `sglang serve` per kind of start-up error: a flag, a drafter that does not
# fit the target, a damaged drafter checkpoint, a missing drafter, a parallel size.
# Every case (these included) also goes through SGLang's resolution in process below.
END_TO_END = ("block-size", "vocab", "truncated", "no-drafter", "tp-size")


@pytest.mark.slow
def test_argument_resolution_refuses_every_case(tiny_target, copy_drafter, bad_drafters):
    """SGLang's own resolution (plugin hooks loaded, as `sglang serve` runs it) in one process."""
    cases = startup_cases(tiny_target, copy_drafter, bad_drafters)
    valid = [*cpu_serve_args(tiny_target), *dspark_args(copy_drafter)]
    results = resolve_in_subprocess({"valid": valid, **{name: args for name, (args, _) in cases.items()}}, env=CPU_ENV)
    assert results.pop("valid").ok
    for name, (_, message) in cases.items():
        assert not results[name].ok, name
        assert message in results[name].message, (name, results[name])


@pytest.mark.slow
def test_servers_exit_before_loading_weights(tiny_target, copy_drafter, bad_drafters, server_logs):
    cases = startup_cases(tiny_target, copy_drafter, bad_drafters)

    def run(name):
        args, message = cases[name]
        env = {"SGLANG_CPU_OMP_THREADS_BIND": "0|1|0"} if name == "tp-size" else {}
        # One retry: on a loaded CI box a process once stalled in its imports for
        # 300 s before reaching argument resolution (its log held two lines).
        for attempt in range(2):
            server = ServerProcess(args, server_logs / f"startup-{name}-{attempt}.log", env=env).start()
            try:
                code = server.wait_exit(timeout=300)
                break
            except subprocess.TimeoutExpired:
                if attempt == 1:
                    raise
        return name, code, server.log_path.read_text(errors="replace"), message

    with cf.ThreadPoolExecutor(3) as ex:
        for name, code, log, message in ex.map(run, END_TO_END):
            assert code != 0, name
            assert message in log, (name, log[-2000:])
            assert "Load weight begin" not in log, name


@pytest.mark.slow
def test_forcing_sglang_where_it_cannot_serve_fails_during_resolution(tiny_target, copy_drafter):
    """SGLang's DSPARK and flashinfer_mxfp4 asked for on CPU: a one-line reason, before any weight loads."""
    from sglang_dspark.sglang.serving_choice import IMPL_ENV, MXFP4_RUNNER_ENV

    env = {**CPU_ENV, IMPL_ENV: "builtin", MXFP4_RUNNER_ENV: "builtin"}
    results = resolve_in_subprocess({
        "dspark": [*cpu_serve_args(tiny_target), *dspark_args(copy_drafter)],
        "mxfp4": [*cpu_serve_args(tiny_target), "--moe-runner-backend", "flashinfer_mxfp4"],
    }, env=env)
    assert results["dspark"].error_type == "ServingChoiceError"
    assert f"{IMPL_ENV}=builtin: SGLang's built-in DSPARK refuses --device cpu" in results["dspark"].message
    assert results["mxfp4"].error_type == "ServingChoiceError"
    assert f"{MXFP4_RUNNER_ENV}=builtin" in results["mxfp4"].message and "not on CPU" in results["mxfp4"].message


@pytest.mark.slow
def test_preflight_agrees_with_sglang_serve_on_cpu(tiny_target, copy_drafter, bad_drafters):
    """The cases run through real `sglang serve` above fail in `sglang-dspark preflight` with the same message."""
    from tests.preflight_runner import preflight_cases

    cases = startup_cases(tiny_target, copy_drafter, bad_drafters)
    valid = [*cpu_serve_args(tiny_target), *dspark_args(copy_drafter)]
    results = preflight_cases({"valid": {"argv": valid}, **{n: {"argv": cases[n][0]} for n in END_TO_END}},
                              env=CPU_ENV)
    assert results.pop("valid")["ok"]
    for name in END_TO_END:
        assert not results[name]["ok"], name
        assert cases[name][1] in results[name]["errors"][0], (name, results[name])
