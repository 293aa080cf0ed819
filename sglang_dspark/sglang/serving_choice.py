"""Which implementation serves each path: the one place this is decided.

Rule: **verified by default, the rest on request.** On each path the
implementation that has run on that hardware serves by default; an unverified
one only when asked for, or where nothing else can serve. A user who adds this
package is never worse off than with SGLang alone.

| path | hardware | default | why |
| --- | --- | --- | --- |
| DSPARK | CPU | sglang-dspark | tested here; SGLang's built-in refuses ``--device cpu`` |
| DSPARK, drafter architecture SGLang has (V4 ``mtp.*``, ``Qwen3DSparkModel``, ...) | GPU, NPU, XPU | SGLang | SGLang's serves it there; ours has not run on a GPU |
| DSPARK, drafter architecture SGLang lacks (``LlamaDSparkModel``) | GPU | sglang-dspark | nothing else can serve it (not yet run on a GPU) |
| ``flashinfer_mxfp4`` | SM90, SM100, SM120 | SGLang | SGLang's FlashInfer MXFP4 methods |
| ``flashinfer_mxfp4`` | other GPUs (SM80, SM89, ...) | sglang-dspark (Triton) | SGLang's refuses them |
| ``flashinfer_mxfp4`` | CPU | sglang-dspark (torch) | nothing else can serve |
| linear layers and LM head of few rows | CPU | sglang-dspark (``skinny_gemm``) up to the row count where it measured not slower, when >= 1.25x faster in all, else SGLang's ``F.linear`` | the BLAS's small-M paths differ between CPUs |

``SGLANG_DSPARK_IMPL`` (DSPARK), ``SGLANG_DSPARK_MXFP4_RUNNER``
(``flashinfer_mxfp4``) and ``SGLANG_DSPARK_CPU_LINEAR`` (CPU linear layers) take ``auto`` (the table, the default),
``sglang-dspark`` or ``builtin`` (SGLang's). Forcing an implementation where
it cannot serve is a :class:`ServingChoiceError` during argument resolution.

The functions here are pure: the facts (device, GPU architecture, drafter
architecture) come in as arguments, so every process that has the same
resolved server arguments decides the same way, and tests can state any facts.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("sglang_dspark")

OURS = "sglang-dspark"
SGLANG = "sglang"
IMPL_ENV = "SGLANG_DSPARK_IMPL"
MXFP4_RUNNER_ENV = "SGLANG_DSPARK_MXFP4_RUNNER"
CPU_LINEAR_ENV = "SGLANG_DSPARK_CPU_LINEAR"
# The skinny form serves only where it measured clearly faster: a small margin
# could flip between restarts with timing noise, and with it the fp32 rounding.
CPU_LINEAR_MIN_SPEEDUP = 1.25

_ENV_VALUES = {
    "": None, "auto": None,
    OURS: OURS, "ours": OURS, "sglang_dspark": OURS,
    "builtin": SGLANG, SGLANG: SGLANG,
}

# Draft architectures SGLang 0.5.23's built-in DSPARK loads (the EntryClass lists of
# srt/models/dspark.py, dspark_minimax.py, lfm2_dspark.py, deepseek_v4_dspark.py).
SGLANG_DRAFTER_ARCHITECTURES = frozenset({
    "Qwen3DSparkModel", "LingDSparkModel", "DSparkDraftModel",
    "DSparkMiniMaxDraftModel", "Lfm2DSparkDraftModel", "DeepseekV4ForCausalLMDSpark",
})
# A checkpoint whose config has any of these carries a DeepSeek-V4 drafter (``mtp.*``).
V4_DRAFTER_KEYS = ("dspark_block_size", "dspark_target_layer_ids", "dspark_noise_token_id")
V4_DRAFTER = "DeepseekV4ForCausalLMDSpark"
# Architectures (major, minor) SGLang 0.5.23's flashinfer_mxfp4 methods serve.
SGLANG_MXFP4_SM_MAJORS = (9, 10, 12)


def cpu_engine_enabled(environ: dict[str, str] | None = None) -> bool:
    """Whether this process runs SGLang's CPU engine (``SGLANG_USE_CPU_ENGINE``), the CPU fact both choices read."""
    return (environ if environ is not None else os.environ).get("SGLANG_USE_CPU_ENGINE", "0").lower() in (
        "1", "true", "yes",
    )


