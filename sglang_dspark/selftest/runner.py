"""Runs the selected check groups in order and collects one :class:`SelftestReport`.

Order: the MoE cases (they hold the largest tensors, freed afterwards), then
the tiny models' draft-verify loop and trainer steps. A check that raises
becomes a FAIL line naming the exception; the other checks still run.
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from sglang_dspark import __version__
from sglang_dspark.selftest.config import SelftestConfig
from sglang_dspark.selftest.device_facts import DeviceFacts, describe_device, package_versions
from sglang_dspark.selftest.results import CheckResult, SelftestReport, Status, crashed


def _serving_line(facts: DeviceFacts) -> str:
    from sglang_dspark.sglang.serving_choice import MXFP4_RUNNER_ENV, ServingChoiceError, choose_mxfp4, requested

    try:
        return choose_mxfp4(device=facts.kind, sm=facts.capability, asked=requested(MXFP4_RUNNER_ENV)).line()
    except ServingChoiceError as e:
        return f"flashinfer_mxfp4 would not serve here: {e}"


def _guarded(check: str, case: str, fn: Callable[[], CheckResult]) -> CheckResult:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - any error is this check's FAIL
        return crashed(check, case, e)


def _header(config: SelftestConfig, facts: DeviceFacts, versions: dict[str, str], notes: list[str]) -> list[str]:
    plan = config.plan
    timing = ("CUDA events, L2 flushed before each call" if facts.kind == "cuda"
              else "wall clock, Triton interpreter")
    moe = (f"MoE layer: {config.shape.line()}; {plan.num_experts} experts under test, {plan.act_dtype} activations, "
           f"T = {', '.join(map(str, plan.tokens))}; median of {plan.repeats} call(s) after {plan.warmup} "
           f"warm-up ({timing})")
    return [
        facts.line(),
        "packages: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        moe,
        _serving_line(facts),
        *notes,
    ]


def run_selftest(config: SelftestConfig) -> SelftestReport:
    """Run ``config``'s checks on ``config.device``; nothing is written (see :mod:`.report`)."""
    from tqdm.auto import tqdm

    from sglang_dspark.selftest.moe_checks import count_steps, prepare_triton_env, run_moe_checks

    start = time.perf_counter()
    notes = [n for n in (prepare_triton_env(config.device),) if n]
    facts = describe_device(config.device, config.peak_tbps)
    versions = package_versions()
    header = _header(config, facts, versions, notes)
    runs_moe = config.runs("moe") or config.runs("flashinfer")
    tiny_checks = [g for g in ("draft-verify", "trainer") if config.runs(g)]
    total = (count_steps(config) if runs_moe else 0) + (len(tiny_checks) + 1 if tiny_checks else 0)
    results: list[CheckResult] = []
    with tqdm(total=total, desc="selftest", unit="step", file=sys.stderr, disable=not config.progress) as bar:

        def step(label: str) -> None:
            bar.set_postfix_str(label)
            bar.update(1)

        if runs_moe:
            try:
                results += run_moe_checks(config, facts, step)
            except Exception as e:  # noqa: BLE001 - e.g. out of memory while making the weights
                results.append(crashed("moe cases", "setup", e))
            gc.collect()
            if facts.kind == "cuda":
                torch.cuda.empty_cache()
        if tiny_checks:
            results += _tiny_model_checks(config, facts, tiny_checks, step)
    title = (f"sglang-dspark {__version__} selftest on {facts.name} ({facts.kind}"
             f"{', --quick' if config.quick else ''})")
    context = {
        "device": asdict(facts),
        "packages": versions,
        "moe_shape": asdict(config.shape),
        "plan": asdict(config.plan),
        "checks": list(config.checks),
        "seed": config.seed,
    }
    return SelftestReport(title, tuple(header), tuple(results), time.perf_counter() - start, context)


def _tiny_model_checks(
    config: SelftestConfig, facts: DeviceFacts, groups: list[str], step: Callable[[str], None]
) -> list[CheckResult]:
    from sglang_dspark.selftest import draft_verify_check, trainer_check
    from sglang_dspark.selftest.tiny_models import make_tiny_models, transformers_missing

    names = {"draft-verify": draft_verify_check.CHECK, "trainer": trainer_check.CHECK}
    missing = transformers_missing()
    if missing:
        for _ in range(len(groups) + 1):
            step("tiny models skipped")
        return [CheckResult(names[g], "tiny models", Status.SKIP, note=missing) for g in groups]
    results = []
    with tempfile.TemporaryDirectory(prefix="sglang-dspark-selftest-") as work:
        try:
            models = make_tiny_models(Path(work), config.seed)
        except Exception as e:  # noqa: BLE001
            for _ in range(len(groups) + 1):
                step("tiny models failed")
            return [crashed(names[g], "tiny models", e) for g in groups]
        step("tiny models")
        if "draft-verify" in groups:
            results.append(_guarded(draft_verify_check.CHECK, "tiny target", lambda: draft_verify_check.check_draft_verify(
                models, facts.kind, config.plan)))
            step("draft-verify")
        if "trainer" in groups:
            results.append(_guarded(trainer_check.CHECK, "tiny recipe", lambda: trainer_check.check_trainer(
                models, facts.kind, config.plan, Path(work), seed=config.seed)))
            step("trainer")
    return results
