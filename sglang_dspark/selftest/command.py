"""``sglang-dspark selftest [--device cuda|cpu] [--quick] [--out DIR]``: prove a node before a deployment.

Prints one table (docs/selftest.md explains each line), writes
``selftest.json``, ``selftest.txt`` and ``selftest.png`` into ``--out``.
Exit status 0 when every correctness check passed, 1 when any failed, 2 on a
usage error (e.g. ``--device cuda`` without a GPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sglang_dspark.selftest.config import CHECK_GROUPS, SelftestConfig, SelftestConfigError, V4_FLASH_MOE


def _checks(text: str) -> tuple[str, ...]:
    groups = tuple(dict.fromkeys(g.strip() for g in text.split(",") if g.strip()))
    unknown = [g for g in groups if g not in CHECK_GROUPS]
    if unknown or not groups:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(CHECK_GROUPS)}")
    return groups


def add_parser(groups: argparse._SubParsersAction) -> None:
    """Attach ``selftest`` to the top-level parser."""
    p = groups.add_parser(
        "selftest",
        help="check this node's kernels, draft-verify loop and trainer against pure-torch references; time them",
        description="Check MXFP4 dequantisation, the fused Triton MoE kernel, FlashInfer's MXFP4 MoE, the "
                    "DSPARK draft-verify loop and the drafter trainer on this node against pure-torch references, "
                    "time them, and write selftest.json/.txt/.png. Exit 0: every check passed; 1: a check failed; "
                    "2: usage error. See docs/selftest.md.",
    )
    p.add_argument("--device", choices=("cuda", "cpu"),
                   help="device under test (default: cuda when torch sees a GPU, else cpu)")
    p.add_argument("--quick", action="store_true", help="fewer token counts and repeats (CPU: 8 experts, T = 1)")
    p.add_argument("--out", type=Path, default=Path("selftest-out"),
                   help="directory for selftest.json, selftest.txt and selftest.png (default: ./selftest-out)")
    p.add_argument("--only", type=_checks, default=CHECK_GROUPS, metavar="GROUPS",
                   help=f"comma-separated check groups to run (default: all of {','.join(CHECK_GROUPS)})")
    p.add_argument("--model-config", type=Path,
                   help="read the MoE sizes from this config.json (default: DeepSeek-V4-Flash's: "
                        f"{V4_FLASH_MOE.line()})")
    p.add_argument("--peak-tbps", type=float, help="HBM peak in TB/s, for a GPU missing from the table")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights, inputs and tiny models")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """``selftest``: run, print the table, write the files; 0 pass, 1 a check failed, 2 usage error."""
    import torch

    from sglang_dspark.selftest.config import moe_shape_from_config

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("sglang-dspark selftest: --device cuda, but torch sees no CUDA GPU "
              f"(torch {torch.__version__}); use --device cpu for the CPU subset", file=sys.stderr)
        return 2
    try:
        shape = moe_shape_from_config(args.model_config) if args.model_config else V4_FLASH_MOE
        config = SelftestConfig(device=device, quick=args.quick, out_dir=args.out, checks=args.only, shape=shape,
                                peak_tbps=args.peak_tbps, progress=not args.no_progress, seed=args.seed)
    except SelftestConfigError as e:
        print(f"sglang-dspark selftest: {e}", file=sys.stderr)
        return 2

    from sglang_dspark.selftest.report import render_table, write_outputs
    from sglang_dspark.selftest.runner import run_selftest

    report = run_selftest(config)
    print(render_table(report))
    for line in write_outputs(report, config.out_dir):
        print(line)
    return report.exit_code
