"""The drafter's weights and KV inside SGLang's memory budget, on CPU servers with a fixed device size.

Both servers run with the test-only ``SGLANG_DSPARK_CPU_MEMORY_BUDGET_BYTES``
(:mod:`sglang_dspark.sglang.memory_budget`): each SGLang process sees a device
of ``BUDGET`` bytes whose free memory is the budget minus its live tensors, so
SGLang 0.5.23 sizes the KV pool as on a GPU:

    pool tokens = floor((free after loading - baseline * (1 - mem_fraction_static)) / bytes per token)

where the baseline is the free memory before the target's weights load. The
plain server pays ``c_t`` bytes per token (target K/V); the DSPARK server pays
``c_t + c_d`` (SGLang's DFLASH-family accounting adds the drafter's K/V, which
the worker's context pool then takes) and has the drafter's weights ``W_d``
allocated before sizing. Hence, from the plain pool ``n_p``:

    n_d = (n_p * c_t - W_d) / (c_t + c_d)

i.e. the pool shrinks by the drafter's share ``c_t / (c_t + c_d)`` after its
weights are taken out once. ``c_t``, ``c_d`` and ``W_d`` are computed here from
the configs and the checkpoint, not read from the servers.

Then ``MAX_RUNNING`` concurrent requests whose prompts and outputs nearly fill
the DSPARK pool all complete, greedy-identical to the plain server, and the
pool is back to its initial free size afterwards.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests
from safetensors import safe_open

from sglang_dspark.cpu_features import has_fast_bf16
from sglang_dspark.server_process import SLEEP_ON_IDLE, ServerProcess, dspark_args, running
from sglang_dspark.sglang.memory_budget import ENV as BUDGET_ENV
from tests.serving.test_dspark_server import _dspark_state

pytestmark = pytest.mark.slow

BUDGET = 12 * 2**20
MEM_FRACTION = 0.6
MAX_RUNNING = 8
NEW_TOKENS = 16
FILL = 0.95  # share of the DSPARK pool the load's prompts and outputs take
DTYPE_BYTES = 4  # --dtype float32, KV cache in the model dtype
# Tensors the DSPARK process holds before sizing besides the drafter's weights
# (worker and speculative state; 8,224 bytes measured with this target and
# drafter): each 1,280 bytes of them take one token off the DSPARK pool.
DRAFTER_SIDE_STATE_ALLOWANCE = 32 * 1024
# SGLang's own tensors beside the target's weights before sizing (rotary
# cos/sin cache of 2048 x 16 floats = 128 KiB, small tables): about 175 KB measured.
SGLANG_STATE_ALLOWANCE = 256 * 1024
SHARED_WITH_TARGET = ("embed_tokens.weight", "lm_head.weight")


def kv_bytes_per_token(config: dict) -> int:
    """K and V of every layer for one token: layers x kv heads x head dim x 2 x dtype size."""
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * 2 * DTYPE_BYTES


def checkpoint_bytes(directory: Path, skip: tuple[str, ...] = ()) -> int:
    """Bytes of the tensors in a checkpoint directory, except the names in ``skip``."""
    total = 0
    for path in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for name in f.keys():
                if name not in skip:
                    t = f.get_tensor(name)
                    total += t.numel() * t.element_size()
    return total


def server_info(server) -> dict:
    return requests.get(server.url + "/server_info", timeout=60).json()


@pytest.fixture(scope="module")
def budget_servers(tiny_target, copy_drafter, server_logs):
    """(plain, dspark) with the same device budget, started one after the other."""
    args = [
        "--model-path", str(tiny_target),
        "--device", "cpu",
        "--dtype", "float32",
        "--mem-fraction-static", str(MEM_FRACTION),
        "--max-running-requests", str(MAX_RUNNING),
        "--decode-log-interval", "1",
        SLEEP_ON_IDLE,
    ]
    env = {BUDGET_ENV: str(BUDGET)}
    plain = ServerProcess(args, server_logs / "budget-plain.log", env=env)
    spec = ServerProcess([*args, *dspark_args(copy_drafter)], server_logs / "budget-dspark.log", env=env)
    # Each process's budget counts only its own tensors, so the two start-ups may overlap.
    with running(plain, spec):
        yield plain, spec


def test_dspark_pool_shrinks_by_the_drafter_share(budget_servers, tiny_target, copy_drafter):
    plain, spec = budget_servers
    info_p, info_d = server_info(plain), server_info(spec)
    n_p, n_d = info_p["max_total_num_tokens"], info_d["max_total_num_tokens"]
    assert info_p["page_size"] == info_d["page_size"] == 1
    target_cfg = json.loads((tiny_target / "config.json").read_text())
    drafter_cfg = json.loads((copy_drafter / "config.json").read_text())
    c_t, c_d = kv_bytes_per_token(target_cfg), kv_bytes_per_token(drafter_cfg)
    w_t = checkpoint_bytes(tiny_target)
    w_d = checkpoint_bytes(copy_drafter, skip=SHARED_WITH_TARGET)

    # The server agrees on what the drafter costs.
    state = _dspark_state(spec)
    assert state["dspark_accounted_bytes_per_slot"] == state["dspark_context_bytes_per_slot"] == c_d
    assert state["dspark_drafter_weight_bytes"] == w_d
    # On a CPU with bf16 instructions the drafter multiplies with a bf16 copy of the LM head: it counts too.
    head_copy = target_cfg["vocab_size"] * target_cfg["hidden_size"] * 2 if has_fast_bf16() else 0
    assert state["dspark_drafter_head_copy_bytes"] == head_copy
    w_d += head_copy

    # Plain pool: the budget's static share minus the target's weights and
    # SGLang's own tables, in whole tokens.
    static = MEM_FRACTION * BUDGET
    assert (static - w_t - SGLANG_STATE_ALLOWANCE) / c_t - 1 < n_p <= (static - w_t) / c_t

    # DSPARK pool: n_p * c_t <= S_p < (n_p + 1) * c_t (floor) and
    # S_d = S_p - W_d - X with 0 <= X <= allowance, n_d = floor(S_d / (c_t + c_d)).
    expected = (n_p * c_t - w_d) / (c_t + c_d)
    lower = expected - DRAFTER_SIDE_STATE_ALLOWANCE / (c_t + c_d) - 1
    upper = expected + c_t / (c_t + c_d)
    assert lower < n_d < upper, (n_p, n_d, expected)
    # The same in ratios: the drafter's share of the KV, once its weights are out.
    share = c_t / (c_t + c_d)
    ratio = n_d / n_p
    weights_out = 1 - w_d / (n_p * c_t)
    assert ratio == pytest.approx(share * weights_out, abs=(upper - lower) / n_p)
    print(
        f"\nbudget {BUDGET} B, mem fraction {MEM_FRACTION}: plain pool {n_p} tokens x {c_t} B, "
        f"DSPARK pool {n_d} tokens x {c_t + c_d} B; ratio {ratio:.5f} = share {share:.4f} x "
        f"weights-out {weights_out:.5f} (expected {share * weights_out:.5f}); "
        f"target weights {w_t} B, drafter weights {w_d} B"
    )


def test_max_running_requests_fill_the_pool_without_oom(budget_servers, tiny_target):
    plain, spec = budget_servers
    info = server_info(spec)
    pool = info["max_total_num_tokens"]
    context = json.loads((tiny_target / "config.json").read_text())["max_position_embeddings"]
    block = int(info["speculative_num_draft_tokens"])
    # Each request: prompt + outputs + the verify reservation of 2 x (block + 1) slots.
    per_request = int(FILL * pool / MAX_RUNNING) - 2 * (block + 1)
    prompt_len = min(per_request - NEW_TOKENS, context - NEW_TOKENS - 1)
    assert prompt_len > 100, (pool, per_request)
    # Distinct prompts (no prefix sharing) that the tiny target continues in
    # short cycles, so the copy drafter gets blocks accepted and the pool fills
    # in few steps.
    prompts = [[ord("a") + i] * prompt_len for i in range(MAX_RUNNING)]

    def run(server):
        # One batched request: its prompts reach the scheduler together, so all of them
        # run at once (separate HTTP requests could arrive after the first ones finished).
        r = requests.post(
            server.url + "/generate",
            json={
                "input_ids": prompts,
                "sampling_params": {"max_new_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True},
            },
            timeout=600,
        )
        assert r.status_code == 200, r.text
        return r.json()

    references = run(plain)
    assert len(references) == MAX_RUNNING

    assert requests.post(spec.url + "/flush_cache", timeout=60).status_code == 200
    initial = _dspark_state(spec)["kv_available_tokens"]
    assert initial == pool
    log_start = len(spec.log_path.read_text(errors="replace"))
    outputs = run(spec)
    for out, ref in zip(outputs, references, strict=True):
        assert len(out["output_ids"]) == NEW_TOKENS
        assert out["output_ids"] == ref["output_ids"]

    log = spec.log_path.read_text(errors="replace")[log_start:]
    assert "Traceback" not in log and "out of memory" not in log.lower(), log[-3000:]
    peak = max(int(m) for m in re.findall(r"Decode batch.*?#token: (\d+)", log))
    running = max(int(m) for m in re.findall(r"#running-req: (\d+)", log))
    print(
        f"\nDSPARK pool {pool} tokens, {MAX_RUNNING} requests x ({prompt_len} prompt + {NEW_TOKENS} new): "
        f"peak {peak} tokens in use ({peak / pool:.1%}), {running} running at once, "
        f"retractions: {log.count('Retract requests')}"
    )
    assert running == MAX_RUNNING
    assert peak >= 0.85 * pool
    assert requests.get(spec.url + "/health_generate", timeout=60).status_code == 200
    assert requests.post(spec.url + "/flush_cache", timeout=60).status_code == 200
    assert _dspark_state(spec)["kv_available_tokens"] == initial
