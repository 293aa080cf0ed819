"""Run ``python -m sglang.bench_serving`` against a server and read its JSON result."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sglang_dspark.server_process import ServerProcess

# The figures the demo and the benchmarks report, as bench_serving names them.
REPORTED = (
    "output_throughput",
    "median_ttft_ms",
    "p95_ttft_ms",
    "median_itl_ms",
    "p95_itl_ms",
    "p99_itl_ms",
    "accept_length",
    "completed",
    "total_output_tokens",
    "duration",
)


@dataclass(frozen=True)
class Workload:
    """What bench_serving sends: a ShareGPT-format file of real prompts, or random ids."""

    num_prompts: int
    output_len: int
    max_concurrency: int = 1
    dataset_path: Path | None = None
    random_input_len: int = 128
    seed: int = 1

    def args(self, tokenizer: str | Path) -> list[str]:
        common = [
            "--num-prompts", str(self.num_prompts),
            "--max-concurrency", str(self.max_concurrency),
            "--request-rate", "inf",
            "--seed", str(self.seed),
            "--tokenizer", str(tokenizer),
        ]
        if self.dataset_path is not None:
            return [
                *common,
                "--dataset-name", "sharegpt",
                "--dataset-path", str(self.dataset_path),
                "--sharegpt-output-len", str(self.output_len),
            ]
        return [
            *common,
            "--dataset-name", "random-ids",
            "--random-input-len", str(self.random_input_len),
            "--random-output-len", str(self.output_len),
            "--random-range-ratio", "1",
        ]


def write_sharegpt(prompts: list[str], path: Path) -> Path:
    """A ShareGPT-format JSON file (one human turn per conversation) for bench_serving."""
    data = [
        {"id": str(i), "conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": ""}]}
        for i, p in enumerate(prompts)
    ]
    path.write_text(json.dumps(data))
    return path


def run_bench_serving(
    server: ServerProcess,
    workload: Workload,
    tokenizer: str | Path,
    output: Path,
    *,
    timeout: float = 1800,
    extra_args: Sequence[str] = (),
) -> dict:
    """Benchmark ``server``; return bench_serving's result dict (also appended to ``output``).

    ``extra_args`` go to bench_serving after the workload's own flags.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    cmd = [
        sys.executable, "-m", "sglang.bench_serving",
        "--backend", "sglang",
        "--host", "127.0.0.1",
        "--port", str(server.port),
        "--output-file", str(output),
        "--disable-tqdm",
        *workload.args(tokenizer),
        *extra_args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not output.exists():
        raise RuntimeError(
            f"bench_serving failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    lines = [line for line in output.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])
