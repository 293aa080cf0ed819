"""Side-by-side serving benchmark: DSPARK against baselines on the same model, prompts and seed.

    python -m bench.serve_ab --model M [--drafter D] --scenario NAME \\
        [--baselines none,ngram,eagle,builtin-dspark] [--out DIR] [--price-per-gpu-hour X]

Starts each server itself (a real ``sglang serve`` on a free loopback port,
one at a time so they never share the device, stopped afterwards), runs
``python -m sglang.bench_serving`` at every concurrency level of the scenario
(``bench/scenarios/NAME.json``), reads the DSPARK worker's Prometheus
histograms before and after each level, and writes into ``--out``:

- ``report.json``: every figure, per server and level, with the command;
- ``table.md``: the Markdown table;
- ``throughput_vs_concurrency.png``, ``latency_percentiles.png``,
  ``accept_length_per_position.png``, ``verify_tokens_per_step.png``.

A baseline that cannot run on the device is listed with the reason
(``unavailable``); one that was tried and broke is ``failed`` with the error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm import tqdm

from bench.baselines import BASELINES, SUBJECT, PlanInputs, ServerPlan, parse_baselines, plan
from bench.plots import write_plots
from bench.report import add_speedups, format_table, level_row
from bench.scenario import Scenario, load_scenario, scenario_names
from bench.server_metrics import dspark_figures, snapshot
from sglang_dspark.bench_serving import run_bench_serving
from sglang_dspark.server_process import ServerProcess

logger = logging.getLogger("bench.serve_ab")

REPORT_JSON = "report.json"
TABLE_MD = "table.md"


@dataclass(frozen=True)
class RunConfig:
    """Everything one side-by-side run needs."""

    model: Path
    scenario: Scenario
    out_dir: Path
    baselines: tuple[str, ...] = BASELINES
    drafter: Path | None = None
    eagle_drafter: Path | None = None
    device: str = "cpu"
    price_per_gpu_hour: float | None = None
    ready_timeout: float = 900.0
    bench_timeout: float = 3600.0

    def __post_init__(self) -> None:
        if not (self.model / "config.json").exists():
            raise FileNotFoundError(f"--model {self.model}: no config.json (a local model directory is needed)")
        if self.drafter is not None and not (self.drafter / "config.json").exists():
            raise FileNotFoundError(f"--drafter {self.drafter}: no config.json")
        if self.price_per_gpu_hour is not None and self.price_per_gpu_hour < 0:
            raise ValueError("--price-per-gpu-hour must be >= 0")
        if self.ready_timeout <= 0 or self.bench_timeout <= 0:
            raise ValueError("timeouts must be positive")
        parse_baselines(",".join(self.baselines))

    def server_names(self) -> list[str]:
        """Plain decoding first (the reference), then DSPARK, then the other baselines."""
        rest = [b for b in self.baselines if b != "none"]
        return (["none"] if "none" in self.baselines else []) + [SUBJECT] + rest

    def plan_inputs(self) -> PlanInputs:
        return PlanInputs(
            model=self.model,
            device=self.device,
            drafter=self.drafter,
            eagle_drafter=self.eagle_drafter,
            max_total_tokens=self.scenario.max_total_tokens if self.device == "cpu" else None,
        )


def run(config: RunConfig, *, command: str | None = None) -> dict:
    """Serve and benchmark every server of ``config``; write JSON, table and plots; return the report."""
    config.out_dir.mkdir(parents=True, exist_ok=True)
    inputs = config.plan_inputs()
    plans = [plan(name, inputs) for name in config.server_names()]
    steps = sum(len(config.scenario.concurrency) for p in plans if p.runnable)
    servers: dict[str, dict] = {}
    with tqdm(total=steps, desc=f"serve_ab {config.scenario.name}", unit="level") as progress:
        for server_plan in plans:
            servers[server_plan.name] = measure_server(server_plan, config, progress)
    add_speedups(servers)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "command": command,
        "scenario": config.scenario.to_dict(),
        "model": str(config.model),
        "drafter": None if config.drafter is None else str(config.drafter),
        "device": config.device,
        "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "sglang_version": _sglang_version(),
        "price_per_gpu_hour": config.price_per_gpu_hour,
        "servers": servers,
    }
    (config.out_dir / REPORT_JSON).write_text(json.dumps(report, indent=2))
    (config.out_dir / TABLE_MD).write_text(format_table(report))
    report["plots"] = {k: str(p) for k, p in write_plots(report, config.out_dir).items()}
    (config.out_dir / REPORT_JSON).write_text(json.dumps(report, indent=2))
    return report


def measure_server(server_plan: ServerPlan, config: RunConfig, progress: tqdm) -> dict:
    """Start one server, benchmark every level, stop it; a dict with status and levels."""
    entry: dict = {"label": server_plan.label, "speculative": server_plan.speculative, "levels": []}
    if not server_plan.runnable:
        logger.warning("%s: unavailable: %s", server_plan.name, server_plan.unavailable)
        return {**entry, "status": "unavailable", "reason": server_plan.unavailable}
    log_path = config.out_dir / "logs" / f"server-{server_plan.name}.log"
    entry.update(server_args=list(server_plan.args), env=dict(server_plan.env), log=str(log_path))
    server = ServerProcess(list(server_plan.args), log_path, env=dict(server_plan.env))
    t0 = time.monotonic()
    try:
        try:
            server.start().wait_ready(config.ready_timeout)
        except (RuntimeError, TimeoutError) as exc:
            progress.update(len(config.scenario.concurrency))
            logger.warning("%s: server did not start: %s", server_plan.name, exc)
            reason = "server did not start: " + _error_line(server, exc, from_log=True)
            return {**entry, "status": "failed", "reason": reason}
        entry["startup_s"] = round(time.monotonic() - t0, 1)
        try:
            _warm_up(server)
            for concurrency in config.scenario.concurrency:
                progress.set_postfix_str(f"{server_plan.name} c={concurrency}")
                entry["levels"].append(_measure_level(server, server_plan, config, concurrency))
                progress.update(1)
            entry["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure is reported, the other servers still run
            logger.warning("%s: benchmark failed: %s", server_plan.name, exc)
            reason = "benchmark failed: " + _error_line(server, exc, from_log=False)
            entry.update(status="failed", reason=reason)
    finally:
        # Also on KeyboardInterrupt: the server runs in its own session and would outlive us.
        server.stop()
    return entry


def _measure_level(server: ServerProcess, server_plan: ServerPlan, config: RunConfig, concurrency: int) -> dict:
    workload = config.scenario.workload(concurrency, config.out_dir / "prompts")
    requests.post(server.url + "/flush_cache", timeout=60)
    before = snapshot(server.url)
    raw = run_bench_serving(
        server,
        workload,
        config.model,
        config.out_dir / "raw" / f"{server_plan.name}-c{concurrency}.jsonl",
        timeout=config.bench_timeout,
        # Our own warm-up ran before the snapshot; bench_serving's would leak into the histograms.
        extra_args=("--warmup-requests", "0"),
    )
    after = snapshot(server.url)
    if raw.get("completed") != workload.num_prompts:
        raise RuntimeError(f"{raw.get('completed')} of {workload.num_prompts} requests completed")
    dspark = dspark_figures(before, after) if server_plan.speculative else None
    row = level_row(concurrency, raw, dspark, config.price_per_gpu_hour)
    row["num_prompts"] = workload.num_prompts
    return row


def _warm_up(server: ServerProcess) -> None:
    resp = requests.post(
        server.url + "/generate",
        json={"text": "Hello, how are you?", "sampling_params": {"max_new_tokens": 8, "temperature": 0}},
        timeout=600,
    )
    resp.raise_for_status()


def _error_line(server: ServerProcess, exc: BaseException, *, from_log: bool) -> str:
    """The most telling line: for start-up failures the server log's last error, else the exception."""
    if from_log:
        for line in reversed(server.log_tail(200).splitlines()):
            if any(m in line for m in ("Error", "Exception", "error:")) and not any(b in line for b in _BENIGN):
                return line.strip()[:400]
    text = str(exc).strip()
    return text.splitlines()[0][:400] if text else type(exc).__name__


