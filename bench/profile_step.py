"""Where a DSPARK decode step's time goes on CPU, next to a plain decode step, measured in one run.

    python -m bench.profile_step [--prompts 10] [--max-new-tokens 64] [--concurrency 1 8 32]
                                 [--out out/bench/profile-step]

Serves SmolLM2-135M-Instruct (fp32) plainly and with DSPARK and the shipped
drafter, speculation forced on (``SGLANG_DSPARK_ADAPTIVE=0``, every step
drafts), side by side, plus a plain server with SGLang's own ``F.linear``
(``SGLANG_DSPARK_CPU_LINEAR=builtin``) for what the skinny CPU GEMM changed.
For each concurrency it sends held-out ShareGPT prompts (greedy) to each
server in turn, counts the DSPARK outputs identical to the plain ones, and
reports, per worker step: drafting, prefix scheduling, verify preparation, the
verify forward and the rest, as ratios of the plain server's decode step (its inter-token latency), from the worker's own
counters (``/server_info``). At concurrency 1 it also takes a ``torch.profiler``
trace of the DSPARK scheduler through SGLang's ``/start_profile`` and breaks
the step down by the worker's ``dspark.*`` ranges and the heaviest operators
inside each. Writes ``profile_step.json`` and ``step_breakdown.png``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import gzip
import json
import platform
import statistics
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import requests
from tqdm import tqdm

from bench.server_metrics import snapshot
from sglang_dspark.demo.run import SHIPPED_SMOLLM2_DRAFTER, smollm2_models
from sglang_dspark.eval_acceptance.prompts import load_eval_prompts
from sglang_dspark.server_process import ServerProcess, cpu_serve_args, dspark_args, running
from sglang_dspark.sglang.serving_choice import CPU_LINEAR_ENV

REPO = Path(__file__).resolve().parent.parent
PHASES = ("draft", "schedule", "prepare", "verify_forward", "finish")


def _stream(url: str, prompt: str, max_new_tokens: int) -> tuple[float, int, str]:
    """(seconds per output token after the first, output tokens, text) of one streamed greedy chat request."""
    body = {"model": "default", "temperature": 0, "max_tokens": max_new_tokens, "stream": True,
            "messages": [{"role": "user", "content": prompt}], "stream_options": {"include_usage": True}}
    start, first, tokens, text = time.monotonic(), None, 0, []
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=900) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices"):
                if first is None:
                    first = time.monotonic()
                text.append(chunk["choices"][0].get("delta", {}).get("content") or "")
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.monotonic()
    return ((end - (first or start)) / max(tokens - 1, 1)), tokens, "".join(text)


def _run_level(url: str, prompts: list[str], concurrency: int, max_new_tokens: int) -> dict:
    jobs = [prompts[i % len(prompts)] for i in range(max(len(prompts), concurrency))]
    before = snapshot(url)
    start = time.monotonic()
    with cf.ThreadPoolExecutor(concurrency) as ex:
        results = list(ex.map(lambda p: _stream(url, p, max_new_tokens), jobs))
    wall = time.monotonic() - start
    after = snapshot(url)
    tokens = sum(t for _, t, _ in results)
    level = {"requests": len(jobs), "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
             "itl_ms_median": 1000 * statistics.median(s for s, _, _ in results),
             "texts": [text for _, _, text in results]}
    info_delta = {k: after.info[k] - before.info.get(k, 0) for k in after.info
                  if isinstance(after.info.get(k), (int, float)) and not isinstance(after.info.get(k), bool)}
    steps = info_delta.get("dspark_decode_steps")
    if steps:
        level["worker_steps"] = steps
        level["batch_mean"] = info_delta["dspark_verify_steps"] / steps
        level["step_ms"] = 1000 * info_delta["dspark_step_seconds"] / steps
        level["draft_ms"] = 1000 * info_delta["dspark_draft_seconds"] / steps
        level["schedule_ms"] = 1000 * info_delta["dspark_schedule_seconds"] / steps
        level["verify_forward_ms"] = 1000 * info_delta["dspark_verify_seconds"] / steps
        level["other_ms"] = level["step_ms"] - level["draft_ms"] - level["schedule_ms"] - level["verify_forward_ms"]
        level["tokens_per_request_step"] = after.info.get("dspark_mean_accept_length")
    return level


def _trace_breakdown(trace_dir: Path) -> dict:
    """Mean ms per step of each ``dspark.*`` range, and the heaviest operators inside the main ones."""
    files = sorted(trace_dir.rglob("*.json.gz")) + sorted(trace_dir.rglob("*.json"))
    if not files:
        return {"error": f"no trace written under {trace_dir}"}
    path = files[0]
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        events = [e for e in json.load(f).get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]
    ranges = [e for e in events if str(e.get("name", "")).startswith("dspark.")]
    steps = sum(1 for e in ranges if e["name"] == "dspark.draft") or 1
    totals: dict[str, float] = defaultdict(float)
    for e in ranges:
        totals[e["name"]] += e["dur"] / 1000
    ops: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    scopes = sorted((e["ts"], e["ts"] + e["dur"], e["name"], e.get("tid")) for e in ranges
                    if e["name"].count(".") >= 1)
    for e in events:
        name = str(e.get("name", ""))
        if name.startswith("dspark.") or not name.startswith("aten::"):
            continue
        inner = None
        for s0, s1, sname, tid in scopes:
            if s0 <= e["ts"] and e["ts"] + e["dur"] <= s1 and tid == e.get("tid"):
                if inner is None or sname.count(".") >= inner.count("."):
                    inner = sname
        if inner is not None:
            ops[inner][name] += e["dur"] / 1000
    return {
        "trace": str(path),
        "steps": steps,
        "ranges_ms_per_step": {k: v / steps for k, v in sorted(totals.items())},
        "top_ops_ms_per_step": {scope: dict(sorted(((k, v / steps) for k, v in d.items()), key=lambda kv: -kv[1])[:8])
                                for scope, d in ops.items()},
    }


def _profile(url: str, prompt: str, out: Path, max_new_tokens: int, num_steps: int) -> dict:
    trace_dir = out / "trace"
    trace_dir.mkdir(parents=True, exist_ok=True)
    _stream(url, prompt, 8)  # warm the prompt's prefix
    r = requests.post(url + "/start_profile", json={"output_dir": str(trace_dir), "num_steps": num_steps,
                                                     "activities": ["CPU"]}, timeout=120)
    r.raise_for_status()
    _stream(url, prompt, max_new_tokens)
    deadline = time.monotonic() + 300
    while not any(trace_dir.rglob("*.json*")) and time.monotonic() < deadline:
        time.sleep(2)
    time.sleep(3)
    return _trace_breakdown(trace_dir)


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = report["levels"]
    names = [str(c) for c in levels]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    bottom = [0.0] * len(names)
    for phase, color in zip(("draft_ms", "schedule_ms", "verify_forward_ms", "other_ms"),
                            ("tab:orange", "tab:purple", "tab:blue", "tab:grey")):
        values = [levels[c]["dspark"].get(phase, 0) / levels[c]["plain"]["itl_ms_median"] for c in levels]
        ax.bar(names, values, bottom=bottom, color=color, label=phase[:-3])
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.axhline(1.0, color="black", lw=0.8, ls="--", label="plain decode step")
    ax.set_xlabel("concurrency")
    ax.set_ylabel("x plain decode step")
    ax.set_title("DSPARK worker step on CPU (SmolLM2-135M + shipped drafter, forced)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--profile-steps", type=int, default=30)
    parser.add_argument("--model-cache", help="where SmolLM2 is (default: sglang-dspark's cache)")
    parser.add_argument("--out", type=Path, default=Path("out/bench/profile-step"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    models = smollm2_models(args.model_cache)
    prompts = [p.text for p in load_eval_prompts(REPO / "sglang_dspark" / "data" / "eval_sharegpt.jsonl",
                                                 limit=args.prompts)]
    base = cpu_serve_args(models.target)
    plain = ServerProcess(base, args.out / "server-plain.log")
    # The same plain server with SGLang's own F.linear: what the skinny CPU GEMM changed.
    plain_torch = ServerProcess(base, args.out / "server-plain-f-linear.log", env={CPU_LINEAR_ENV: "builtin"})
    spec = ServerProcess([*base, *dspark_args(SHIPPED_SMOLLM2_DRAFTER)], args.out / "server-dspark.log",
                         env={"SGLANG_DSPARK_ADAPTIVE": "0"})
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "models": models.label,
              "max_new_tokens": args.max_new_tokens, "levels": {}}
    with running(plain, plain_torch, spec):
        for c in tqdm(args.concurrency, desc="concurrency"):
            lv = report["levels"][c] = {"plain": _run_level(plain.url, prompts, c, args.max_new_tokens),
                                        "plain_f_linear": _run_level(plain_torch.url, prompts, c, args.max_new_tokens),
                                        "dspark": _run_level(spec.url, prompts, c, args.max_new_tokens)}
            lv["identical"] = sum(a == b for a, b in zip(lv["plain"]["texts"], lv["dspark"]["texts"]))
        report["profile"] = _profile(spec.url, prompts[0], args.out, args.max_new_tokens, args.profile_steps)
    print(f"{'conc':>4s} {'plain step ms':>13s} {'(F.linear)':>10s} {'DSPARK step':>11s} {'draft':>6s} {'verify fwd':>10s} "
          f"{'other':>6s} {'tok/step':>8s} {'DSPARK/plain tok/s':>18s} {'identical':>9s}")
    for c, lv in report["levels"].items():
        p, d = lv["plain"], lv["dspark"]
        itl = p["itl_ms_median"]
        print(f"{c:>4d} {itl:>13.1f} {lv['plain_f_linear']['itl_ms_median']:>10.1f} {d.get('step_ms', 0) / itl:>10.2f}x {d.get('draft_ms', 0) / itl:>5.2f}x "
              f"{d.get('verify_forward_ms', 0) / itl:>9.2f}x {d.get('other_ms', 0) / itl:>5.2f}x "
              f"{d.get('tokens_per_request_step') or 0:>8.2f} {d['tokens_per_s'] / p['tokens_per_s']:>17.2f}x "
              f"{lv['identical']:>4d}/{len(p['texts'])}")
    prof = report["profile"]
    if "ranges_ms_per_step" in prof:
        print(f"\nconcurrency 1, torch.profiler over {prof['steps']} steps (ms per step):")
        for name, ms in prof["ranges_ms_per_step"].items():
            print(f"  {name:40s} {ms:8.2f}")
    (args.out / "profile_step.json").write_text(json.dumps(report, indent=2))
    _plot(report, args.out / "step_breakdown.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
