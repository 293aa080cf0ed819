"""Drafter training-step cost A/B on distilled data, measured side by side in one run.

    python -m bench.train_step_ab --target DIR --recipe recipes/smollm2-135m-drafter.json \
        --run .cache/drafter-v2 [--sequences 6] [--vocab 8192 16384] [--threads 2]

Times the forward + backward of the recipe's training step (all anchors the
recipe asks for) on the same distilled sequences for: the whole vocabulary vs
reduced draft vocabularies, fp32 vs bf16 autocast, the DSpark loss vs its
cross-entropy phase. Prints seconds per sequence and supervised slots per
second per variant, with ratios to the recipe-as-written baseline (fp32, whole
vocabulary, DSpark loss), and writes ``train_step_ab.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from sglang_dspark.train.distill import DistilledData
from sglang_dspark.train.recipe import load_recipe
from sglang_dspark.train.target import load_target
from sglang_dspark.train.trainer import Trainer


def _variant(recipe, *, vocab: int | None, dtype: str, ce: bool):
    return dataclasses.replace(
        recipe,
        drafter=dataclasses.replace(recipe.drafter, draft_vocab_size=vocab),
        train=dataclasses.replace(recipe.train, compute_dtype=dtype),
        loss=dataclasses.replace(recipe.loss, ce_only_ratio=1.0 if ce else 0.0),
    )


def _time_variant(recipe, target, tokenizer, data, indices, out_dir: Path) -> dict:
    trainer = Trainer(recipe, target, tokenizer, out_dir, progress=False)
    drafter = trainer.build_drafter(trainer.draft_vocab(data))
    ce = recipe.loss.ce_only_ratio > 0
    gen = torch.Generator().manual_seed(0)
    # One warm-up sequence, then the timed ones.
    trainer._micro_step(drafter, data, indices[:1], gen, ce_phase=ce).loss.backward()
    slots, tic = 0, time.perf_counter()
    for i in indices[1:]:
        out = trainer._micro_step(drafter, data, [i], gen, ce_phase=ce)
        out.loss.backward()
        slots += int(out.accept_count.sum())
    seconds = time.perf_counter() - tic
    n = len(indices) - 1
    return {
        "seconds_per_sequence": round(seconds / n, 3),
        "supervised_slots_per_second": round(slots / seconds, 1),
        **trainer.vocab_stats,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--run", required=True, help="training run directory holding data/")
    parser.add_argument("--sequences", type=int, default=6)
    parser.add_argument("--vocab", type=int, nargs="+", default=[8192, 16384])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="out/bench/train-step-ab")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    target, tokenizer = load_target(args.target)
    data = DistilledData(Path(args.run) / "data")
    indices = data.indices("train")[: args.sequences + 1]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    variants = [("fp32, whole vocab, DSpark loss", _variant(recipe, vocab=None, dtype="float32", ce=False)),
                ("bf16, whole vocab, DSpark loss", _variant(recipe, vocab=None, dtype="bfloat16", ce=False)),
                ("bf16, whole vocab, CE phase", _variant(recipe, vocab=None, dtype="bfloat16", ce=True))]
    for size in args.vocab:
        variants.append((f"bf16, vocab {size}, CE phase", _variant(recipe, vocab=size, dtype="bfloat16", ce=True)))
        variants.append((f"bf16, vocab {size}, DSpark loss", _variant(recipe, vocab=size, dtype="bfloat16", ce=False)))
    rows = []
    for name, variant in variants:
        row = {"variant": name, **_time_variant(variant, target, tokenizer, data, indices, out_dir / "scratch")}
        rows.append(row)
        base = rows[0]["seconds_per_sequence"]
        print(f"{name:34s} {row['seconds_per_sequence']:7.3f} s/seq  "
              f"{row['supervised_slots_per_second']:8.1f} slots/s  x{base / row['seconds_per_sequence']:.2f}",
              flush=True)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "sequences": args.sequences,
        "num_anchors": recipe.train.num_anchors,
        "rows": rows,
    }
    (out_dir / "train_step_ab.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
