"""SGLang's CPU linear layers and LM head of few rows through :mod:`sglang_dspark.skinny_gemm`.

Two AROUND hooks, installed on SGLang's CPU engine only:

* ``UnquantizedLinearMethod.apply``: every unquantized linear layer
  (``F.linear`` on a CPU without AMX);
* ``LogitsProcessor._compute_lm_head``: the plain ``hidden @ lm_head.weightᵀ``
  branch (no LoRA, quantised head, fp32 head or AMX).

Decode steps (one row per request) and verify steps (anchor and drafts) both
take it, so plain decoding gets the same GEMM as speculation. The first call
with few enough rows measures both forms on copies of that layer's weight and
decides, once per process and dtype, up to how many rows the skinny form
serves, through
:func:`~sglang_dspark.sglang.serving_choice.choose_cpu_linear` (which logs
who serves and why). A measurement taken while other processes loaded the
CPU (another server starting beside this one) decides only until the LM head
hook, once per forward, finds a re-measurement due: it is repeated on the same
weight after ``_REMEASURE_AFTER_SECONDS``, up to ``_REMEASURE_TRIES`` times,
until one is taken on a quiet CPU. Anything else (more rows, other devices, AMX-packed
weights, a bias of another dtype) runs SGLang's own code.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import time
from pathlib import Path

import torch

from sglang_dspark.skinny_gemm import SKINNY_MAX_ROWS, measure_skinny_gemm, skinny_linear
from sglang_dspark.sglang.serving_choice import CPU_LINEAR_ENV, announce, choose_cpu_linear, requested

LINEAR_APPLY = "sglang.srt.layers.quantization.unquant.UnquantizedLinearMethod.apply"
LM_HEAD = "sglang.srt.layers.logits_processor.LogitsProcessor._compute_lm_head"

logger = logging.getLogger(__name__)

# dtype -> the most rows the skinny form serves in this process (0: none).
_decided: dict[torch.dtype, int] = {}
# dtype -> (weight measured on, monotonic time a re-measurement is due, tries left), for
# decisions taken from a measurement under load.
_remeasure: dict[torch.dtype, tuple[torch.Tensor, float, int]] = {}
_REMEASURE_AFTER_SECONDS = 60.0
_REMEASURE_TRIES = 3
# A re-measurement runs inside a forward, so it stops sooner than the start-up one (which waits out
# another server's start-up); one that finds the CPU still loaded is tried again later.
_REMEASURE_MAX_SECONDS = 5.0
_lock = threading.Lock()
# Servers started together (a plain and a speculative one, test servers) would
# otherwise measure at the same moment and slow each other's sweeps.
_MACHINE_LOCK = Path(tempfile.gettempdir()) / "sglang-dspark-cpu-linear-measure.lock"


@contextlib.contextmanager
def _one_measurement_at_a_time():
    try:
        import fcntl
    except ImportError:  # not POSIX: measure without the lock
        yield
        return
    with open(_MACHINE_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _skinny_serves(weight: torch.Tensor, rows: int) -> bool:
    """Whether the skinny form serves ``rows`` rows of ``weight``'s dtype here (measured on first use)."""
    max_rows = _decided.get(weight.dtype)
    if max_rows is None:
        with _lock:
            max_rows = _decided.get(weight.dtype)
            if max_rows is None:
                asked = requested(CPU_LINEAR_ENV)
                if asked is None:
                    max_rows = _decide_from_measurement(weight, tries_left=_REMEASURE_TRIES)
                else:
                    choice = choose_cpu_linear(measured_speedup=None, detail="", asked=asked)
                    max_rows = _decided[weight.dtype] = SKINNY_MAX_ROWS if announce(choice).ours else 0
    return rows <= max_rows