class ServingChoiceError(ValueError):
    """An implementation was asked for on a path where it cannot serve."""


@dataclass(frozen=True)
class ServingChoice:
    """Who serves one path, and why (the start-up line)."""

    path: str
    impl: str
    reason: str

    def __post_init__(self) -> None:
        if self.impl not in (OURS, SGLANG):
            raise ValueError(f"impl must be {OURS!r} or {SGLANG!r}, got {self.impl!r}")

    @property
    def ours(self) -> bool:
        return self.impl == OURS

    def line(self) -> str:
        who = "sglang-dspark" if self.ours else "SGLang's built-in implementation"
        return f"{self.path} is served by {who}: {self.reason}"


def requested(env_name: str, environ: dict[str, str] | None = None) -> str | None:
    """The implementation ``env_name`` asks for (``OURS``/``SGLANG``), or None for the table's choice."""
    value = (environ if environ is not None else os.environ).get(env_name, "").strip().lower()
    if value not in _ENV_VALUES:
        raise ServingChoiceError(f"{env_name}={value!r}: use 'auto' (default), {OURS!r} or 'builtin'.")
    return _ENV_VALUES[value]


def drafter_architecture(config: dict) -> str | None:
    """The draft architecture a checkpoint config describes (V4 bundled drafters included), or None."""
    if any(config.get(key) is not None for key in V4_DRAFTER_KEYS):
        return V4_DRAFTER
    archs = config.get("architectures") or []
    return str(archs[0]) if archs else None


def drafter_architecture_at(path: str | os.PathLike | None) -> str | None:
    """:func:`drafter_architecture` of the checkpoint directory at ``path`` (None when it has no config.json)."""
    if not path:
        return None
    cfg = Path(path) / "config.json"
    try:
        return drafter_architecture(json.loads(cfg.read_text()))
    except (OSError, ValueError):
        return None


def choose_dspark(*, device: str, drafter_arch: str | None, asked: str | None) -> ServingChoice:
    """Who serves ``--speculative-algorithm DSPARK`` on ``device`` with a drafter of ``drafter_arch``."""
    dev = device.split(":")[0]
    path = "DSPARK"
    if asked == OURS:
        if drafter_arch == V4_DRAFTER:
            raise ServingChoiceError(
                f"{IMPL_ENV}={OURS}: sglang-dspark has no DeepSeek-V4 drafter worker (the V4 drafter's "
                f"layers run only on SGLang's CUDA kernels); unset {IMPL_ENV} so that SGLang's built-in "
                "DSPARK serves this checkpoint."
            )
        return ServingChoice(path, OURS, f"asked for with {IMPL_ENV}={OURS}")
    if asked == SGLANG:
        if dev == "cpu":
            raise ServingChoiceError(
                f"{IMPL_ENV}=builtin: SGLang's built-in DSPARK refuses --device cpu; unset {IMPL_ENV} "
                "so that sglang-dspark serves DSPARK on CPU."
            )
        return ServingChoice(path, SGLANG, f"asked for with {IMPL_ENV}=builtin")
    if dev == "cpu":
        return ServingChoice(path, OURS, "tested on CPU; SGLang's built-in DSPARK refuses --device cpu")
    if drafter_arch is None or drafter_arch in SGLANG_DRAFTER_ARCHITECTURES:
        kind = f"{drafter_arch} drafters" if drafter_arch else "this drafter"
        return ServingChoice(
            path, SGLANG,
            f"SGLang's built-in DSPARK serves {kind} on {dev}; sglang-dspark's worker has not run on a "
            f"GPU yet ({IMPL_ENV}={OURS} asks for it)",
        )
    return ServingChoice(
        path, OURS,
        f"SGLang's built-in DSPARK has no {drafter_arch} drafter, so sglang-dspark serves it "
        f"(not yet run on {dev})",
    )


