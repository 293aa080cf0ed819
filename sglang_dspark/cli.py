"""``sglang-dspark`` console command: dispatches to the sub-command groups."""

from __future__ import annotations

import argparse
import sys

from sglang_dspark import __version__


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command group attached."""
    from sglang_dspark.gpustack import cli as gpustack_cli
    from sglang_dspark.models import download_command
    from sglang_dspark.selftest import command as selftest_command
    from sglang_dspark.sglang import preflight

    parser = argparse.ArgumentParser(prog="sglang-dspark", description="sglang-dspark tools")
    parser.add_argument("--version", action="version", version=f"sglang-dspark {__version__}")
    groups = parser.add_subparsers(dest="group", required=True, metavar="{gpustack,download,preflight,selftest}")
    gpustack_cli.add_parser(groups)
    download_command.add_parser(groups)
    preflight.add_parser(groups)
    selftest_command.add_parser(groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