def _decide_from_measurement(weight: torch.Tensor, *, tries_left: int, max_seconds: float | None = None) -> int:
    """Measure on ``weight``, decide for its dtype, and schedule a re-measurement if the CPU was loaded."""
    with _one_measurement_at_a_time():
        if max_seconds is None:
            measured = measure_skinny_gemm(weight.detach())
        else:
            measured = measure_skinny_gemm(weight.detach(), max_seconds=max_seconds)
    choice = choose_cpu_linear(measured_speedup=measured.speedup, detail=measured.summary(), asked=None)
    max_rows = _decided[weight.dtype] = measured.max_rows if announce(choice).ours else 0
    if measured.under_load and tries_left > 0:
        _remeasure[weight.dtype] = (weight, time.monotonic() + _REMEASURE_AFTER_SECONDS, tries_left)
        logger.warning("CPU linear layers: measured under load; measuring again in %.0f s (%d tries left)",
                       _REMEASURE_AFTER_SECONDS, tries_left)
    else:
        _remeasure.pop(weight.dtype, None)
    return max_rows


def remeasure_if_due(dtype: torch.dtype) -> None:
    """Repeat a measurement taken under load once its time has come (a few seconds on a quiet CPU)."""
    pending = _remeasure.get(dtype)
    if pending is None or time.monotonic() < pending[1]:
        return
    with _lock:
        pending = _remeasure.pop(dtype, None)
        if pending is not None:
            _decide_from_measurement(pending[0], tries_left=pending[2] - 1,
                                     max_seconds=_REMEASURE_MAX_SECONDS)


def _rows(x: torch.Tensor) -> int:
    return x.numel() // max(x.shape[-1], 1)


def _eligible(x: torch.Tensor, weight, bias) -> bool:
    return (
        isinstance(weight, torch.Tensor)
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
        and weight.dim() == 2
        and weight.is_contiguous()
        and x.dtype == weight.dtype
        and x.shape[-1] == weight.shape[1]
        and 0 < _rows(x) <= SKINNY_MAX_ROWS
        and (bias is None or bias.dtype == weight.dtype)
        and not torch.is_grad_enabled()
    )


def linear_apply(orig, self, layer, x, bias=None):
    """AROUND ``UnquantizedLinearMethod.apply``."""
    weight = getattr(layer, "weight", None)
    if (getattr(layer, "use_intel_amx_backend", False) or not _eligible(x, weight, bias)
            or not _skinny_serves(weight, _rows(x))):
        return orig(self, layer, x, bias)
    return skinny_linear(x, weight, bias)


def compute_lm_head(orig, self, hidden_states, lm_head, embedding_bias=None, **kwargs):
    """AROUND ``LogitsProcessor._compute_lm_head``: the plain-matmul branch only."""
    from sglang.srt.layers.logits_processor import should_apply_lm_head_quant_method

    weight = getattr(lm_head, "weight", None)
    if _remeasure and isinstance(weight, torch.Tensor):
        remeasure_if_due(weight.dtype)
    plain = (
        embedding_bias is None
        and not (hasattr(lm_head, "set_lora") and hasattr(lm_head, "apply_lora"))
        and not should_apply_lm_head_quant_method(lm_head, getattr(lm_head, "quant_method", None))
        and not getattr(self, "use_fp32_lm_head", False)
        and getattr(self, "rl_on_policy_target", None) is None
        and not getattr(lm_head, "use_intel_amx_backend", False)
    )
    if not plain or not _eligible(hidden_states, weight, None) or not _skinny_serves(weight, _rows(hidden_states)):
        return orig(self, hidden_states, lm_head, embedding_bias, **kwargs)
    return skinny_linear(hidden_states, weight)


def register_hooks() -> None:
    """Install both hooks (SGLang's CPU engine only; see :mod:`.plugin`)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    requested(CPU_LINEAR_ENV)  # a misspelt value fails at start-up
    HookRegistry.register(LINEAR_APPLY, linear_apply, HookType.AROUND)
    HookRegistry.register(LM_HEAD, compute_lm_head, HookType.AROUND)
