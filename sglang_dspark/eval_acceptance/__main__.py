"""``python -m sglang_dspark.eval_acceptance (--offline | --server URL) --prompts FILE.jsonl``.

Offline: loads the target (``--target``, default the prepared SmolLM2) and
the reference drafter (``--drafter``, default the shipped SmolLM2 drafter)
and decodes every prompt with speculative decoding in this process. Server:
sends the prompts to a running DSPARK server (``--target`` only to find the
tokenizer when the server's model path is not readable here). Prints a
table; ``--out X.json`` also writes the JSON and ``X.png`` (per-position
acceptance) beside it. Exit status 2 for bad arguments or prompt files, 1
when the drafter, target or server does not fit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from sglang_dspark.eval_acceptance.errors import EvalError
from sglang_dspark.eval_acceptance.prompts import PromptFileError, load_eval_prompts
from sglang_dspark.eval_acceptance.report import format_table, plot_per_position, write_json

SHIPPED_DRAFTER = Path(__file__).resolve().parents[1] / "drafters" / "smollm2-135m"


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m sglang_dspark.eval_acceptance",
        description="Mean accepted length per verify step and per-position acceptance of a "
        "DSpark drafter on a JSONL prompt file ({\"prompt\": ...} or ShareGPT "
        "{\"conversations\": [...]} per line).",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--offline", action="store_true",
                      help="target + reference drafter in this process")
    mode.add_argument("--server", metavar="URL", help="a running DSPARK sglang server")
    parser.add_argument("--prompts", required=True, help="JSONL prompt file")
    parser.add_argument("--target", default=None,
                        help="target model directory (default: the prepared SmolLM2-135M-Instruct; "
                        "server mode: the server's model path)")
    parser.add_argument("--drafter", default=None,
                        help=f"DeepSpec drafter directory (offline; default {SHIPPED_DRAFTER})")
    parser.add_argument("--max-prompts", type=int, default=None, help="first N prompts only")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--max-prompt-tokens", type=int, default=None,
                        help="skip prompts longer than this")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (prompt i: seed + i)")
    parser.add_argument("--no-chat-template", action="store_true",
                        help="encode plain 'prompt' entries as raw text")
    parser.add_argument("--concurrency", type=int, default=1, help="server: requests in flight")
    parser.add_argument("--threads", type=int, default=None, help="offline: torch threads")
    parser.add_argument("--out", default=None, help="JSON output path (the PNG goes beside it)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return parser


def _default_target() -> Path:
    from sglang_dspark.demo.prepare import default_model_dir

    return default_model_dir()


def _run(args: argparse.Namespace):
    prompts = load_eval_prompts(args.prompts, limit=args.max_prompts)
    common = dict(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
        chat_template=not args.no_chat_template, max_prompt_tokens=args.max_prompt_tokens,
        progress=not args.no_progress,
    )
    if args.offline:
        from sglang_dspark.eval_acceptance.offline import evaluate_offline, load_offline_models

        if args.threads:
            torch.set_num_threads(args.threads)
        target_dir = Path(args.target) if args.target else _default_target()
        drafter_dir = Path(args.drafter) if args.drafter else SHIPPED_DRAFTER
        if args.drafter is None and not drafter_dir.is_dir():
            raise EvalError(f"no shipped drafter at {drafter_dir} yet; pass --drafter DIR "
                            "(make drafter builds it).")
        target, tokenizer, drafter = load_offline_models(target_dir, drafter_dir)
        summary = evaluate_offline(target, tokenizer, drafter, prompts, **common)
        summary.settings.update(target=str(target_dir), drafter=str(drafter_dir))
    else:
        from transformers import AutoTokenizer

        from sglang_dspark.eval_acceptance.server import evaluate_server, server_model_path

        tokenizer_path = args.target or server_model_path(args.server)
        if not Path(tokenizer_path).exists():
            raise EvalError(f"tokenizer path {tokenizer_path} is not readable here; pass --target.")
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
        summary = evaluate_server(args.server, tokenizer, prompts,
                                  concurrency=args.concurrency, **common)
    summary.settings["prompts"] = str(args.prompts)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        summary = _run(args)
    except PromptFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except EvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_table(summary, title=f"acceptance on {args.prompts}"))
    if args.out:
        json_path = write_json(summary, args.out)
        png = plot_per_position(summary, json_path.with_suffix(".png"))
        print(f"wrote {json_path}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
