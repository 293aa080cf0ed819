"""``sglang-dspark preflight``: the seed deployment's plan on a CPU machine, and each error it must catch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sglang_dspark.gpustack.backend_file import load_backend_file
from sglang_dspark.gpustack.deploy_preflight import serve_argv
from sglang_dspark.models.synthetic_v4 import write_real_shaped_v4_checkpoint
from sglang_dspark.sglang.serving_choice import IMPL_ENV
from tests.preflight_runner import preflight_cases

pytestmark = pytest.mark.slow

# The seed deployment's command (shared/seeds, GPUStack article) with SGLang 0.5.23's name for
# --cuda-graph-max-bs (the old one is refused as ambiguous: see test_backend_file.py).
SEED = ("--context-length 1000000 --trust-remote-code --tp-size 8 --ep-size 8 --moe-runner-backend flashinfer_mxfp4 "
        "--speculative-moe-runner-backend flashinfer_mxfp4 --speculative-algorithm DSPARK --speculative-eagle-topk 1 "
        "--speculative-num-steps 1 --mem-fraction-static 0.85 --cuda-graph-max-bs-decode 32 "
        "--max-running-requests 32 --disable-overlap-schedule").split()
CPU_OFF = {"SGLANG_USE_CPU_ENGINE": "0"}  # resolve as a GPU machine would, not as this CPU engine


@pytest.fixture(scope="module")
def v4(tmp_path_factory) -> Path:
    return write_real_shaped_v4_checkpoint(tmp_path_factory.mktemp("real-v4") / "DeepSeek-V4-Flash-DSpark")


def seed_argv(model: Path, **replace: str) -> list[str]:
    argv = ["--model-path", str(model), *SEED]
    for flag, value in replace.items():
        argv[argv.index(flag) + 1] = value
    return argv


@pytest.fixture(scope="module")
def damaged(v4, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("damaged-v4")
    truncated = Path(shutil.copytree(v4, root / "truncated"))
    shard = sorted(truncated.glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    no_key = Path(shutil.copytree(v4, root / "no-key"))
    cfg = json.loads((no_key / "config.json").read_text())
    del cfg["dspark_markov_rank"]
    (no_key / "config.json").write_text(json.dumps(cfg))
    configs = root / "configs-only"
    configs.mkdir()
    for f in v4.glob("*.json"):
        (configs / f.name).write_bytes(f.read_bytes())
    too_big = Path(shutil.copytree(configs, root / "too-big"))
    index = json.loads((too_big / "model.safetensors.index.json").read_text())
    index["metadata"]["total_size"] = 2 * 2**40  # 2 TiB: 256 GiB per GPU at --tp-size 8
    (too_big / "model.safetensors.index.json").write_text(json.dumps(index))
    bad_index = Path(shutil.copytree(configs, root / "bad-index"))
    (bad_index / "model.safetensors.index.json").write_text("{not json")
    return {"truncated": truncated, "no-key": no_key, "shard": shard, "configs": configs, "too-big": too_big,
            "bad-index": bad_index}


def test_seed_deployment_and_its_errors(v4, damaged):
    h20 = {"gpu": "H20", "gpus": 8}
    results = preflight_cases({
        "seed": {"argv": seed_argv(v4), **h20},
        "ours-forced": {"argv": seed_argv(v4), **h20, "env": {IMPL_ENV: "sglang-dspark"}},
        "tp3": {"argv": seed_argv(v4, **{"--tp-size": "3"}), **h20},
        "ep7": {"argv": seed_argv(v4, **{"--ep-size": "7"}), **h20},
        "topk2": {"argv": seed_argv(v4, **{"--speculative-eagle-topk": "2"}), **h20},
        "truncated": {"argv": seed_argv(damaged["truncated"]), **h20},
        "no-key": {"argv": seed_argv(damaged["no-key"]), **h20},
        "four-gpus": {"argv": seed_argv(v4), "gpu": "H20", "gpus": 4},
        "old-flag": {"argv": [w.replace("-bs-decode", "-bs") for w in seed_argv(v4)], **h20},
        "a100": {"argv": seed_argv(v4), "gpu": "A100", "gpus": 8},
        "configs-only": {"argv": seed_argv(damaged["configs"]), **h20},
        "too-big": {"argv": seed_argv(damaged["too-big"]), **h20},
        "bad-index": {"argv": seed_argv(damaged["bad-index"]), **h20},
    }, env=CPU_OFF)
    seed = results.pop("seed")
    assert seed["ok"], seed["errors"]
    plan = "\n".join(seed["plan"])
    assert "DSPARK is served by SGLang's built-in implementation" in plan
    assert "flashinfer_mxfp4 is served by SGLang's built-in implementation: SGLang's FlashInfer MXFP4 methods serve SM90" in plan
    assert "block size 5, taps target layers [40, 41, 42], 3 drafter layer(s)" in plan
    assert "8 of 64 attention heads per rank; 32 of 256 routed experts per rank" in plan
    assert "attention backend: dsv4" in plan
    assert "memory per GPU (estimate): weights 0.0 GiB, KV pool 81.6 GiB of 96 GiB x --mem-fraction-static 0.85" in plan
    configs_only = results.pop("configs-only")
    assert configs_only["ok"], configs_only["errors"]
    assert "configs only here (7 shard(s) listed" in configs_only["plan"][0]
    expected = {
        "ours-forced": f"{IMPL_ENV}=sglang-dspark: sglang-dspark has no DeepSeek-V4 drafter worker",
        "tp3": "--tp-size 3 does not divide the model's 64 attention heads",
        "ep7": "--ep-size 7 must divide --tp-size 8",
        "topk2": "--speculative-eagle-topk 2: DSPARK drafts one chain per request",
        "truncated": f"{damaged['shard'].name} is truncated",
        "no-key": "config lacks ['dspark_markov_rank']",
        "four-gpus": "--tp-size 8 x --pp-size 1 needs 8 GPUs; --gpus 4 given",
        "old-flag": "ambiguous option: --cuda-graph-max-bs",
        "too-big": "the weights alone need about 256.0 GiB per GPU",
        "bad-index": "model.safetensors.index.json is not a JSON object with a weight_map",
    }
    for name, text in expected.items():
        assert not results[name]["ok"], name
        assert len(results[name]["errors"]) == 1 and text in results[name]["errors"][0], (name, results[name])
    # On SM80 SGLang's flashinfer_mxfp4 refuses: ours (Triton) would serve, and the plan says so.
    assert any("flashinfer_mxfp4 is served by sglang-dspark: SGLang's flashinfer_mxfp4 refuses SM80" in line
               for line in results["a100"]["plan"]), results["a100"]


def test_shipped_gpustack_template_passes_preflight(v4):
    """What `sglang-dspark gpustack deploy` creates: the version's run command plus the template's parameters."""
    f = load_backend_file()
    argv = serve_argv(f.version, f.model, v4)
    result = preflight_cases({"template": {"argv": argv, "gpu": "H20", "gpus": 8}}, env=CPU_OFF)["template"]
    assert result["ok"], result["errors"]


def test_cli_prints_the_plan_and_exits_by_it(v4):
    cli = [sys.executable, "-m", "sglang_dspark.cli", "preflight", "--gpu", "H20", "--gpus", "8", "--"]
    env = {**os.environ, **CPU_OFF}
    ok = subprocess.run([*cli, *seed_argv(v4)], capture_output=True, text=True, timeout=300, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr[-3000:]
    assert "preflight: the plan serves" in ok.stdout
    bad = subprocess.run([*cli, *seed_argv(v4, **{"--tp-size": "3"})], capture_output=True, text=True,
                         timeout=300, env=env)
    assert bad.returncode == 1 and "ERROR ParallelArgumentError: --tp-size 3" in bad.stdout
    usage = subprocess.run([*cli[:-1], "--gpu", "H20"], capture_output=True, text=True, timeout=300, env=env)
    assert usage.returncode == 2
