"""Request options under DSPARK: identical greedy output to plain decoding, and how much each option still drafts.

    python -m bench.structured_outputs [--prompts 8] [--max-new-tokens 64] [--options ...] [--out DIR]

Serves SmolLM2-135M-Instruct (fp32, CPU) plainly (``--disable-overlap-schedule``:
SGLang's overlap scheduler counts penalties one token late) and with DSPARK and
the shipped drafter, speculation forced on (``SGLANG_DSPARK_ADAPTIVE=0``), side
by side. Each held-out chat prompt (``tests/data/eval_chat.jsonl``) is sent
through ``/v1/chat/completions`` greedily with each option; prints, per option,
whether every output was identical, the mean committed tokens per verify step
and the DSPARK / plain time ratio; writes ``structured_outputs.json`` and
``accept_length_by_option.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import requests
from tqdm import tqdm

from sglang_dspark.demo.run import SHIPPED_SMOLLM2_DRAFTER, smollm2_models
from sglang_dspark.eval_acceptance.prompts import load_eval_prompts
from sglang_dspark.server_process import ServerProcess, cpu_serve_args, dspark_args, running

REPO = Path(__file__).resolve().parent.parent
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                           "city": {"type": "string"}},
          "required": ["name", "age", "city"]}
OPTIONS: dict[str, dict] = {
    "none": {},
    "json_schema": {"response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}},
    "json_object": {"response_format": {"type": "json_object"}},
    "regex": {"regex": r"(Yes|No)\. [A-Z][a-z ,]{10,80}\."},
    "ebnf": {"ebnf": 'root ::= "Answer: " ("yes" | "no") ". Because " [a-z ]+ "."'},
    "frequency_penalty": {"frequency_penalty": 0.8},
    "repetition_penalty": {"repetition_penalty": 1.2},
    "min_tokens+logit_bias": {"min_tokens": 48, "logit_bias": {"28": 2.0}},
}


def _chat(url: str, prompt: str, option: dict, max_new_tokens: int) -> dict:
    body = {"model": "default", "temperature": 0, "max_tokens": max_new_tokens, "return_meta_info": True,
            "messages": [{"role": "user", "content": prompt}], **option}
    start = time.monotonic()
    r = requests.post(url + "/v1/chat/completions", json=body, timeout=900)
    took = time.monotonic() - start
    r.raise_for_status()
    choice = r.json()["choices"][0]
    meta = choice.get("meta_info") or {}
    return {"text": choice["message"]["content"], "seconds": took, "tokens": r.json()["usage"]["completion_tokens"],
            "accept_length": meta.get("spec_accept_length")}


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["options"])
    values = [report["options"][n]["accept_length"] or 0 for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(names, values, color="tab:blue")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("committed tokens per verify step")
    ax.set_title("DSPARK (SmolLM2-135M + shipped drafter, CPU): acceptance by request option")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--options", nargs="+", choices=sorted(OPTIONS), default=list(OPTIONS),
                        help="request options to run (default: all)")
    parser.add_argument("--model-cache", help="where SmolLM2 is (default: sglang-dspark's cache)")
    parser.add_argument("--out", type=Path, default=Path("out/bench/structured-outputs"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    models = smollm2_models(args.model_cache)
    prompts = [p.text for p in load_eval_prompts(REPO / "tests" / "data" / "eval_chat.jsonl", limit=args.prompts)]
    base = cpu_serve_args(models.target)
    plain = ServerProcess([*base, "--disable-overlap-schedule"], args.out / "server-plain.log")
    spec = ServerProcess([*base, *dspark_args(SHIPPED_SMOLLM2_DRAFTER)], args.out / "server-dspark.log",
                         env={"SGLANG_DSPARK_ADAPTIVE": "0"})
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.processor()
              or platform.machine(), "models": models.label, "max_new_tokens": args.max_new_tokens,
              "prompts": len(prompts), "options": {}}
    with running(plain, spec):
        for name in tqdm(args.options, desc="options"):
            option = OPTIONS[name]
            rows = []
            for prompt in prompts:
                ref = _chat(plain.url, prompt, option, args.max_new_tokens)
                out = _chat(spec.url, prompt, option, args.max_new_tokens)
                rows.append({"identical": out["text"] == ref["text"], "plain_s": ref["seconds"],
                             "dspark_s": out["seconds"], "tokens": out["tokens"],
                             "accept_length": out["accept_length"]})
            accepts = [r["accept_length"] for r in rows if r["accept_length"]]
            report["options"][name] = {
                "identical": sum(r["identical"] for r in rows), "requests": len(rows),
                "accept_length": statistics.fmean(accepts) if accepts else None,
                "time_ratio": sum(r["dspark_s"] for r in rows) / sum(r["plain_s"] for r in rows),
                "rows": rows,
            }
    print(f"{'option':24s} {'identical':>10s} {'accept len':>10s} {'DSPARK/plain time':>18s}")
    for name, o in report["options"].items():
        acc = f"{o['accept_length']:.2f}" if o["accept_length"] else "-"
        print(f"{name:24s} {o['identical']:>4d}/{o['requests']:<5d} {acc:>10s} {o['time_ratio']:>18.2f}")
    (args.out / "structured_outputs.json").write_text(json.dumps(report, indent=2))
    _plot(report, args.out / "accept_length_by_option.png")
    return 0 if all(o["identical"] == o["requests"] for o in report["options"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