# Log lines SGLang prints on every CPU start-up; never the cause of a failure.
_BENIGN = ("Ignore import error", "Responses API", "UserWarning")


def _sglang_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("sglang")
    except Exception:  # noqa: BLE001 - informational only
        return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="target model directory")
    parser.add_argument("--drafter", type=Path, help="DeepSpec drafter directory for DSPARK")
    parser.add_argument("--eagle-drafter", type=Path, help="EAGLE drafter directory for the eagle baseline")
    parser.add_argument("--scenario", required=True,
                        help=f"scenario name ({', '.join(scenario_names())}) or a JSON file")
    parser.add_argument("--baselines", default=",".join(BASELINES),
                        help=f"comma-separated, from {', '.join(BASELINES)} (default: all)")
    parser.add_argument("--out", type=Path, help="output directory (default out/bench/SCENARIO)")
    parser.add_argument("--price-per-gpu-hour", type=float, help="device price per hour, for $ / M output tokens")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for each server")
    parser.add_argument("--bench-timeout", type=float, default=3600.0, help="seconds per bench_serving run")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints the table and where the files are."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    scenario = load_scenario(args.scenario)
    config = RunConfig(
        model=args.model.resolve(),
        scenario=scenario,
        out_dir=(args.out or Path("out") / "bench" / scenario.name).resolve(),
        baselines=parse_baselines(args.baselines),
        drafter=None if args.drafter is None else args.drafter.resolve(),
        eagle_drafter=args.eagle_drafter,
        device=args.device,
        price_per_gpu_hour=args.price_per_gpu_hour,
        ready_timeout=args.ready_timeout,
        bench_timeout=args.bench_timeout,
    )
    command = shlex.join([os.path.basename(sys.executable), "-m", "bench.serve_ab", *(argv or sys.argv[1:])])
    run(config, command=command)
    print((config.out_dir / TABLE_MD).read_text())
    print(f"written: {config.out_dir}/{{{REPORT_JSON},{TABLE_MD},*.png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
