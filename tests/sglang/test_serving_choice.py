"""Who serves each path (``serving_choice``), and the plugin hooks that follow it."""

from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from sglang_dspark.sglang.serving_choice import (
    IMPL_ENV,
    MXFP4_RUNNER_ENV,
    OURS,
    SGLANG,
    V4_DRAFTER,
    ServingChoice,
    ServingChoiceError,
    announce,
    choose_dspark,
    choose_mxfp4,
    drafter_architecture,
    requested,
)


@pytest.mark.parametrize(
    "device, arch, impl",
    [
        ("cpu", "LlamaDSparkModel", OURS),
        ("cpu", "Qwen3DSparkModel", OURS),
        ("cuda", V4_DRAFTER, SGLANG),
        ("cuda:0", "Qwen3DSparkModel", SGLANG),
        ("cuda", None, SGLANG),  # a hub id: nothing to read, SGLang decides
        ("cuda", "LlamaDSparkModel", OURS),  # nothing else can serve it
        ("npu", V4_DRAFTER, SGLANG),
    ],
)
def test_dspark_defaults(device, arch, impl):
    choice = choose_dspark(device=device, drafter_arch=arch, asked=None)
    assert choice.impl == impl
    assert choice.reason and choice.path == "DSPARK"


def test_dspark_requests_both_ways_and_where_they_cannot_serve():
    assert choose_dspark(device="cuda", drafter_arch="Qwen3DSparkModel", asked=OURS).impl == OURS
    assert choose_dspark(device="cuda", drafter_arch="LlamaDSparkModel", asked=SGLANG).impl == SGLANG
    with pytest.raises(ServingChoiceError, match=f"{IMPL_ENV}=sglang-dspark: sglang-dspark has no DeepSeek-V4"):
        choose_dspark(device="cuda", drafter_arch=V4_DRAFTER, asked=OURS)
    with pytest.raises(ServingChoiceError, match="refuses --device cpu"):
        choose_dspark(device="cpu", drafter_arch="LlamaDSparkModel", asked=SGLANG)


@pytest.mark.parametrize(
    "device, sm, impl",
    [("cuda", (9, 0), SGLANG), ("cuda", (10, 0), SGLANG), ("cuda", (12, 0), SGLANG),
     ("cuda", (8, 0), OURS), ("cuda", (8, 9), OURS), ("cuda", None, SGLANG), ("cpu", None, OURS)],
)
def test_mxfp4_defaults(device, sm, impl):
    assert choose_mxfp4(device=device, sm=sm, asked=None).impl == impl


def test_mxfp4_requests():
    assert choose_mxfp4(device="cuda", sm=(9, 0), asked=OURS).impl == OURS
    assert choose_mxfp4(device="cuda", sm=(9, 0), asked=SGLANG).impl == SGLANG
    with pytest.raises(ServingChoiceError, match=f"{MXFP4_RUNNER_ENV}=builtin: .* not on CPU"):
        choose_mxfp4(device="cpu", sm=None, asked=SGLANG)
    with pytest.raises(ServingChoiceError, match="not on SM89"):
        choose_mxfp4(device="cuda", sm=(8, 9), asked=SGLANG)


def test_env_values():
    assert requested(IMPL_ENV, {}) is None
    assert requested(IMPL_ENV, {IMPL_ENV: "auto"}) is None
    assert requested(IMPL_ENV, {IMPL_ENV: " Sglang-Dspark "}) == OURS
    assert requested(IMPL_ENV, {IMPL_ENV: "builtin"}) == SGLANG
    with pytest.raises(ServingChoiceError, match=f"{IMPL_ENV}='yes'"):
        requested(IMPL_ENV, {IMPL_ENV: "yes"})


def test_cpu_engine_fact():
    from sglang_dspark.sglang.serving_choice import cpu_engine_enabled

    assert cpu_engine_enabled({"SGLANG_USE_CPU_ENGINE": "1"}) and cpu_engine_enabled({"SGLANG_USE_CPU_ENGINE": "True"})
    assert not cpu_engine_enabled({}) and not cpu_engine_enabled({"SGLANG_USE_CPU_ENGINE": "0"})


