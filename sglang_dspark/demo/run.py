"""``python -m sglang_dspark.demo run``: DSPARK against plain decoding on this CPU.

Serves one target twice with real ``sglang serve`` processes (plain decoding,
then DSPARK with its drafter), one after the other so they do not share the
CPU, runs the same ``python -m sglang.bench_serving`` workload (same prompts,
same seed, greedy) against each, and prints a table; the JSON and a PNG plot
are written beside each other.

Models: SmolLM2-135M-Instruct with the drafter shipped in
``sglang_dspark/drafters/smollm2-135m`` when that drafter is present;
otherwise the tiny byte-level target of :mod:`sglang_dspark.train.tiny_target`
with a drafter trained for it on the spot by the project's trainer (about a
minute), which shows the whole pipeline (train, serve, measure) on real
processes while the SmolLM2 drafter is not shipped.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from sglang_dspark.bench_serving import REPORTED, Workload, run_bench_serving, write_sharegpt
from sglang_dspark.demo.prepare import default_cache_root, prepare_model
from sglang_dspark.server_process import ServerProcess, cpu_serve_args, dspark_args

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent.parent
SHIPPED_SMOLLM2_DRAFTER = PACKAGE_DIR / "drafters" / "smollm2-135m"
TINY_RECIPE = PACKAGE_DIR.parent / "recipes" / "tiny-drafter.json"

#: ShareGPT first turns of the evaluation split, never in a training corpus
#: (:mod:`sglang_dspark.train.sharegpt`); the demo sends the first ``num_prompts``.
EVAL_SHAREGPT = PACKAGE_DIR / "data" / "eval_sharegpt.jsonl"


def demo_prompts(num_prompts: int) -> list[str]:
    """The first ``num_prompts`` held-out ShareGPT prompts (repeated if more are asked for)."""
    from sglang_dspark.train.corpus import load_prompt_file

    prompts = [row["prompt"] for row in load_prompt_file(EVAL_SHAREGPT)]
    return (prompts * ((num_prompts + len(prompts) - 1) // len(prompts)))[:num_prompts]


@dataclass(frozen=True)
class DemoModels:
    """The target and drafter the demo serves, and what they are in words."""

    target: Path
    drafter: Path
    label: str


def tiny_models(cache_root: Path) -> DemoModels:
    """Tiny target plus a drafter trained for it now (cached after the first run)."""
    from sglang_dspark.train import load_recipe, run_training
    from sglang_dspark.train.tiny_target import make_tiny_target

    root = cache_root / "demo-tiny"
    target = root / "target"
    if not (target / "config.json").exists():
        make_tiny_target(target, seed=0)
    drafter = root / "drafter-run" / "drafter"
    if not (drafter / "config.json").exists():
        logger.info("training a drafter for the tiny target (recipe %s)", TINY_RECIPE)
        result = run_training(target, load_recipe(TINY_RECIPE), root / "drafter-run", seed=0)
        drafter = Path(result.drafter_dir)
    return DemoModels(target, drafter, "tiny random Llama (byte vocabulary) + drafter trained now")


def smollm2_models(cache_dir: str | None) -> DemoModels:
    target = prepare_model(cache_dir).path
    return DemoModels(Path(target), SHIPPED_SMOLLM2_DRAFTER, "SmolLM2-135M-Instruct + shipped drafter")


def select_models(model: str, cache_dir: str | None) -> DemoModels:
    if model == "smollm2" or (model == "auto" and (SHIPPED_SMOLLM2_DRAFTER / "config.json").exists()):
        return smollm2_models(cache_dir)
    if model == "auto":
        logger.warning(
            "the SmolLM2-135M drafter is not shipped in this checkout yet; "
            "demonstrating on the tiny target with a freshly trained drafter"
        )
    return tiny_models(Path(cache_dir) if cache_dir else default_cache_root())


def run_demo(
    out_dir: Path,
    *,
    model: str = "auto",
    cache_dir: str | None = None,
    num_prompts: int = 8,
    output_len: int = 64,
) -> dict:
    """Serve, benchmark both ways, write ``demo.json`` and ``demo.png``; return the report."""
    models = select_models(model, cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prompts = demo_prompts(num_prompts)
    workload = Workload(
        num_prompts=num_prompts,
        output_len=output_len,
        dataset_path=write_sharegpt(prompts, out_dir / "prompts.sharegpt.json"),
    )
    base = cpu_serve_args(models.target)
    runs = {
        "no speculation": base,
        "DSPARK": [*base, *dspark_args(models.drafter)],
    }
    results = {}
    for name, args in runs.items():
        slug = name.replace(" ", "-").lower()
        t0 = time.monotonic()
        with ServerProcess(args, out_dir / f"server-{slug}.log") as server:
            logger.info("%s: server ready in %.0f s, benchmarking", name, time.monotonic() - t0)
            raw = run_bench_serving(server, workload, models.target, out_dir / f"bench-{slug}.jsonl")
        results[name] = {key: raw.get(key) for key in REPORTED}
    base_tps = results["no speculation"]["output_throughput"]
    report = {
        "models": {"target": str(models.target), "drafter": str(models.drafter), "label": models.label},
        "workload": {"num_prompts": num_prompts, "output_len": output_len, "max_concurrency": 1,
                     "temperature": 0, "dataset": "held-out ShareGPT prompts"},
        "results": results,
        "speedup": results["DSPARK"]["output_throughput"] / base_tps if base_tps else None,
        "date": time.strftime("%Y-%m-%d"),
    }
    (out_dir / "demo.json").write_text(json.dumps(report, indent=2))
    plot_demo(report, out_dir / "demo.png")
    return report


def format_table(report: dict) -> str:
    """The demo's Markdown table."""
    rows = [
        "| run | tok/s | TTFT p50 (ms) | ITL p50 (ms) | ITL p95 (ms) | accept length |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in report["results"].items():
        accept = r.get("accept_length") or 1.0  # plain decoding commits one token per step
        rows.append(
            f"| {name} | {r['output_throughput']:.2f} | {r['median_ttft_ms']:.0f} | "
            f"{r['median_itl_ms']:.1f} | {r['p95_itl_ms']:.1f} | {accept:.2f} |"
        )
    speedup = report.get("speedup")
    rows.append("")
    rows.append(f"speed-up (DSPARK / no speculation, tok/s): {speedup:.2f}x" if speedup else "speed-up: n/a")
    return "\n".join(rows)


def plot_demo(report: dict, path: Path) -> None:
    """Bar charts of tokens per second and ITL percentiles for both runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["results"])
    res = report["results"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].bar(names, [res[n]["output_throughput"] for n in names], color=["#888", "#2a7"])
    axes[0].set_ylabel("output tokens / s")
    axes[0].set_title("throughput, concurrency 1")
    width = 0.38
    xs = range(len(names))
    axes[1].bar([x - width / 2 for x in xs], [res[n]["median_itl_ms"] for n in names], width, label="p50")
    axes[1].bar([x + width / 2 for x in xs], [res[n]["p95_itl_ms"] for n in names], width, label="p95")
    axes[1].set_xticks(list(xs), names)
    axes[1].set_ylabel("inter-token latency (ms)")
    axes[1].legend()
    speedup = report.get("speedup")
    fig.suptitle(f"{report['models']['label']}: speed-up {speedup:.2f}x" if speedup else report["models"]["label"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
