"""Smoke test: ``python -m bench.serve_ab`` end to end on the smallest CPU scenario.

Two real servers (plain decoding and DSPARK with the copy drafter on the
tiny target) plus two baselines that cannot run on a CPU, reported as such.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.plots import PLOT_FILES
from bench.report import cost_per_million_tokens
from sglang_dspark.copy_drafter import copy_drafter_config, write_copy_drafter
from sglang_dspark.train.tiny_target import make_tiny_target

REPO = Path(__file__).resolve().parents[2]
PRICE = 2.5
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve-ab")
    target = make_tiny_target(root / "target", seed=0)
    drafter = write_copy_drafter(root / "drafter", copy_drafter_config(target))
    out = root / "out"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.serve_ab", "--model", str(target), "--drafter", str(drafter),
         "--scenario", "smoke-cpu", "--baselines", "none,eagle,builtin-dspark",
         "--price-per-gpu-hour", str(PRICE), "--out", str(out)],
        cwd=REPO, env={**env, "SGLANG_USE_CPU_ENGINE": "1"}, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


@pytest.fixture(scope="module")
def report(run_dir) -> dict:
    return json.loads((run_dir / "report.json").read_text())


def test_every_requested_server_is_reported_with_a_status(report):
    servers = report["servers"]
    assert list(servers) == ["none", "dspark", "eagle", "builtin-dspark"]
    assert servers["none"]["status"] == "ok", servers["none"].get("reason")
    assert servers["dspark"]["status"] == "ok", servers["dspark"].get("reason")
    for name in ("eagle", "builtin-dspark"):
        assert servers[name]["status"] == "unavailable" and servers[name]["reason"]
        assert servers[name]["levels"] == []


def test_figures_are_internally_consistent(report):
    scenario = report["scenario"]
    for name in ("none", "dspark"):
        levels = report["servers"][name]["levels"]
        assert [lvl["concurrency"] for lvl in levels] == scenario["concurrency"]
        for lvl in levels:
            b = lvl["bench"]
            assert b["completed"] == lvl["num_prompts"]
            assert b["total_output_tokens"] == lvl["num_prompts"] * scenario["output_len"]
            assert b["total_output_tokens"] / b["duration"] == pytest.approx(b["output_throughput"], rel=1e-6)
            assert lvl["cost_per_million_output_tokens"] == pytest.approx(
                cost_per_million_tokens(PRICE, b["output_throughput"]))
            assert lvl["cost_per_million_output_tokens"] == pytest.approx(
                PRICE * 1e6 / (3600 * b["total_output_tokens"] / b["duration"]))
            assert b["median_ttft_ms"] <= b["p95_ttft_ms"] <= b["p99_ttft_ms"]
            assert b["median_itl_ms"] <= b["p95_itl_ms"] <= b["p99_itl_ms"]
            assert lvl["per_user_tok_s"] == pytest.approx(1000 / b["mean_tpot_ms"])
    none = {lvl["concurrency"]: lvl for lvl in report["servers"]["none"]["levels"]}
    for lvl in report["servers"]["dspark"]["levels"]:
        ref = none[lvl["concurrency"]]["bench"]["output_throughput"]
        assert lvl["speedup_vs_none"] == pytest.approx(lvl["bench"]["output_throughput"] / ref)


def test_dspark_worker_figures(report):
    for lvl in report["servers"]["dspark"]["levels"]:
        d = lvl["dspark"]
        assert d is not None
        assert 1.0 <= d["mean_accept_length"] <= 5.0  # the copy drafter's block is 4
        probs = d["position_acceptance"]
        assert probs and all(0.0 <= p <= 1.0 for p in probs)
        assert probs == sorted(probs, reverse=True)
        # Mean committed length = 1 + sum over positions of P(position accepted).
        assert d["mean_accept_length"] == pytest.approx(1 + sum(probs), rel=1e-6)
        assert sum(c for _, c in d["verify_tokens_histogram"]) == d["verify_steps"] > 0
        share = d["scheduling_overhead_share"]
        assert share is None or 0.0 <= share < 1.0


def test_table_and_plots_exist(run_dir, report):
    table = (run_dir / "table.md").read_text()
    for server in report["servers"].values():
        assert server["label"] in table
    assert table.count("unavailable:") == 2
    for lvl in report["servers"]["dspark"]["levels"]:
        assert f"{lvl['bench']['output_throughput']:.2f}" in table
    for name in PLOT_FILES.values():
        assert (run_dir / name).read_bytes()[:8] == PNG_MAGIC
