"""The MoE cases: each implementation against the pure-torch reference, timed, on the plan's T.

Per T, on the device under test:

* the pure-torch reference (:func:`kernels.mxfp4_moe.reference.fused_moe_mxfp4_reference`);
* ``mxfp4 dequant``: the touched experts' weights, exactly (:mod:`.dequant_check`);
* ``triton moe``: the fused W4A16 kernel (:func:`kernels.mxfp4_moe.kernel.fused_moe_mxfp4`);
* ``flashinfer moe``: FlashInfer's fused MoE through
  :mod:`sglang_dspark.moe.flashinfer_mxfp4` (weights rearranged once, untimed);
  SKIP with the reason where FlashInfer or the GPU generation is missing;
* ``dequant+gemm``: the baseline of :mod:`.dense_baseline`.

Each implementation is timed (:mod:`.timing`) and its last output compared
with the reference; every implementation is charged the same bytes, the
MXFP4 weights and scales of the experts the batch routes to, so the bandwidth
shares compare directly.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any, Callable

import torch

from kernels.mxfp4_moe.reference import fused_moe_mxfp4_reference
from sglang_dspark.selftest import dequant_check
from sglang_dspark.selftest.config import SelftestConfig
from sglang_dspark.selftest.dense_baseline import dequant_dense_moe
from sglang_dspark.selftest.device_facts import DeviceFacts
from sglang_dspark.selftest.moe_cases import ExpertWeights, MoeBatch, make_batch, make_expert_weights
from sglang_dspark.selftest.precision import full_float32_matmuls
from sglang_dspark.selftest.results import CheckResult, Status, Timing, crashed, judged
from sglang_dspark.selftest.timing import timed_calls

TRITON = "triton moe"
FLASHINFER = "flashinfer moe"
BASELINE = "dequant+gemm"

_KERNEL_MODULE = "kernels.mxfp4_moe.kernel"

Step = Callable[[str], None]


def prepare_triton_env(device: str) -> str | None:
    """Point Triton at its interpreter on CPU (and away from it on CUDA) before the kernel is imported.

    Triton decides when a kernel is defined, so this must run before
    ``kernels.mxfp4_moe.kernel`` is imported; returns a note when it changed
    the environment.
    """
    if _KERNEL_MODULE in sys.modules:
        return None
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        os.environ["TRITON_INTERPRET"] = "1"
        return "TRITON_INTERPRET=1 set: the Triton kernel runs in Triton's interpreter on CPU"
    if device == "cuda" and os.environ.get("TRITON_INTERPRET") == "1":
        del os.environ["TRITON_INTERPRET"]
        return "TRITON_INTERPRET unset: the Triton kernel is compiled for the GPU"
    return None


def _triton_kernel(device: str) -> tuple[Any, str]:
    """The kernel module, or ``None`` and why it cannot run on ``device``."""
    if importlib.util.find_spec("triton") is None:
        return None, "triton is not installed"
    from triton.runtime.interpreter import InterpretedFunction

    kernel = importlib.import_module(_KERNEL_MODULE)
    # Triton fixed interpreter or compiler when the module defined its kernels.
    interpreted = isinstance(kernel._w2_kernel, InterpretedFunction)
    if device == "cpu" and not interpreted:
        return None, f"{_KERNEL_MODULE} was imported without TRITON_INTERPRET=1, so it cannot run on CPU"
    if device == "cuda" and interpreted:
        return None, f"{_KERNEL_MODULE} was imported with TRITON_INTERPRET=1 (interpreter, not the GPU)"
    return kernel, ""


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``max |got - want| / max |want|`` in float32 (NaN when ``got`` holds NaN)."""
    got, want = got.float(), want.float()
    scale = float(want.abs().max()) or 1.0
    return float((got - want).abs().max()) / scale


def _failure(check: str, case: str, tokens: int, e: BaseException) -> CheckResult:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # after an out-of-memory error the next cases still get their memory
    return crashed(check, case, e, tokens)


class _FlashinferImpl:
    """FlashInfer's MoE on the case weights (rearranged once, here), or why it is skipped or failed."""

    def __init__(self, weights: ExpertWeights, config: SelftestConfig) -> None:
        from sglang_dspark.moe import flashinfer_mxfp4 as fi

        self._fi = fi
        self._limit = config.shape.swiglu_limit
        self.skip_reason = ""
        self.error: BaseException | None = None
        self._prepared = None
        backend, why = fi.select_backend(weights.w13.device, config.shape.hidden, config.shape.intermediate)
        if backend is None:
            self.skip_reason = why
            return
        if config.plan.act_dtype != "bfloat16":
            self.skip_reason = f"FlashInfer takes bfloat16 activations; this plan uses {config.plan.act_dtype}"
            return
        try:
            self._prepared = fi.prepare_weights(*weights.tensors(), backend)
        except Exception as e:  # noqa: BLE001 - an adapter that cannot prepare fails every case
            self.error = e

    def __call__(self, batch: MoeBatch) -> torch.Tensor:
        return self._fi.flashinfer_moe(
            batch.hidden, self._prepared, batch.topk_weights, batch.topk_ids, swiglu_limit=self._limit
        )


