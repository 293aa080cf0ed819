"""Ship a trained drafter into the repository: copy, size check, acceptance floor, metadata.

``python -m sglang_dspark.train.ship --run RUN --target DIR [--dest DIR]``
takes ``RUN/drafter`` as the trainer left it (``config.json``,
``model.safetensors``, ``sts_calibration.json``, ``recipe.json``,
``training_log.json``), checks the shipped files against the size limit
(25 MB: the repository carries them), loads the copy against the target
(the loader's fit checks), measures offline greedy acceptance on the floor
prompt set and writes ``metadata.json``. Its ``floor`` entry is what the
shipped-drafter test re-measures: the same prompts and budgets, and a
minimum of the measured mean accepted length less ``margin``, but never
less than half the measured gain over 1 (greedy decoding is deterministic up
to floating-point ties between thread counts and machines, which the margin
absorbs; the half-gain bound keeps a weak drafter's floor above 1, the
length every step reaches without any accepted draft). ``--eval FILE`` adds full-length
figures on more prompt files for the record.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = [
    "DEFAULT_DEST",
    "FloorSpec",
    "SIZE_LIMIT_BYTES",
    "ShipError",
    "acceptance_floor",
    "measure_acceptance",
    "ship_drafter",
]

DEFAULT_DEST = Path(__file__).resolve().parents[1] / "drafters" / "smollm2-135m"
SIZE_LIMIT_BYTES = 25_000_000
SHIPPED_FILES = ("config.json", "model.safetensors", "sts_calibration.json", "recipe.json")
METADATA = "metadata.json"


class ShipError(RuntimeError):
    """The run has no finished drafter, or the drafter is too large or does not load."""


@dataclass(frozen=True)
class FloorSpec:
    """How the acceptance floor is measured (offline, greedy).

    Attributes:
        prompts: prompt file, relative to the repository root.
        num_prompts: first N prompts.
        max_new_tokens: generation budget per prompt.
        margin: floor = measured mean accepted length - margin, and at least
            1 + half the measured gain (see :func:`acceptance_floor`).
    """

    prompts: str = "tests/data/eval_chat.jsonl"
    num_prompts: int = 4
    max_new_tokens: int = 32
    margin: float = 0.1

    def __post_init__(self) -> None:
        if self.num_prompts < 1 or self.max_new_tokens < 1:
            raise ValueError("num_prompts and max_new_tokens must be >= 1.")
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"margin must be in [0, 1), got {self.margin}.")


def measure_acceptance(
    drafter_dir: str | Path,
    target_dir: str | Path,
    prompts: str | Path,
    *,
    num_prompts: int | None,
    max_new_tokens: int,
    progress: bool = False,
):
    """Offline greedy :class:`~sglang_dspark.eval_acceptance.summary.AcceptanceSummary`."""
    from sglang_dspark.eval_acceptance import load_eval_prompts
    from sglang_dspark.eval_acceptance.offline import evaluate_offline, load_offline_models

    target, tokenizer, drafter = load_offline_models(target_dir, drafter_dir)
    rows = load_eval_prompts(prompts, limit=num_prompts)
    return evaluate_offline(
        target, tokenizer, drafter, rows, max_new_tokens=max_new_tokens, progress=progress
    )


def acceptance_floor(measured: float, margin: float) -> float:
    """``measured - margin``, but at least ``1 + (measured - 1) / 2``: above 1 whenever drafts were accepted."""
    return round(max(measured - margin, 1.0 + max(0.0, measured - 1.0) / 2), 4)


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def ship_drafter(
    run_dir: str | Path,
    target_dir: str | Path,
    dest: str | Path = DEFAULT_DEST,
    *,
    floor: FloorSpec = FloorSpec(),
    root: str | Path = ".",
    size_limit: int = SIZE_LIMIT_BYTES,
    eval_files: Sequence[str] = (),
    eval_max_new_tokens: int = 128,
    progress: bool = True,
) -> dict[str, Any]:
    """Copy ``run_dir/drafter`` to ``dest`` with ``metadata.json``; return the metadata.

    Raises:
        ShipError: missing files, over the size limit, or a drafter that does
            not load against the target (``dest`` is left untouched then).
    """
    from sglang_dspark.eval_acceptance import EvalError
    from sglang_dspark.train.distill import target_fingerprint

    src, dest, root = Path(run_dir) / "drafter", Path(dest), Path(root)
    missing = [name for name in (*SHIPPED_FILES, "training_log.json") if not (src / name).is_file()]
    if missing:
        raise ShipError(
            f"{src} lacks {missing}: the training run has not finished (rerun the trainer "
            "with --resume)."
        )
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        for name in SHIPPED_FILES:
            shutil.copy2(src / name, tmp / name)
        summary = json.loads((src / "training_log.json").read_text()).get("summary", {})
        (tmp / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        size = _size(tmp)
        if size > size_limit:
            raise ShipError(
                f"the drafter files take {size / 1e6:.1f} MB, over the {size_limit / 1e6:.1f} MB "
                "limit: export in bfloat16, or shrink the recipe (markov_rank, layers)."
            )
        try:
            measured = measure_acceptance(
                tmp, target_dir, root / floor.prompts, num_prompts=floor.num_prompts,
                max_new_tokens=floor.max_new_tokens, progress=progress,
            )
            evals = {}
            for path in eval_files:
                s = measure_acceptance(tmp, target_dir, path, num_prompts=None,
                                       max_new_tokens=eval_max_new_tokens, progress=progress)
                evals[str(path)] = {k: s.to_dict()[k] for k in (
                    "mean_accept_length", "per_position_acceptance", "num_prompts", "num_steps",
                    "num_tokens")} | {"max_new_tokens": eval_max_new_tokens}
        except EvalError as exc:
            raise ShipError(str(exc)) from exc
        mean = float(measured.mean_accept_length or 1.0)
        metadata = {
            "name": dest.name,
            "target": {"path": str(Path(target_dir).resolve()),
                       "fingerprint": target_fingerprint(target_dir)},
            "files": sorted(p.name for p in tmp.iterdir()) + [METADATA],
            "size_bytes": size,
            "size_limit_bytes": size_limit,
            "heldout_mean_committed": summary.get("heldout_mean_committed"),
            "floor": {
                **asdict(floor),
                "temperature": 0.0,
                "torch_threads": torch.get_num_threads(),
                "measured_mean_accept_length": mean,
                "min_mean_accept_length": acceptance_floor(mean, floor.margin),
            },
            "eval": evals,
        }
        (tmp / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return metadata


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m sglang_dspark.train.ship",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="trainer output directory (has drafter/)")
    parser.add_argument("--target", required=True, help="the target model directory")
    parser.add_argument("--dest", default=str(DEFAULT_DEST), help="where the drafter is shipped")
    parser.add_argument("--floor-prompts", default=FloorSpec.prompts)
    parser.add_argument("--floor-num-prompts", type=int, default=FloorSpec.num_prompts)
    parser.add_argument("--floor-max-new-tokens", type=int, default=FloorSpec.max_new_tokens)
    parser.add_argument("--floor-margin", type=float, default=FloorSpec.margin)
    parser.add_argument("--eval", action="append", default=[],
                        help="also record full figures on this prompt file (repeatable)")
    parser.add_argument("--eval-max-new-tokens", type=int, default=128)
    parser.add_argument("--size-limit-mb", type=float, default=SIZE_LIMIT_BYTES / 1e6)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        floor = FloorSpec(args.floor_prompts, args.floor_num_prompts, args.floor_max_new_tokens,
                          args.floor_margin)
        meta = ship_drafter(args.run, args.target, args.dest, floor=floor,
                            size_limit=int(args.size_limit_mb * 1e6), eval_files=args.eval,
                            eval_max_new_tokens=args.eval_max_new_tokens)
    except (ShipError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    f = meta["floor"]
    print(f"shipped {args.dest}: {meta['size_bytes'] / 1e6:.1f} MB, floor accepted length "
          f"{f['min_mean_accept_length']} (measured {f['measured_mean_accept_length']:.3f})")
    for path, e in meta["eval"].items():
        print(f"  {path}: mean accepted length {e['mean_accept_length']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
