"""``python -m sglang_dspark.train --target DIR --recipe R.json --out DIR [--resume] [--seed N] [--device cpu|cuda]``.

Runs corpus -> self-distillation -> training -> STS calibration -> export
(see :mod:`sglang_dspark.train.trainer`). Distillation always resumes by shard;
training resumes from the newest checkpoint with ``--resume`` (without it an
output directory that already has checkpoints is refused). SIGINT/SIGTERM
write a checkpoint and exit; rerun with ``--resume``.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from sglang_dspark.train.recipe import RecipeError, load_recipe
from sglang_dspark.train.trainer import TrainError, run_training


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m sglang_dspark.train",
        description="Train a DSpark drafter (DeepSpec format) for a Hugging Face target by "
        "self-distillation on an offline prompt corpus.",
    )
    parser.add_argument("--target", required=True, help="target model directory (HF format)")
    parser.add_argument("--recipe", required=True, help="training recipe JSON (see recipes/)")
    parser.add_argument("--out", required=True, help="output directory (data, checkpoints, drafter)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="training seed (init, order, anchors)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: the recipe's torch_threads)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="build the corpus and distil it (resumable by shard), then exit")
    parser.add_argument("--no-distill", action="store_true",
                        help="train on the shards distilled so far (finish the rest later with "
                        "--prepare-only)")
    parser.add_argument("--answers", default=None,
                        help="stored answers (gzip'd JSON lines, python -m sglang_dspark.train.answers): "
                        "prompts it holds are read out, not generated again")
    parser.add_argument("--init-from", default=None,
                        help="a drafter directory of the recipe's architecture to continue training from "
                        "(its weights and draft vocabulary; e.g. the shipped drafter) instead of a random init; "
                        "with fewer draft layers than the recipe, the extra layers go on top as the identity")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars (log lines only)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        recipe = load_recipe(args.recipe)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads or recipe.torch_threads)
    try:
        result = run_training(
            args.target,
            recipe,
            args.out,
            seed=args.seed,
            device=args.device,
            resume=args.resume,
            progress=not args.no_progress,
            prepare_only=args.prepare_only,
            distill_missing=not args.no_distill,
            answers_file=args.answers,
            init_from=args.init_from,
        )
    except (TrainError, RecipeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if result is None and args.prepare_only:
        print(f"data ready in {args.out}/data")
        return 0
    if result is None:
        print("stopped early; rerun with --resume to continue", file=sys.stderr)
        return 3
    print(result.drafter_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
