"""Offline mode: target and reference drafter in this process.

Decoding is :func:`sglang_dspark.train.evaluate.evaluate_acceptance` (whole
block verified every step, greedy unless a temperature is given), run one
prompt at a time so progress and per-prompt figures can be reported.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import torch

from sglang_dspark.algorithm.config import DSparkConfigError
from sglang_dspark.eval_acceptance.errors import EvalError
from sglang_dspark.eval_acceptance.prompts import EvalPrompt, encode_prompt
from sglang_dspark.eval_acceptance.summary import AcceptanceSummary, histogram_from_counts
from sglang_dspark.models.deepspec_drafter import (
    DeepSpecDrafter,
    DrafterCheckpointError,
    load_deepspec_drafter,
)
from sglang_dspark.train.evaluate import evaluate_acceptance
from sglang_dspark.train.target import load_target

__all__ = ["evaluate_offline", "load_offline_models"]


def load_offline_models(
    target_dir: str | Path, drafter_dir: str | Path, *, device: str = "cpu"
) -> tuple[Any, Any, DeepSpecDrafter]:
    """Load the target (float32), its tokenizer and the drafter sharing its embedding and LM head.

    Raises:
        EvalError: a directory is missing, or the drafter does not fit the
            target (the loader's validation: layer ids, hidden size,
            vocabulary, tensor names and shapes).
    """
    target_dir, drafter_dir = Path(target_dir), Path(drafter_dir)
    for what, path in (("target", target_dir), ("drafter", drafter_dir)):
        if not (path / "config.json").is_file():
            raise EvalError(f"{what} directory {path} has no config.json.")
    target, tokenizer = load_target(target_dir, device=device)
    try:
        drafter = load_deepspec_drafter(
            drafter_dir,
            embed_tokens=target.get_input_embeddings(),
            lm_head=target.get_output_embeddings(),
            num_target_layers=int(target.config.num_hidden_layers),
        )
    except (DSparkConfigError, DrafterCheckpointError) as exc:
        raise EvalError(f"drafter {drafter_dir} does not fit target {target_dir}: {exc}") from exc
    return target, tokenizer, drafter


def evaluate_offline(
    target: Any,
    tokenizer: Any,
    drafter: DeepSpecDrafter,
    prompts: Sequence[EvalPrompt],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
    chat_template: bool = True,
    max_prompt_tokens: int | None = None,
    progress: bool = True,
) -> AcceptanceSummary:
    """Speculative decoding of every prompt; acceptance summary with per-prompt rows.

    Prompts longer than ``max_prompt_tokens`` are skipped (counted in
    ``extra["skipped_prompts"]``). Prompt ``i`` samples with seed ``seed + i``.
    """
    from tqdm.auto import tqdm

    if max_new_tokens < 1:
        raise EvalError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    K = drafter.config.block_size
    histogram = [0] * (K + 2)
    rows: list[dict[str, Any]] = []
    skipped: list[int] = []
    tokens = 0
    start = time.perf_counter()
    bar = tqdm(prompts, desc="offline eval", unit="prompt", disable=not progress)
    for i, prompt in enumerate(bar):
        ids = encode_prompt(tokenizer, prompt, chat_template=chat_template)
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            skipped.append(prompt.line)
            continue
        report = evaluate_acceptance(
            target, tokenizer, drafter, [ids], max_new_tokens=max_new_tokens,
            temperature=temperature, seed=seed + i,
        )
        hist = histogram_from_counts(report.num_steps, report.accepted)
        histogram = [a + b for a, b in zip(histogram, hist)]
        tokens += len(report.outputs[0])
        rows.append({
            "line": prompt.line,
            "prompt_tokens": len(ids),
            "new_tokens": len(report.outputs[0]),
            "verify_steps": report.num_steps,
            "mean_accept_length": report.mean_committed if report.num_steps else None,
        })
        steps = sum(histogram)
        if steps:
            bar.set_postfix(accept=f"{sum(n * c for n, c in enumerate(histogram)) / steps:.2f}")
    return AcceptanceSummary(
        mode="offline",
        histogram=tuple(histogram),
        num_prompts=len(rows),
        num_tokens=tokens,
        seconds=time.perf_counter() - start,
        settings={
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "seed": seed,
            "chat_template": chat_template,
            "block_size": K,
            "torch_threads": torch.get_num_threads(),
        },
        extra={"skipped_prompts": skipped, "prompts": rows},
    )
