"""``--moe-runner-backend flashinfer_mxfp4`` on a real CPU server: MXFP4 experts through sglang-dspark's runner.

The same tiny Qwen3-MoE is served twice side by side: with MXFP4 experts and
``--moe-runner-backend flashinfer_mxfp4``, and with the dequantised float32
experts and SGLang's default runner. Greedy outputs must be token-identical.
"""

from __future__ import annotations

import pytest
import requests

from sglang_dspark.models.tiny_moe import write_tiny_moe_pair
from sglang_dspark.server_process import ServerProcess, cpu_serve_args

pytestmark = pytest.mark.slow

PROMPTS = ["Hello, my name is", "def f(x):", "1, 2, 3,", "Dear Sir or Madam,"]
RUNNER = ["--moe-runner-backend", "flashinfer_mxfp4", "--speculative-moe-runner-backend", "flashinfer_mxfp4"]


@pytest.fixture(scope="module")
def moe_servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-moe")
    quantised, dequantised = write_tiny_moe_pair(root)
    ours = ServerProcess([*cpu_serve_args(quantised), *RUNNER], root / "mxfp4.log").start()
    ref = ServerProcess(cpu_serve_args(dequantised), root / "dequantised.log").start()
    try:
        ours.wait_ready()
        ref.wait_ready()
        yield ours, ref
    finally:
        ours.stop()
        ref.stop()


def greedy(server: ServerProcess, prompt: str, n: int = 16) -> list[int]:
    body = {"text": prompt, "sampling_params": {"temperature": 0.0, "max_new_tokens": n, "ignore_eos": True}}
    reply = requests.post(server.url + "/generate", json=body, timeout=300)
    reply.raise_for_status()
    return reply.json()["output_ids"]


def test_mxfp4_runner_output_equals_dequantised_reference(moe_servers) -> None:
    ours, ref = moe_servers
    for prompt in PROMPTS:
        assert greedy(ours, prompt) == greedy(ref, prompt), prompt
    log = ours.log_path.read_text(errors="replace")
    assert "MXFP4 MoE: impl='auto' uses torch" in log, "the MoE layers did not run through sglang-dspark's runner"
    assert "quant=mxfp4" in log


def test_batched_requests_match_too(moe_servers) -> None:
    import concurrent.futures as cf

    ours, ref = moe_servers
    with cf.ThreadPoolExecutor(len(PROMPTS)) as pool:
        got = list(pool.map(lambda p: greedy(ours, p, 8), PROMPTS))
    assert got == [greedy(ref, p, 8) for p in PROMPTS]
