"""Tensor parallelism on CPU: two scheduler ranks (gloo collectives), real server processes.

The tiny Llama target at ``--tp-size 1`` without speculation (the session's
plain server, the reference) and at ``--tp-size 2`` with DSPARK and the
copy drafter (its layers split over the two ranks); greedy output must be
identical, and each rank's drafter KV must be the half SGLang budgets. (A ``--tp-size`` that does not
divide the attention heads is a start-up case of ``test_startup_errors.py``.)
"""

from __future__ import annotations

import json

import pytest
import requests

from sglang_dspark.server_process import ServerProcess, cpu_serve_args, dspark_args, running

pytestmark = pytest.mark.slow

PROMPTS = ["Hello, my name is", "The capital of France is", "def fibonacci(n):", "Once upon a time"]
MAX_NEW_TOKENS = 16
# One OpenMP thread per rank, pinned to its own core.
# Adaptive parts off, as on the session's DSPARK server: the speculation gate and the confidence
# corrector learn from timings and acceptance between requests, so a repeated seeded request could
# get other verify lengths (another, equally distributed, output; README "sampling_seed").
TP2_ENV = {"SGLANG_CPU_OMP_THREADS_BIND": "0|1", "SGLANG_DSPARK_ADAPTIVE": "0"}


def _generate(server: ServerProcess, prompt: str) -> dict:
    r = requests.post(
        server.url + "/generate",
        json={"text": prompt, "sampling_params": {"temperature": 0, "max_new_tokens": MAX_NEW_TOKENS}},
        timeout=600,
    )
    r.raise_for_status()
    return r.json()


@pytest.fixture(scope="module")
def tp_servers(tiny_target, copy_drafter, server_logs, servers):
    """(plain at --tp-size 1: the session's plain server, DSPARK at --tp-size 2)."""
    heads = json.loads((tiny_target / "config.json").read_text())["num_attention_heads"]
    assert heads % 2 == 0, heads
    plain, _ = servers
    spec = ServerProcess(
        [*cpu_serve_args(tiny_target), *dspark_args(copy_drafter), "--tp-size", "2"],
        server_logs / "tp2-dspark.log",
        env=TP2_ENV,
    )
    with running(spec):
        yield plain, spec


def test_dspark_at_tp2_equals_plain_tp1(tp_servers):
    plain, spec = tp_servers
    accept = []
    for prompt in PROMPTS:
        ref = _generate(plain, prompt)
        out = _generate(spec, prompt)
        assert out["output_ids"] == ref["output_ids"], prompt
        assert out["meta_info"]["finish_reason"] == ref["meta_info"]["finish_reason"], prompt
        assert out["meta_info"]["spec_verify_ct"] > 0, prompt
        accept.append(out["meta_info"]["spec_accept_length"])
    # Drafts get accepted: the drafter sees the full (gathered) embedding and LM head.
    assert max(accept) > 1.0, accept
    log = spec.log_tail(100000)
    assert "TP1" in log, "the server did not start a second tensor-parallel rank"
    assert "DSPARK draft failed" not in log and "context write failed" not in log
    # The drafter's layers are split like the target's: both ranks, 2 of 4 query heads, 1 of 2 KV heads.
    assert log.count("DSPARK drafter layers split over 2 TP ranks: 2 query / 1 key-value heads per rank") == 2, log[-3000:]


def test_sampled_requests_at_tp2_follow_their_seed(tp_servers):
    """Sampling at two ranks: tokens are drawn on rank 0 and broadcast, so a seed fixes the output."""
    _, spec = tp_servers

    def sample(seed: int) -> dict:
        params = {"temperature": 0.8, "top_p": 0.9, "max_new_tokens": MAX_NEW_TOKENS, "sampling_seed": seed}
        r = requests.post(spec.url + "/generate", json={"text": "Once upon a time", "sampling_params": params}, timeout=600)
        r.raise_for_status()
        return r.json()

    first = sample(7)
    assert first["meta_info"]["spec_verify_ct"] > 0
    assert sample(7)["output_ids"] == first["output_ids"]
    assert len({tuple(sample(s)["output_ids"]) for s in (1, 2, 3)} | {tuple(first["output_ids"])}) > 1


def test_drafter_kv_per_rank_is_the_share_sglang_budgets(tp_servers, copy_drafter):
    _, spec = tp_servers
    cfg = json.loads((copy_drafter / "config.json").read_text())
    state = requests.get(spec.url + "/server_info", timeout=60).json()["internal_states"][0]["dspark_info_record"]
    layers = cfg.get("num_hidden_layers", 1)
    per_rank = 2 * layers * (cfg["num_key_value_heads"] // 2) * cfg["head_dim"] * 4  # K and V, float32
    assert state["dspark_context_bytes_per_slot"] == per_rank
    assert state["dspark_accounted_bytes_per_slot"] == per_rank
