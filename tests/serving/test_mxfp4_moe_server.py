"""``--moe-runner-backend flashinfer_mxfp4`` on real CPU servers: MXFP4 experts through sglang-dspark's runner.

The same tiny Qwen3-MoE is served with MXFP4 experts and ``--moe-runner-backend
flashinfer_mxfp4``, and with the dequantised float32 experts and SGLang's
default runner. Greedy outputs must be token-identical and the logprobs equal
within float32 tolerance, at world size 1 and at two ranks: ``--tp-size 2
--ep-size 2`` (each rank holds 4 of the 8 experts) and ``--tp-size 2`` (each
rank holds half of every expert's intermediate columns).

The experts' intermediate size is 96 so that the two-rank servers also load
through SGLang's CPU padding (it rounds the intermediate size up to 128 for
two ranks): ``--tp-size 2`` rank 1 holds 32 real and 32 zero columns.
"""

from __future__ import annotations

import concurrent.futures as cf

import pytest
import requests

from sglang_dspark.models.tiny_moe import TinyMoeSpec, write_tiny_moe_pair
from sglang_dspark.server_process import ServerProcess, cpu_serve_args, running

pytestmark = pytest.mark.slow

PROMPTS = ["Hello, my name is", "def f(x):", "1, 2, 3,", "Dear Sir or Madam,"]
RUNNER = ["--moe-runner-backend", "flashinfer_mxfp4", "--speculative-moe-runner-backend", "flashinfer_mxfp4"]
SPEC = TinyMoeSpec(moe_intermediate_size=96)
TWO_RANKS = {"SGLANG_CPU_OMP_THREADS_BIND": "0|1"}  # one OpenMP thread per rank, own core
LOGPROB_ATOL = 2e-3


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return write_tiny_moe_pair(tmp_path_factory.mktemp("tiny-moe"), SPEC)


@pytest.fixture(scope="module")
def moe_servers(checkpoints, tmp_path_factory):
    quantised, dequantised = checkpoints
    logs = tmp_path_factory.mktemp("tiny-moe-logs")
    ours = ServerProcess([*cpu_serve_args(quantised), *RUNNER], logs / "mxfp4.log")
    ref = ServerProcess(cpu_serve_args(dequantised), logs / "dequantised.log")
    with running(ours, ref):
        yield ours, ref


@pytest.fixture(scope="module", params=[("2", "2"), ("2", "1")], ids=["tp2-ep2", "tp2-ep1"])
def two_rank_server(request, checkpoints, tmp_path_factory):
    tp, ep = request.param
    quantised, _ = checkpoints
    log = tmp_path_factory.mktemp("tiny-moe-ranks") / f"tp{tp}-ep{ep}.log"
    server = ServerProcess([*cpu_serve_args(quantised), *RUNNER, "--tp-size", tp, "--ep-size", ep], log, env=TWO_RANKS)
    with running(server):
        yield server


def generate(server: ServerProcess, prompt: str, n: int = 16) -> dict:
    body = {
        "text": prompt,
        "sampling_params": {"temperature": 0.0, "max_new_tokens": n, "ignore_eos": True},
        "return_logprob": True,
    }
    reply = requests.post(server.url + "/generate", json=body, timeout=300)
    reply.raise_for_status()
    return reply.json()


def greedy(server: ServerProcess, prompt: str, n: int = 16) -> list[int]:
    return generate(server, prompt, n)["output_ids"]


def logprobs(out: dict) -> list[float]:
    return [entry[0] for entry in out["meta_info"]["output_token_logprobs"]]


def test_mxfp4_runner_output_equals_dequantised_reference(moe_servers) -> None:
    ours, ref = moe_servers
    for prompt in PROMPTS:
        got, want = generate(ours, prompt), generate(ref, prompt)
        assert got["output_ids"] == want["output_ids"], prompt
        assert logprobs(got) == pytest.approx(logprobs(want), abs=LOGPROB_ATOL), prompt
    log = ours.log_path.read_text(errors="replace")
    assert "MXFP4 MoE: impl='auto' uses torch" in log, "the MoE layers did not run through sglang-dspark's runner"
    assert "flashinfer_mxfp4 is served by sglang-dspark: tested on CPU (torch)" in log
    assert "quant=mxfp4" in log


def test_batched_requests_match_too(moe_servers) -> None:
    ours, ref = moe_servers
    with cf.ThreadPoolExecutor(len(PROMPTS)) as pool:
        got = list(pool.map(lambda p: greedy(ours, p, 8), PROMPTS))
    assert got == [greedy(ref, p, 8) for p in PROMPTS]


def test_two_ranks_equal_world_size_one_and_the_dequantised_reference(two_rank_server, moe_servers) -> None:
    ours, ref = moe_servers
    for prompt in PROMPTS:
        got, single, want = generate(two_rank_server, prompt), generate(ours, prompt), generate(ref, prompt)
        assert got["output_ids"] == single["output_ids"] == want["output_ids"], prompt
        assert logprobs(got) == pytest.approx(logprobs(want), abs=LOGPROB_ATOL), prompt
    with cf.ThreadPoolExecutor(len(PROMPTS)) as pool:
        batched = list(pool.map(lambda p: greedy(two_rank_server, p, 8), PROMPTS))
    assert batched == [greedy(ref, p, 8) for p in PROMPTS]
    log = two_rank_server.log_path.read_text(errors="replace")
    assert "TP1" in log, "the server did not start a second rank"
    assert "MXFP4 MoE: impl='auto' uses torch" in log
