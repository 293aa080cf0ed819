"""sglang-dspark's step metrics around SGLang's DSPARK worker (``--enable-metrics``)."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import torch

from sglang_dspark.sglang import plugin
from sglang_dspark.sglang.builtin_worker_metrics import StepObserver, with_step_metrics


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[list[int], int | None]] = []

    def observe_accepts(self, accept_lens, verified_tokens) -> None:
        self.calls.append((accept_lens, verified_tokens))


def test_observer_reads_decode_results_and_skips_prefill():
    rec = _Recorder()
    obs = StepObserver(rec)
    obs.observe(SimpleNamespace(accept_lens=torch.tensor([3, 1], dtype=torch.int32),
                                cap_lens=torch.tensor([4, 2], dtype=torch.int32)))
    obs.observe(SimpleNamespace(accept_lens=torch.empty(0, dtype=torch.int32)))  # idle step
    obs.observe(SimpleNamespace(next_token_ids=torch.tensor([5])))  # prefill result: no accept_lens
    obs.observe(SimpleNamespace(accept_lens=torch.tensor([2]), cap_lens=None))
    assert rec.calls == [([3, 1], 6), ([2], None)]


class _FakeSGLangWorker:
    def __init__(self, server_args, gpu_id, nccl_port, target_worker) -> None:
        self.server_args, self.gpu_id = server_args, gpu_id

    def forward_batch_generation(self, batch, on_publish=None, grammar_barrier=None):
        return SimpleNamespace(accept_lens=torch.tensor(batch), cap_lens=None, marker="sglang's result")


def test_wrapped_worker_returns_sglang_results_unchanged(monkeypatch):
    import sglang_dspark.sglang.metrics as metrics

    rec = _Recorder()
    monkeypatch.setattr(metrics, "DSparkMetrics", lambda: rec)
    cls = with_step_metrics(_FakeSGLangWorker)
    assert issubclass(cls, _FakeSGLangWorker) and cls.__name__ == "Observed_FakeSGLangWorker"
    worker = cls("args", 0, 1234, target_worker=None)
    assert worker.gpu_id == 0
    result = worker.forward_batch_generation([4, 1], on_publish=None)
    assert result.marker == "sglang's result"
    assert rec.calls == [([4, 1], None)]


def test_create_worker_wraps_sglang_worker_only_with_metrics(monkeypatch, tmp_path, tiny_target):
    import json

    monkeypatch.delenv("SGLANG_DSPARK_IMPL", raising=False)
    v4_drafter_dir = tmp_path / "v4"
    v4_drafter_dir.mkdir()
    (v4_drafter_dir / "config.json").write_text(json.dumps({"architectures": ["DeepseekV4ForCausalLM"], "dspark_block_size": 5}))
    from sglang.srt.server_args import prepare_server_args
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    base = ["--model-path", str(tiny_target), "--device", "cuda", "--speculative-algorithm", "DSPARK",
            "--speculative-draft-model-path", str(v4_drafter_dir)]
    orig = lambda algo, server_args: _FakeSGLangWorker  # noqa: E731
    assert plugin._create_worker(orig, SpeculativeAlgorithm.DSPARK, prepare_server_args(base)) is _FakeSGLangWorker
    wrapped = plugin._create_worker(orig, SpeculativeAlgorithm.DSPARK, prepare_server_args([*base, "--enable-metrics"]))
    assert issubclass(wrapped, _FakeSGLangWorker) and wrapped is not _FakeSGLangWorker


_EXPORT = """
import torch
from types import SimpleNamespace
from prometheus_client import generate_latest
from sglang_dspark.sglang.builtin_worker_metrics import StepObserver
from sglang_dspark.sglang.metrics import DSparkMetrics
obs = StepObserver(DSparkMetrics())
obs.observe(SimpleNamespace(accept_lens=torch.tensor([3, 1]), cap_lens=torch.tensor([4, 4])))
print(generate_latest().decode())
"""


def test_observed_lengths_reach_prometheus():
    out = subprocess.run([sys.executable, "-c", _EXPORT], capture_output=True, text=True, timeout=120, check=True).stdout
    lines = dict(line.rsplit(" ", 1) for line in out.splitlines() if line and not line.startswith("#"))
    assert float(lines["sglang_dspark:accept_length_count"]) == 2
    assert float(lines["sglang_dspark:accept_length_sum"]) == 4
    assert float(lines["sglang_dspark:verify_tokens_per_step_sum"]) == 8