def test_drafter_architecture_of_configs():
    assert drafter_architecture({"architectures": ["DeepseekV4ForCausalLM"], "dspark_block_size": 5}) == V4_DRAFTER
    assert drafter_architecture({"architectures": ["LlamaDSparkModel"]}) == "LlamaDSparkModel"
    assert drafter_architecture({}) is None


def test_start_up_line_is_logged_once(caplog):
    choice = ServingChoice("DSPARK", OURS, "a reason only this test gives")
    with caplog.at_level(logging.WARNING, logger="sglang_dspark"):
        announce(choice)
        announce(choice)
    lines = [r.getMessage() for r in caplog.records if "a reason only this test gives" in r.getMessage()]
    assert lines == ["DSPARK is served by sglang-dspark: a reason only this test gives"]
    with pytest.raises(ValueError):
        ServingChoice("DSPARK", "someone", "x")


# ------------------------------------------------------------------ the plugin's hooks

def _raw_server_args(argv: list[str]):
    from sglang.srt.server_args import prepare_server_args

    return prepare_server_args(argv)


@pytest.fixture
def v4_drafter(tmp_path) -> Path:
    d = tmp_path / "v4"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["DeepseekV4ForCausalLM"], "dspark_block_size": 5}))
    return d


def test_create_worker_follows_the_choice(monkeypatch, tiny_target, copy_drafter, v4_drafter):
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    from sglang_dspark.sglang import plugin
    from sglang_dspark.sglang.worker import DSparkWorker

    monkeypatch.delenv(IMPL_ENV, raising=False)

    def orig(algo, server_args):
        return "SGLang's worker"

    ours = _raw_server_args(["--model-path", str(tiny_target), "--device", "cpu",
                             "--speculative-algorithm", "DSPARK", "--speculative-draft-model-path", str(copy_drafter)])
    v4 = _raw_server_args(["--model-path", str(tiny_target), "--device", "cuda",
                           "--speculative-algorithm", "DSPARK", "--speculative-draft-model-path", str(v4_drafter)])
    assert plugin._create_worker(orig, SpeculativeAlgorithm.DSPARK, ours) is DSparkWorker
    assert plugin._create_worker(orig, SpeculativeAlgorithm.DSPARK, v4) == "SGLang's worker"
    monkeypatch.setenv(IMPL_ENV, "builtin")
    ours_on_cuda = _raw_server_args(["--model-path", str(tiny_target), "--device", "cuda",
                                     "--speculative-algorithm", "DSPARK", "--speculative-draft-model-path",
                                     str(copy_drafter)])
    assert plugin._create_worker(orig, SpeculativeAlgorithm.DSPARK, ours_on_cuda) == "SGLang's worker"


_CHOICE_IN_A_FRESH_PROCESS = """
import pickle, sys
from sglang_dspark.sglang.plugin import dspark_choice
print(dspark_choice(pickle.load(open(sys.argv[1], "rb"))).impl)
"""


def test_a_scheduler_process_decides_from_the_serialized_arguments(tmp_path, tiny_target, copy_drafter, v4_drafter):
    """The choice is a function of the server arguments a scheduler receives (pickled, as SGLang spawns it)."""
    cases = {
        "deepspec-cpu": ["--device", "cpu", "--speculative-draft-model-path", str(copy_drafter)],
        "v4-cuda": ["--device", "cuda", "--speculative-draft-model-path", str(v4_drafter)],
    }
    got = {}
    for name, extra in cases.items():
        path = tmp_path / f"{name}.pkl"
        args = _raw_server_args(["--model-path", str(tiny_target), "--speculative-algorithm", "DSPARK", *extra])
        path.write_bytes(pickle.dumps(args))
        proc = subprocess.run([sys.executable, "-c", _CHOICE_IN_A_FRESH_PROCESS, str(path)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got[name] = proc.stdout.strip().splitlines()[-1]
    assert got == {"deepspec-cpu": OURS, "v4-cuda": SGLANG}
