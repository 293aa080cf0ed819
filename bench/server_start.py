"""Start-up time of a one-rank and a two-rank CPU server of the tiny target, side by side in one run.

    python -m bench.server_start [--repeats 3] [--out out/bench/server-start]

Each repeat starts ``sglang serve`` at ``--tp-size 1`` and then at ``--tp-size 2``
(one OpenMP thread per rank, pinned to its own core), alternating so that drift
of a shared machine hits both, and times launch to the first 200 from
``/health_generate`` (SGLang's warm-up request included). Prints each time, the
medians and their ratio; writes ``server_start.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from sglang_dspark.server_process import ServerProcess, cpu_serve_args
from sglang_dspark.train.tiny_target import make_tiny_target

LAYOUTS = {
    "tp1": ([], {}),
    "tp2": (["--tp-size", "2"], {"SGLANG_CPU_OMP_THREADS_BIND": "0|1"}),
}


def time_start(target: Path, layout: str, log: Path) -> float:
    """Seconds from launching ``sglang serve`` in ``layout`` to its first healthy generation."""
    extra, env = LAYOUTS[layout]
    server = ServerProcess([*cpu_serve_args(target), *extra], log, env=env)
    start = time.monotonic()
    try:
        server.start().wait_ready()
        return time.monotonic() - start
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("out/bench/server-start"))
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    times: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    with tempfile.TemporaryDirectory() as tmp:
        target = make_tiny_target(Path(tmp) / "target", seed=0)
        runs = [(r, name) for r in range(args.repeats) for name in LAYOUTS]
        for r, name in tqdm(runs, desc="server starts"):
            times[name].append(time_start(target, name, args.out / f"{name}-{r}.log"))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    ratio = medians["tp2"] / medians["tp1"]
    for name, ts in times.items():
        print(f"{name}: " + ", ".join(f"{t:.1f}" for t in ts) + f" s (median {medians[name]:.1f} s)")
    print(f"two-rank / one-rank start: {ratio:.2f}x")
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "command": " ".join([Path(sys.executable).name, "-m", "bench.server_start", *(argv or sys.argv[1:])]),
        "seconds": times,
        "median_seconds": medians,
        "tp2_over_tp1": ratio,
    }
    (args.out / "server_start.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
