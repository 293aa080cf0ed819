"""What the selftest runs: the MoE shape, the command's settings and the plan derived from them.

The default MoE shape is DeepSeek-V4-Flash's routed-expert layer as the
release's ``config.json`` gives it (``hidden_size`` 4096,
``moe_intermediate_size`` 2048, ``n_routed_experts`` 256,
``num_experts_per_tok`` 6, ``swiglu_limit`` 10.0: the values
:func:`sglang_dspark.models.synthetic.write_synthetic_v4_config` writes);
``--model-config`` reads another model's.

The plan is a function of (device, ``--quick``, shape):

* CUDA: every expert of the layer, T = 1, 8, 32, 128, 512 (``--quick``: 1, 8,
  128), bfloat16 activations as served, the kernel's own tile heuristic.
* CPU: the real hidden and intermediate sizes and top-k, but 16 experts and
  T = 1, 4 (``--quick``: 8 experts, T = 1), float32 activations and large
  tiles, because the Triton kernel runs in Triton's interpreter there: it
  costs about a second per touched expert, and it rounds float32 to bfloat16
  by truncation, so bfloat16 would compare the interpreter's rounding, not the
  kernel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

# sglang_dspark.moe.mxfp4.BLOCK_SIZE (elements per E8M0 scale), restated so that the
# command line parses without importing torch; tests/selftest checks they agree.
MX_BLOCK = 32

DEVICES: tuple[str, ...] = ("cuda", "cpu")
CHECK_GROUPS: tuple[str, ...] = ("moe", "flashinfer", "draft-verify", "trainer")
"""``moe``: MXFP4 dequantisation, the fused Triton kernel and the dequantise-then-GEMM
baseline; ``flashinfer``: FlashInfer's MXFP4 MoE; ``draft-verify``: the DSPARK loop
on a tiny target; ``trainer``: the drafter trainer's step time."""

ACT_DTYPES: tuple[str, ...] = ("bfloat16", "float16", "float32")


class SelftestConfigError(ValueError):
    """A selftest setting is out of range; the message names it."""


@dataclass(frozen=True)
class MoeShape:
    """Routed-expert sizes of one MoE layer."""

    hidden: int
    intermediate: int
    experts: int
    top_k: int
    swiglu_limit: float | None

    def __post_init__(self) -> None:
        if self.hidden % MX_BLOCK or self.intermediate % MX_BLOCK:
            raise SelftestConfigError(
                f"hidden ({self.hidden}) and intermediate ({self.intermediate}) sizes must be multiples of 32"
            )
        if min(self.hidden, self.intermediate, self.experts, self.top_k) < 1 or self.top_k > self.experts:
            raise SelftestConfigError(f"need 1 <= top_k ({self.top_k}) <= experts ({self.experts}) and positive sizes")
        if self.swiglu_limit is not None and self.swiglu_limit <= 0:
            raise SelftestConfigError(f"swiglu_limit must be positive or None, got {self.swiglu_limit}")

    @property
    def bytes_per_expert(self) -> int:
        """Packed E2M1 bytes plus E8M0 scale bytes of one expert's gate/up and down weights."""
        elements = 3 * self.hidden * self.intermediate
        return elements // 2 + elements // MX_BLOCK

    def line(self) -> str:
        """One line for the report."""
        limit = "none" if self.swiglu_limit is None else f"{self.swiglu_limit:g}"
        return (f"hidden {self.hidden}, intermediate {self.intermediate}, {self.experts} experts, "
                f"top-{self.top_k}, SwiGLU limit {limit}")


V4_FLASH_MOE = MoeShape(hidden=4096, intermediate=2048, experts=256, top_k=6, swiglu_limit=10.0)


