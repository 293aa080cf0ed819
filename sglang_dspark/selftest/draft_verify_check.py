"""The DSPARK draft-verify loop on the device: greedy, it must commit exactly the target's greedy tokens.

Runs :func:`sglang_dspark.train.evaluate.evaluate_acceptance` (target prefill,
then per step: the drafter drafts a block from the last committed token, the
target verifies anchor plus block in one forward,
:func:`~sglang_dspark.algorithm.verify.verify_block` keeps the accepted prefix
plus one target token, the KV caches are cropped and extended) with the tiny
target and copy drafter of :mod:`.tiny_models`, in float32 with full-precision
matmuls. PASS when, for every prompt:

* the committed tokens equal plain greedy decoding of the target on the same
  device (:func:`~sglang_dspark.train.evaluate.greedy_decode`);
* on a GPU, they also equal the same loop run on the CPU, token for token;
* some drafts were accepted (otherwise multi-token commits went untested).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from sglang_dspark.selftest.config import SelftestPlan
from sglang_dspark.selftest.precision import full_float32_matmuls
from sglang_dspark.selftest.results import CheckResult, Status
from sglang_dspark.selftest.tiny_models import TinyModels, quiet_transformers

CHECK = "draft-verify"
PROMPTS: tuple[str, ...] = (
    "Hello there, how are you today?",
    "def add(a, b):\n    return",
    "Write a haiku about the rain.",
    "1, 2, 3, 4, 5,",
    "The capital of France is",
    "for i in range(10):",
    "Tell me a short story about a cat.",
    "SELECT name FROM users WHERE",
)


@dataclass(frozen=True)
class LoopRun:
    """One device's speculative and plain greedy outputs."""

    device: str
    outputs: tuple[tuple[int, ...], ...]
    greedy: tuple[tuple[int, ...], ...]
    mean_committed: float
    per_position: tuple[float, ...]
    steps: int
    seconds: float


def run_loop(models: TinyModels, device: str, prompts: tuple[str, ...], max_new_tokens: int) -> LoopRun:
    """The draft-verify loop and plain greedy decoding of ``prompts`` on ``device``."""
    from sglang_dspark.models.deepspec_drafter import load_deepspec_drafter
    from sglang_dspark.train.evaluate import evaluate_acceptance, greedy_decode
    from sglang_dspark.train.target import load_target

    with quiet_transformers(), full_float32_matmuls():
        target, tokenizer = load_target(models.target_dir, device=device, dtype=torch.float32)
        drafter = load_deepspec_drafter(
            models.drafter_dir, embed_tokens=target.get_input_embeddings(), lm_head=target.get_output_embeddings()
        )
        ids = [list(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        tic = time.perf_counter()
        report = evaluate_acceptance(target, tokenizer, drafter, ids, max_new_tokens=max_new_tokens)
        seconds = time.perf_counter() - tic
        greedy = tuple(tuple(greedy_decode(target, p, max_new_tokens=max_new_tokens)) for p in ids)
    return LoopRun(
        device=device,
        outputs=tuple(tuple(o) for o in report.outputs),
        greedy=greedy,
        mean_committed=report.mean_committed,
        per_position=tuple(report.per_position),
        steps=report.num_steps,
        seconds=seconds,
    )


def _first_difference(a: tuple[tuple[int, ...], ...], b: tuple[tuple[int, ...], ...]) -> str | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            at = next((j for j, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
            return f"prompt {i}, token {at}"
    return None if len(a) == len(b) else "a prompt is missing"


def check_draft_verify(models: TinyModels, device: str, plan: SelftestPlan) -> CheckResult:
    """Run the loop on ``device`` (and on CPU when that is a GPU); judge it (module docstring)."""
    prompts = PROMPTS[: plan.draft_prompts]
    case = f"{len(prompts)} prompts x {plan.draft_new_tokens} tokens"
    run = run_loop(models, device, prompts, plan.draft_new_tokens)
    cpu = run if device == "cpu" else run_loop(models, "cpu", prompts, plan.draft_new_tokens)
    committed = sum(len(o) for o in run.outputs)
    data = {
        "device_outputs": [list(o) for o in run.outputs],
        "cpu_outputs": [list(o) for o in cpu.outputs],
        "mean_committed_per_step": run.mean_committed,
        "accept_per_position": [None if x != x else x for x in run.per_position],
        "verify_steps": run.steps,
        "loop_seconds": run.seconds,
    }
    problems = []
    diff = _first_difference(run.outputs, run.greedy)
    if diff:
        problems.append(f"committed tokens differ from plain greedy decoding on {device} at {diff}")
    if device != "cpu":
        diff = _first_difference(run.outputs, cpu.outputs)
        if diff:
            problems.append(f"{device} run differs from the CPU run at {diff}")
    if not run.mean_committed > 1.0:
        problems.append("no draft was accepted, so multi-token commits were not exercised")
    same_cpu = "" if device == "cpu" else ", == the CPU run"
    note = (f"{committed} committed tokens == plain greedy{same_cpu}; "
            f"{run.mean_committed:.2f} tokens/verify step over {run.steps} steps")
    if problems:
        return CheckResult(CHECK, case, Status.FAIL, note="; ".join(problems), data=data)
    return CheckResult(CHECK, case, Status.PASS, note=note, data=data)
