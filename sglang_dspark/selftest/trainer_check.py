"""The drafter trainer's step time on the device: a few optimizer steps of the tiny recipe.

Runs :class:`sglang_dspark.train.trainer.Trainer` as ``python -m
sglang_dspark.train`` does (self-distillation of a small corpus by the tiny
target, then AdamW steps of a one-layer drafter), with every step logged on
its own and no validation or checkpoint inside the timed steps. Reports the
first step (warm-up: allocator, kernel selection) apart from the median of
the others, and the supervised draft slots per second, the throughput that
scales a training budget. PASS when every step ran with a finite loss; the
numbers are measurements, not pass criteria.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from sglang_dspark.selftest.config import SelftestPlan
from sglang_dspark.selftest.results import CheckResult, Status
from sglang_dspark.selftest.tiny_models import TinyModels, quiet_transformers
from sglang_dspark.train.recipe import Recipe

CHECK = "trainer step"

# recipes/tiny-drafter.json (not shipped in the wheel), with a smaller corpus and
# logging changed so that each step is timed alone; tests/selftest checks the copy.
TINY_RECIPE: dict[str, Any] = {
    "name": "tiny-drafter-selftest",
    "torch_threads": 1,
    "drafter": {
        "block_size": 4, "num_draft_layers": 1, "target_layer_ids": [0, 1, 2], "mask_token_id": 259,
        "markov_rank": 16, "markov_head_type": "vanilla", "enable_confidence_head": True,
        "confidence_head_with_markov": True, "init_std": 0.02,
    },
    "corpus": {"seed": 0, "num_chat": 6, "num_code": 4, "heldout_fraction": 0.2, "max_chars": 140},
    "distill": {"max_prompt_tokens": 200, "max_new_tokens": 40, "temperature": 0.0, "batch_size": 8,
                "shard_size": 16, "hidden_dtype": "bfloat16"},
    "train": {"num_anchors": 24, "micro_batch_size": 2, "batch_size": 4, "max_steps": 10,
              "lr": 0.003, "warmup_ratio": 0.1, "weight_decay": 0.0, "max_grad_norm": 1.0,
              "log_every": 1, "checkpoint_every": 1_000_000, "keep_checkpoints": 1, "val_blocks": 0,
              "max_seq_len": 512},
    "loss": {"ce_alpha": 0.1, "l1_alpha": 0.9, "confidence_alpha": 1.0, "decay_gamma": 4.0},
    "calibration": {"max_blocks": 512, "n_bins": 10},
    "export": {"dtype": "float32"},
}  # fmt: skip


def selftest_recipe(steps: int) -> Recipe:
    """:data:`TINY_RECIPE` with ``steps`` optimizer steps."""
    raw = {**TINY_RECIPE, "train": {**TINY_RECIPE["train"], "max_steps": int(steps)}}
    return Recipe.from_dict(raw, source="selftest tiny recipe")


def check_trainer(models: TinyModels, device: str, plan: SelftestPlan, work_dir: Path, seed: int = 0) -> CheckResult:
    """Distil, run ``plan.trainer_steps`` steps on ``device`` with the recipe's torch threads, report the times."""
    recipe = selftest_recipe(plan.trainer_steps)
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.torch_threads)  # as python -m sglang_dspark.train does
    try:
        with quiet_transformers():
            return _timed_steps(recipe, models, device, plan, Path(work_dir), seed)
    finally:
        torch.set_num_threads(threads)


def _timed_steps(recipe: Recipe, models: TinyModels, device: str, plan: SelftestPlan, work_dir: Path,
                 seed: int) -> CheckResult:
    from sglang_dspark.train.target import load_target
    from sglang_dspark.train.trainer import Trainer

    case = f"tiny recipe, {plan.trainer_steps} steps"
    target, tokenizer = load_target(models.target_dir, device=device)
    trainer = Trainer(recipe, target, tokenizer, work_dir / "trainer-run", seed=seed, device=device,
                      target_dir=models.target_dir, progress=False)
    tic = time.perf_counter()
    data = trainer.prepare_data()
    distill_s = time.perf_counter() - tic
    _, steps, finished = trainer.train(data)
    entries = [e for e in trainer.log if "seconds_per_step" in e]
    step_ms = [1e3 * e["seconds_per_step"] for e in entries]
    slots = [e["supervised_slots_per_second"] for e in entries[1:]]
    losses = [e["loss"] for e in entries]
    data_out = {
        "step_ms": step_ms,  # the trainer logs seconds with 3 decimals: 1 ms resolution
        "first_step_ms": step_ms[0] if step_ms else None,
        "median_step_ms": statistics.median(step_ms[1:]) if len(step_ms) > 1 else None,
        "median_supervised_slots_per_second": statistics.median(slots) if slots else None,
        "losses": losses,
        "distill_seconds": distill_s,
        "train_sequences": len(data.indices("train")),
        "micro_batch_size": recipe.train.micro_batch_size,
        "batch_size": recipe.train.batch_size,
        "num_anchors": recipe.train.num_anchors,
    }
    if not finished or steps != plan.trainer_steps or len(step_ms) != steps:
        return CheckResult(CHECK, case, Status.FAIL, note=f"stopped after {steps} of {plan.trainer_steps} steps",
                           data=data_out)
    if not all(math.isfinite(x) for x in losses):
        return CheckResult(CHECK, case, Status.FAIL, note=f"non-finite loss: {losses}", data=data_out)
    note = (f"median {data_out['median_step_ms']:.0f} ms/step (steps 2-{steps}), first {step_ms[0]:.0f} ms; "
            f"{data_out['median_supervised_slots_per_second']:,.0f} supervised slots/s; distillation {distill_s:.1f} s")
    return CheckResult(CHECK, case, Status.PASS, note=note, data=data_out)
