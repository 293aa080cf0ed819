"""Unit checks of the side-by-side benchmark's pieces (no server)."""

from __future__ import annotations

import json

import pytest

from bench.baselines import BASELINES, PlanInputs, parse_baselines, plan
from bench.report import cost_per_million_tokens, format_table, level_row
from bench.scenario import Scenario, chat_prompts, load_scenario, scenario_names
from bench.server_metrics import (
    Histogram,
    Snapshot,
    dspark_figures,
    parse_histograms,
    position_acceptance,
    position_acceptance_from_record,
)

EXPOSITION = """\
# HELP sglang_dspark:accept_length Tokens committed per request per verify step.
# TYPE sglang_dspark:accept_length histogram
sglang_dspark:accept_length_bucket{le="1.0"} 2.0
sglang_dspark:accept_length_bucket{le="2.0"} 5.0
sglang_dspark:accept_length_bucket{le="3.0"} 8.0
sglang_dspark:accept_length_bucket{le="4.0"} 9.0
sglang_dspark:accept_length_bucket{le="5.0"} 10.0
sglang_dspark:accept_length_bucket{le="+Inf"} 10.0
sglang_dspark:accept_length_count 10.0
sglang_dspark:accept_length_sum 26.0
# HELP sglang_dspark:overhead_seconds Overhead.
# TYPE sglang_dspark:overhead_seconds histogram
sglang_dspark:overhead_seconds_bucket{le="0.01"} 10.0
sglang_dspark:overhead_seconds_bucket{le="+Inf"} 10.0
sglang_dspark:overhead_seconds_count 10.0
sglang_dspark:overhead_seconds_sum 0.05
# HELP sglang_dspark:step_seconds Step.
# TYPE sglang_dspark:step_seconds histogram
sglang_dspark:step_seconds_bucket{le="1.0"} 10.0
sglang_dspark:step_seconds_bucket{le="+Inf"} 10.0
sglang_dspark:step_seconds_count 10.0
sglang_dspark:step_seconds_sum 2.5
# HELP sglang_dspark:verify_tokens_per_step Verify.
# TYPE sglang_dspark:verify_tokens_per_step histogram
sglang_dspark:verify_tokens_per_step_bucket{le="4.0"} 4.0
sglang_dspark:verify_tokens_per_step_bucket{le="8.0"} 10.0
sglang_dspark:verify_tokens_per_step_bucket{le="+Inf"} 10.0
sglang_dspark:verify_tokens_per_step_count 10.0
sglang_dspark:verify_tokens_per_step_sum 52.0
# TYPE sglang:num_requests_total counter
sglang:num_requests_total 3.0
"""


def test_histograms_parse_and_difference():
    hists = parse_histograms(EXPOSITION)
    assert set(hists) == {"accept_length", "overhead_seconds", "step_seconds", "verify_tokens_per_step"}
    accept = hists["accept_length"]
    assert accept.count == 10 and accept.mean == pytest.approx(2.6)
    # P(position j accepted) = P(committed >= j + 1): 8/10, 5/10, 2/10, 1/10 steps committed > 1..4.
    assert position_acceptance(accept) == pytest.approx([0.8, 0.5, 0.2, 0.1])
    before = Histogram(total=6.0, count=5.0, buckets=((1.0, 2.0), (2.0, 5.0), (3.0, 5.0), (4.0, 5.0), (5.0, 5.0)))
    delta = accept.minus(before)
    assert delta.count == 5 and delta.total == 20.0
    assert position_acceptance(delta) == pytest.approx([1.0, 1.0, 0.4, 0.2])


def test_dspark_figures_overhead_share_and_record_fallback():
    after = Snapshot(parse_histograms(EXPOSITION), {"dspark_accept_histogram": [0, 2, 3, 3, 1, 1]})
    figures = dspark_figures(Snapshot(), after)
    assert figures["scheduling_overhead_share"] == pytest.approx(0.05 / 2.5)
    assert figures["mean_verify_tokens_per_step"] == pytest.approx(5.2)
    assert sum(c for _, c in figures["verify_tokens_histogram"]) == figures["verify_steps"] == 10
    # Info record alone (server without --enable-metrics) gives the same acceptance.
    only_record = dspark_figures(Snapshot(), Snapshot({}, after.info))
    assert only_record["mean_accept_length"] == pytest.approx(2.6)
    assert only_record["position_acceptance"] == pytest.approx(figures["position_acceptance"])
    assert only_record["scheduling_overhead_share"] is None and only_record["overhead_missing"]
    assert position_acceptance_from_record([0, 0, 4]) == [1.0]
    assert dspark_figures(Snapshot(), Snapshot()) is None


def test_dspark_figures_plain_step_share_is_an_interval_difference():
    gate = {"1": {"winner": "plain", "speculate_tokens_per_second": 3.0, "plain_tokens_per_second": 5.0}}
    before = Snapshot({}, {"dspark_verify_steps": 100, "dspark_plain_steps": 40})
    after = Snapshot({}, {"dspark_verify_steps": 300, "dspark_plain_steps": 190, "dspark_gate": gate})
    figures = dspark_figures(before, after)
    assert figures["dspark_plain_steps"] == 150 and figures["dspark_verify_steps"] == 200
    assert figures["plain_step_share"] == pytest.approx(0.75)
    assert figures["gate"] == gate