def choose_mxfp4(*, device: str, sm: tuple[int, int] | None, asked: str | None) -> ServingChoice:
    """Who serves ``--moe-runner-backend flashinfer_mxfp4`` on ``device`` (``sm``: CUDA capability, if known)."""
    dev = device.split(":")[0]
    path = "flashinfer_mxfp4"
    arch = f"SM{sm[0]}{sm[1]}" if sm else "an unknown GPU"
    sglang_serves = dev == "cuda" and (sm is None or sm[0] in SGLANG_MXFP4_SM_MAJORS)
    if asked == OURS:
        return ServingChoice(path, OURS, f"asked for with {MXFP4_RUNNER_ENV}={OURS}")
    if asked == SGLANG:
        if not sglang_serves:
            where = "CPU" if dev == "cpu" else f"{arch} ({dev})"
            raise ServingChoiceError(
                f"{MXFP4_RUNNER_ENV}=builtin: SGLang's flashinfer_mxfp4 runs only on SM90/SM100/SM120 "
                f"GPUs, not on {where}; unset {MXFP4_RUNNER_ENV} so that sglang-dspark's runner serves it."
            )
        return ServingChoice(path, SGLANG, f"asked for with {MXFP4_RUNNER_ENV}=builtin")
    if dev == "cpu":
        return ServingChoice(path, OURS, "tested on CPU (torch); SGLang's runner is GPU-only")
    if sglang_serves:
        return ServingChoice(
            path, SGLANG,
            f"SGLang's FlashInfer MXFP4 methods serve {arch}; sglang-dspark's runner has not run on a GPU "
            f"yet ({MXFP4_RUNNER_ENV}={OURS} asks for it)",
        )
    return ServingChoice(
        path, OURS,
        f"SGLang's flashinfer_mxfp4 refuses {arch}, so sglang-dspark's Triton runner serves it "
        f"(not yet run on a GPU)",
    )


def choose_cpu_linear(*, measured_speedup: float | None, detail: str, asked: str | None) -> ServingChoice:
    """Who computes CPU linear layers and LM heads of few rows: :mod:`sglang_dspark.skinny_gemm` or ``F.linear``.

    ``measured_speedup``: ``F.linear`` time over the skinny form's, measured in
    this process on one of the model's weights over the row counts where it
    was not slower (None when not measured because an implementation was asked
    for); ``detail``: the measurement, for the line.
    """
    path = "CPU linear layers of few rows"
    if asked == OURS:
        return ServingChoice(path, OURS, f"asked for with {CPU_LINEAR_ENV}={OURS}")
    if asked == SGLANG:
        return ServingChoice(path, SGLANG, f"asked for with {CPU_LINEAR_ENV}=builtin")
    if measured_speedup is None:
        raise ValueError("choose_cpu_linear needs a measurement unless an implementation was asked for")
    if measured_speedup >= CPU_LINEAR_MIN_SPEEDUP:
        return ServingChoice(path, OURS, f"the skinny (W @ x^T) GEMM measured {detail} at start-up")
    return ServingChoice(
        path, SGLANG,
        f"the skinny GEMM was not >= {CPU_LINEAR_MIN_SPEEDUP}x faster here ({detail}); "
        f"{CPU_LINEAR_ENV}={OURS} asks for it",
    )


_ANNOUNCED: set[ServingChoice] = set()


def announce(choice: ServingChoice) -> ServingChoice:
    """Log ``choice``'s start-up line once per process; return it."""
    if choice not in _ANNOUNCED:
        _ANNOUNCED.add(choice)
        logger.warning(choice.line())
    return choice
