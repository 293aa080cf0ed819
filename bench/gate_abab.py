"""DSPARK with the speculation gate against plain decoding, both servers up, order alternating.

    python -m bench.gate_abab [--concurrency 1 2 4 8 16 32] [--rounds 4] [--prompts 16]
                              [--max-new-tokens 64] [--out out/bench/gate-abab]

The sweeps (``bench.serve_ab``) measure one server after the other, so a box
whose speed drifts over minutes (the 2-core development box does) biases
every ratio the same way. This benchmark keeps a plain SGLang server and a
DSPARK server (shipped SmolLM2-135M drafter, gate on, the defaults a user
gets) running together and, at each concurrency, measures them in rounds
whose order alternates (plain first in even rounds, DSPARK first in odd
ones), so that drift hits both alike. Greedy held-out ShareGPT chat prompts;
each round counts the DSPARK outputs identical to plain ones. Prints the
DSPARK / plain tokens-per-second ratio of every round and of the sums, and
writes ``gate_abab.json`` and ``gate_abab.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from bench.profile_step import REPO, _run_level
from sglang_dspark.demo.run import SHIPPED_SMOLLM2_DRAFTER, smollm2_models
from sglang_dspark.eval_acceptance.prompts import load_eval_prompts
from sglang_dspark.server_process import ServerProcess, cpu_serve_args, dspark_args, running

SERVERS = ("plain", "dspark")


def round_order(round_index: int) -> tuple[str, ...]:
    """Plain first in even rounds, DSPARK first in odd ones."""
    return SERVERS if round_index % 2 == 0 else SERVERS[::-1]


def summarize(rounds: list[dict[str, dict]]) -> dict:
    """Ratios of one concurrency's rounds: per round, and of the summed tokens over the summed time."""
    per_round = [r["dspark"]["tokens_per_s"] / r["plain"]["tokens_per_s"] for r in rounds]
    total = {name: sum(r[name]["tokens"] for r in rounds) / sum(r[name]["wall_s"] for r in rounds)
             for name in SERVERS}
    return {
        "ratio": total["dspark"] / total["plain"],
        "ratio_per_round": per_round,
        "tokens_per_s": total,
        "identical": sum(r["identical"] for r in rounds),
        "requests": sum(r["plain"]["requests"] for r in rounds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=16, help="held-out prompts per round (at least the concurrency)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--model-cache", help="where SmolLM2 is (default: sglang-dspark's cache)")
    parser.add_argument("--out", type=Path, default=Path("out/bench/gate-abab"))
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (the order alternates between rounds)")
    args.out.mkdir(parents=True, exist_ok=True)
    models = smollm2_models(args.model_cache)
    prompts = [p.text for p in load_eval_prompts(REPO / "sglang_dspark" / "data" / "eval_sharegpt.jsonl",
                                                 limit=max(args.prompts, *args.concurrency))]
    base = cpu_serve_args(models.target)
    servers = {"plain": ServerProcess(base, args.out / "server-plain.log"),
               "dspark": ServerProcess([*base, *dspark_args(SHIPPED_SMOLLM2_DRAFTER)], args.out / "server-dspark.log")}
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "models": models.label,
              "max_new_tokens": args.max_new_tokens, "rounds": args.rounds, "levels": {}}
    with running(*servers.values()):
        for server in servers.values():
            _run_level(server.url, prompts[:2], 2, 16)  # first requests pay one-off costs
        with tqdm(total=len(args.concurrency) * args.rounds, desc="gate ABAB", unit="round") as bar:
            for c in args.concurrency:
                jobs = prompts[: max(args.prompts, c)]
                rounds = []
                for r in range(args.rounds):
                    levels = {name: _run_level(servers[name].url, jobs, c, args.max_new_tokens)
                              for name in round_order(r)}
                    levels["identical"] = sum(a == b for a, b in zip(levels["plain"].pop("texts"),
                                                                     levels["dspark"].pop("texts")))
                    rounds.append(levels)
                    bar.update(1)
                report["levels"][c] = {"rounds": rounds, **summarize(rounds)}
    print(f"{'conc':>4s} {'plain tok/s':>11s} {'DSPARK tok/s':>12s} {'ratio':>6s}  per round{'':14s} identical")
    for c, lv in report["levels"].items():
        rounds = " ".join(f"{x:.2f}" for x in lv["ratio_per_round"])
        print(f"{c:>4d} {lv['tokens_per_s']['plain']:>11.2f} {lv['tokens_per_s']['dspark']:>12.2f} "
              f"{lv['ratio']:>5.2f}x  {rounds:22s} {lv['identical']}/{lv['requests']}")
    (args.out / "gate_abab.json").write_text(json.dumps(report, indent=2))
    _plot(report, args.out / "gate_abab.png")
    return 0


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = report["levels"]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    xs = list(range(len(levels)))
    for x, lv in zip(xs, levels.values()):
        ax.scatter([x] * len(lv["ratio_per_round"]), lv["ratio_per_round"], color="tab:grey", s=12,
                   label="one round" if x == 0 else None)
    ax.plot(xs, [lv["ratio"] for lv in levels.values()], "o-", color="tab:blue", label="all rounds")
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.axhline(0.95, color="tab:red", lw=0.8, ls=":", label="0.95x")
    ax.set_xticks(xs, [str(c) for c in levels])
    ax.set_xlabel("concurrency")
    ax.set_ylabel("DSPARK / plain tokens per second")
    ax.set_title(f"DSPARK (gate) vs plain, {report['rounds']} alternating rounds per level")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