def test_cost_per_million_tokens():
    # $2 per hour at 100 tok/s: 360,000 tokens per hour -> $5.556 per million.
    assert cost_per_million_tokens(2.0, 100.0) == pytest.approx(2.0 / 0.36)
    assert cost_per_million_tokens(None, 100.0) is None
    assert cost_per_million_tokens(2.0, 0.0) is None
    with pytest.raises(ValueError):
        cost_per_million_tokens(-1.0, 10.0)


def test_every_shipped_scenario_loads_with_a_cpu_version():
    names = scenario_names()
    for name in names:
        scenario = load_scenario(name)
        assert scenario.name == name
        if not name.endswith("-cpu"):
            assert f"{name}-cpu" in names
    sweep = load_scenario("sweep-cpu")
    assert sweep.concurrency == (1, 2, 4, 8, 16, 32) and sweep.prompts_at(32) == 64
    assert len(chat_prompts()) >= 24


def test_chat_workload_writes_sharegpt(tmp_path):
    scenario = load_scenario("smoke-cpu")
    workload = scenario.workload(2, tmp_path)
    data = json.loads(workload.dataset_path.read_text())
    assert len(data) == workload.num_prompts == scenario.prompts_at(2)
    assert data[0]["conversations"][0]["from"] == "human"


def test_scenario_validation():
    with pytest.raises(ValueError):
        Scenario(name="x", description="", dataset="random-ids", output_len=8, num_prompts=1, concurrency=(1,))
    with pytest.raises(ValueError):
        Scenario(name="x", description="", dataset="chat", output_len=8, num_prompts=1, concurrency=(4, 2))
    with pytest.raises(ValueError):
        Scenario(name="x", description="", dataset="alpaca", output_len=8, num_prompts=1, concurrency=(1,))


def test_plans_report_unavailable_baselines_with_reasons(tmp_path):
    inputs = PlanInputs(model=tmp_path, device="cpu", drafter=tmp_path)
    plans = {name: plan(name, inputs) for name in ("dspark", *BASELINES)}
    assert plans["none"].runnable and "--enable-metrics" in plans["none"].args
    assert plans["dspark"].runnable and "DSPARK" in plans["dspark"].args
    assert not plans["eagle"].runnable and "EAGLE drafter" in plans["eagle"].unavailable
    assert not plans["builtin-dspark"].runnable and "GPU-only" in plans["builtin-dspark"].unavailable
    gpu = plan("builtin-dspark", PlanInputs(model=tmp_path, device="cuda", drafter=tmp_path))
    assert gpu.runnable and dict(gpu.env) == {"SGLANG_DSPARK_IMPL": "builtin"}
    assert not plan("dspark", PlanInputs(model=tmp_path)).runnable
    with pytest.raises(ValueError):
        parse_baselines("none,medusa")


def test_table_lists_unavailable_servers():
    bench = dict(output_throughput=10.0, median_ttft_ms=100.0, p95_ttft_ms=120.0, p99_ttft_ms=130.0,
                 median_itl_ms=50.0, p95_itl_ms=60.0, p99_itl_ms=70.0, mean_tpot_ms=50.0)
    report = {
        "scenario": {"name": "s", "description": "d", "seed": 1},
        "model": "m", "drafter": None, "device": "cpu", "price_per_gpu_hour": 1.0,
        "servers": {
            "none": {"label": "no speculation", "status": "ok", "speculative": False,
                     "levels": [dict(level_row(1, bench, None, 1.0), speedup_vs_none=1.0)]},
            "eagle": {"label": "EAGLE (SGLang)", "status": "unavailable", "reason": "no drafter", "levels": []},
        },
    }
    table = format_table(report)
    assert "| no speculation | 1 | ok | 10.00 | 1.00x | 20.00 |" in table
    assert "| EAGLE (SGLang) | - | unavailable: no drafter |" in table


def test_plots_are_written_with_and_without_speculative_data(tmp_path):
    from bench.plots import PLOT_FILES, write_plots

    bench = dict(output_throughput=10.0, median_ttft_ms=100.0, p95_ttft_ms=120.0, p99_ttft_ms=130.0,
                 median_itl_ms=50.0, p95_itl_ms=60.0, p99_itl_ms=70.0, mean_tpot_ms=50.0)
    figures = dspark_figures(Snapshot(), Snapshot(parse_histograms(EXPOSITION), {}))
    levels = [level_row(c, bench, figures, None) for c in (1, 2, 4)]
    report = {
        "scenario": {"name": "s", "concurrency": [1, 2, 4]},
        "servers": {"dspark": {"label": "DSPARK", "status": "ok", "speculative": True, "levels": levels}},
    }
    for case, rep in (("with", report), ("without", {**report, "servers": {}})):
        out = tmp_path / case
        out.mkdir()
        write_plots(rep, out)
        for name in PLOT_FILES.values():
            assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_sharegpt_workload_sends_the_eval_split(tmp_path):
    from sglang_dspark.train.sharegpt import is_eval_prompt

    scenario = load_scenario("sharegpt-cpu")
    workload = scenario.workload(1, tmp_path)
    data = json.loads(workload.dataset_path.read_text())
    texts = [row["conversations"][0]["value"] for row in data]
    assert len(texts) == scenario.prompts_at(1) and all(is_eval_prompt(t) for t in texts)