def count_steps(config: SelftestConfig) -> int:
    """Progress steps :func:`run_moe_checks` reports."""
    per_t = 0
    if config.runs("moe"):
        per_t += 4  # reference, dequant, triton, baseline
    if config.runs("flashinfer"):
        per_t += 1 + (0 if config.runs("moe") else 1)
    return len(config.plan.tokens) * per_t + (1 if config.runs("moe") else 0)


def run_moe_checks(config: SelftestConfig, facts: DeviceFacts, step: Step) -> list[CheckResult]:
    """Every MoE case of the plan (module docstring); ``step(label)`` after each unit of work."""
    with full_float32_matmuls():
        return _run_cases(config, facts, step)


def _run_cases(config: SelftestConfig, facts: DeviceFacts, step: Step) -> list[CheckResult]:
    plan, shape, device = config.plan, config.shape, facts.kind
    dtype = getattr(torch, plan.act_dtype)
    results: list[CheckResult] = []
    if config.runs("moe"):
        try:
            results.append(dequant_check.check_code_sweep(device))
        except Exception as e:  # noqa: BLE001 - any error is this check's FAIL
            results.append(_failure(dequant_check.CHECK, "code sweep", 0, e))
        step("dequant code sweep")

    weights = make_expert_weights(shape, plan.num_experts, device, config.seed)
    kernel, kernel_skip = _triton_kernel(device) if config.runs("moe") else (None, "")
    tiles = None
    if kernel is not None and plan.tiles is not None:
        tiles = kernel.MoeConfig(*plan.tiles, num_warps=4, num_stages=1)
    flashinfer = _FlashinferImpl(weights, config) if config.runs("flashinfer") else None
    limit = shape.swiglu_limit

    for tokens in plan.tokens:
        batch = make_batch(shape, plan.num_experts, tokens, dtype, device, config.seed)
        touched = batch.touched_experts()
        case = f"T={tokens}: {len(touched)} experts"
        weight_bytes = len(touched) * shape.bytes_per_expert
        try:
            reference = fused_moe_mxfp4_reference(
                batch.hidden, *weights.tensors(), batch.topk_weights, batch.topk_ids, swiglu_limit=limit
            )
        except Exception as e:  # noqa: BLE001
            results.append(_failure("moe reference", case, tokens, e))
            step(f"T={tokens} reference")
            continue
        step(f"T={tokens} reference")

        def measured(check: str, fn: Callable[[], torch.Tensor]) -> CheckResult:
            try:
                timed = timed_calls(fn, device, warmup=plan.warmup, repeats=plan.repeats)
                timing = Timing(timed.median_ms, plan.repeats, weight_bytes, facts.peak_bytes_per_s)
                return judged(check, case, rel_error(timed.output, reference), plan.rel_error_bound,
                              timing=timing, tokens=tokens)
            except Exception as e:  # noqa: BLE001 - a crash is this check's FAIL
                return _failure(check, case, tokens, e)

        if config.runs("moe"):
            try:
                results.append(dequant_check.check_experts(weights, touched, case, tokens))
            except Exception as e:  # noqa: BLE001
                results.append(_failure(dequant_check.CHECK, case, tokens, e))
            step(f"T={tokens} dequant")
            if kernel is None:
                results.append(CheckResult(TRITON, case, Status.SKIP, tokens=tokens, note=kernel_skip))
            else:
                results.append(measured(TRITON, lambda: kernel.fused_moe_mxfp4(
                    batch.hidden, *weights.tensors(), batch.topk_weights, batch.topk_ids,
                    swiglu_limit=limit, config=tiles)))
            step(f"T={tokens} triton")
        if flashinfer is not None:
            if flashinfer.skip_reason:
                results.append(CheckResult(FLASHINFER, case, Status.SKIP, tokens=tokens, note=flashinfer.skip_reason))
            elif flashinfer.error is not None:
                results.append(_failure(FLASHINFER, case, tokens, flashinfer.error))
            else:
                results.append(measured(FLASHINFER, lambda: flashinfer(batch)))
            step(f"T={tokens} flashinfer")
        if config.runs("moe"):
            results.append(measured(BASELINE, lambda: dequant_dense_moe(weights, batch, limit)))
            step(f"T={tokens} baseline")
    return results