def moe_shape_from_config(path: str | Path) -> MoeShape:
    """Routed-expert sizes from a model's ``config.json`` (HF names or DeepSeek's inference names)."""
    try:
        raw: Mapping[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SelftestConfigError(f"--model-config {path}: {e}") from e
    raw = raw.get("text_config", raw)

    def pick(*keys: str) -> Any:
        for key in keys:
            if key in raw:
                return raw[key]
        raise SelftestConfigError(f"--model-config {path}: none of {keys}")

    limit = raw.get("swiglu_limit") or None
    return MoeShape(
        hidden=int(pick("hidden_size", "dim")),
        intermediate=int(pick("moe_intermediate_size", "moe_inter_dim")),
        experts=int(pick("n_routed_experts", "num_experts", "num_local_experts")),
        top_k=int(pick("num_experts_per_tok", "n_activated_experts")),
        swiglu_limit=float(limit) if limit else None,
    )


@dataclass(frozen=True)
class SelftestPlan:
    """The cases, precision and repeat counts of one selftest run.

    Attributes:
        tokens: token counts T of the MoE cases.
        num_experts: experts in the layer under test (routing is top-k of these).
        act_dtype: activation dtype of the MoE cases.
        rel_error_bound: pass bound on ``max |got - ref| / max |ref|`` per case.
        tiles: ``(block_m, block_n, block_k)`` for the Triton kernel, or ``None``
            for its own heuristic (``kernels.mxfp4_moe.kernel.default_config``).
        warmup, repeats: timed calls per measurement (median of ``repeats``).
        draft_prompts, draft_new_tokens: draft-verify loop size.
        trainer_steps: optimizer steps of the tiny recipe to time.
    """

    tokens: tuple[int, ...]
    num_experts: int
    act_dtype: str
    rel_error_bound: float
    tiles: tuple[int, int, int] | None
    warmup: int
    repeats: int
    draft_prompts: int
    draft_new_tokens: int
    trainer_steps: int

    def __post_init__(self) -> None:
        if not self.tokens or min(self.tokens) < 1:
            raise SelftestConfigError(f"tokens must be positive, got {self.tokens}")
        if self.num_experts < 1:
            raise SelftestConfigError(f"num_experts must be >= 1, got {self.num_experts}")
        if self.act_dtype not in ACT_DTYPES:
            raise SelftestConfigError(f"act_dtype must be one of {ACT_DTYPES}, got {self.act_dtype!r}")
        if not 0 < self.rel_error_bound < 1:
            raise SelftestConfigError(f"rel_error_bound must be in (0, 1), got {self.rel_error_bound}")
        if self.tiles is not None and (self.tiles[2] % 32 or min(self.tiles[:2]) < 16):
            raise SelftestConfigError(f"tiles {self.tiles}: block_k must be a multiple of 32, block_m/n >= 16")
        if self.warmup < 0 or self.repeats < 1:
            raise SelftestConfigError(f"need warmup >= 0 and repeats >= 1, got {self.warmup}, {self.repeats}")
        if not 1 <= self.draft_prompts <= 8 or self.draft_new_tokens < 2:
            raise SelftestConfigError("draft_prompts must be in 1..8 and draft_new_tokens >= 2")
        if self.trainer_steps < 2:
            raise SelftestConfigError(f"trainer_steps must be >= 2 (the first is warm-up), got {self.trainer_steps}")


# Max error over max |ref| per case. bfloat16 (CUDA): the kernel and the reference
# round the SwiGLU output and each expert's output to bfloat16 (2**-8 relative)
# at points where their float32 sums differ in the last bits, so single elements
# differ by an ulp or two (2e-3 to 6e-3 when emulated on CPU at V4-Flash shapes);
# the same bound as tests/moe/test_moe_forward.py. float32 (CPU): only summation
# order differs; the errors seen are about 1e-6.
BF16_BOUND = 2e-2
FP32_BOUND = 1e-4


def make_plan(device: str, quick: bool, shape: MoeShape) -> SelftestPlan:
    """The plan for ``device`` (module docstring)."""
    if device not in DEVICES:
        raise SelftestConfigError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cuda":
        return SelftestPlan(
            tokens=(1, 8, 128) if quick else (1, 8, 32, 128, 512),
            num_experts=shape.experts,
            act_dtype="bfloat16",
            rel_error_bound=BF16_BOUND,
            tiles=None,
            warmup=3 if quick else 5,
            repeats=10 if quick else 20,
            draft_prompts=2 if quick else 4,
            draft_new_tokens=32 if quick else 48,
            trainer_steps=6 if quick else 10,
        )
    return SelftestPlan(
        tokens=(1,) if quick else (1, 4),
        num_experts=min(shape.experts, max(shape.top_k, 8 if quick else 16)),
        act_dtype="float32",
        rel_error_bound=FP32_BOUND,
        tiles=(16, 1024, 512),
        warmup=0,
        repeats=1,
        draft_prompts=2 if quick else 4,
        draft_new_tokens=32 if quick else 48,
        trainer_steps=6 if quick else 10,
    )


@dataclass(frozen=True)
class SelftestConfig:
    """The command's settings.

    Attributes:
        device: ``"cuda"`` or ``"cpu"``.
        quick: the shorter plan.
        out_dir: where ``selftest.json``, ``selftest.png`` and ``selftest.txt`` go.
        checks: the check groups to run (:data:`CHECK_GROUPS`).
        shape: the MoE layer under test.
        peak_tbps: HBM peak to use instead of the table's, TB/s.
        progress: a progress bar on stderr.
        seed: seed of the random weights, inputs and tiny models.
        plan: the cases; :func:`make_plan`'s when omitted.
    """

    device: str
    quick: bool
    out_dir: Path
    checks: tuple[str, ...] = CHECK_GROUPS
    shape: MoeShape = V4_FLASH_MOE
    peak_tbps: float | None = None
    progress: bool = True
    seed: int = 0
    plan: SelftestPlan | None = None

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise SelftestConfigError(f"device must be one of {DEVICES}, got {self.device!r}")
        unknown = sorted(set(self.checks) - set(CHECK_GROUPS))
        if unknown or not self.checks:
            raise SelftestConfigError(f"checks must be a non-empty subset of {CHECK_GROUPS}, got {self.checks}")
        if self.peak_tbps is not None and self.peak_tbps <= 0:
            raise SelftestConfigError(f"--peak-tbps must be positive, got {self.peak_tbps}")
        # Derived fields of a frozen dataclass are set once, here.
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if self.plan is None:
            object.__setattr__(self, "plan", make_plan(self.device, self.quick, self.shape))
        elif not self.shape.top_k <= self.plan.num_experts <= self.shape.experts:
            raise SelftestConfigError(
                f"plan.num_experts ({self.plan.num_experts}) must lie in [top_k, experts] = "
                f"[{self.shape.top_k}, {self.shape.experts}]"
            )

    def runs(self, group: str) -> bool:
        """Whether check group ``group`` is selected."""
        return group in self.checks
