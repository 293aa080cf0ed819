"""``--moe-runner-backend flashinfer_mxfp4`` (and ``--speculative-moe-runner-backend``) served by sglang-dspark.

SGLang 0.5.23 already owns the name ``flashinfer_mxfp4``: its quantisation
configs pick their own FlashInfer methods for MXFP4 experts
(``Fp8Config.get_quant_method`` for DeepSeek-V4's FP4 experts,
``Mxfp4Config.get_quant_method`` for ``quant_method: mxfp4`` checkpoints), and
those refuse anything but SM90/SM100/SM120 GPUs. ``register_moe_runner_core``
cannot take the name over, because the MoE runner is chosen by the quant
method, after the fact. So the hook sits where SGLang picks the quant method
of a ``FusedMoE`` layer: when the layer's experts are MXFP4 in the checkpoint
and the runner in force is ``flashinfer_mxfp4``, the layer gets
:class:`DSparkMxfp4MoEMethod`, whose ``apply`` is
:func:`sglang_dspark.moe.moe_forward.moe_forward` (FlashInfer on SM90/SM100,
the fused Triton kernel on other GPUs, torch on CPU). The draft model is built
under SGLang's speculative MoE backend context, so
``--speculative-moe-runner-backend flashinfer_mxfp4`` selects it for the drafter.

Weights load byte for byte into the runner layout through
:func:`sglang_dspark.moe.expert_sharding.copy_expert_tensor`: each expert-
parallel rank keeps its contiguous expert range, each tensor-parallel rank its
slice of the intermediate dimension; the layer's all-reduce sums the partial
outputs.

Whether our method or SGLang's serves is decided per process where the layers
are built, from the device and GPU architecture (:func:`mxfp4_choice`, the
table in :mod:`.serving_choice`): SGLang's methods on SM90/SM100/SM120, ours on
CPU and on GPUs SGLang's refuses; ``SGLANG_DSPARK_MXFP4_RUNNER`` forces either.
``SGLANG_DSPARK_MXFP4_IMPL`` (``auto`` default, ``torch``, ``triton``,
``flashinfer``) picks the implementation inside our method.
"""

from __future__ import annotations

import os

import torch

from sglang_dspark.sglang.serving_choice import (
    MXFP4_RUNNER_ENV as RUNNER_ENV,
    ServingChoice,
    announce,
    choose_mxfp4,
    cpu_engine_enabled,
    requested,
)

IMPL_ENV = "SGLANG_DSPARK_MXFP4_IMPL"

MXFP4_GET_QUANT_METHOD = "sglang.srt.layers.quantization.mxfp4.Mxfp4Config.get_quant_method"
MXFP4_ACT_DTYPES = "sglang.srt.layers.quantization.mxfp4.Mxfp4Config.get_supported_act_dtypes"
FP8_GET_QUANT_METHOD = "sglang.srt.layers.quantization.fp8.Fp8Config.get_quant_method"


def device_facts() -> tuple[str, tuple[int, int] | None]:
    """(device, CUDA capability) of this process: what the MXFP4 choice depends on."""
    if cpu_engine_enabled() or not torch.cuda.is_available():
        return "cpu", None
    return "cuda", tuple(torch.cuda.get_device_capability())


def mxfp4_choice(device: str | None = None, sm: tuple[int, int] | None = None) -> ServingChoice:
    """Who serves ``flashinfer_mxfp4`` here (``device``/``sm`` default to this process's facts)."""
    if device is None:
        device, sm = device_facts()
    return choose_mxfp4(device=device, sm=sm, asked=requested(RUNNER_ENV))


def selected_impl() -> str:
    """The :func:`moe_forward` implementation the runner uses (``SGLANG_DSPARK_MXFP4_IMPL``)."""
    from sglang_dspark.moe.moe_forward import IMPLS

    impl = os.environ.get(IMPL_ENV, "auto").strip().lower() or "auto"
    if impl not in IMPLS:
        raise ValueError(f"{IMPL_ENV}={impl!r}: use one of {IMPLS}.")
    return impl


def _runner_is_flashinfer_mxfp4() -> bool:
    from sglang.srt.layers.moe.utils import get_moe_runner_backend

    return get_moe_runner_backend().is_flashinfer_mxfp4() and announce(mxfp4_choice()).ours


def make_method(prefix: str, scale_suffix: str = "weight_scale"):
    """The sglang-dspark quant method for the FusedMoE layer at ``prefix``."""
    from sglang_dspark.sglang.mxfp4_moe_method import DSparkMxfp4MoEMethod

    return DSparkMxfp4MoEMethod(prefix, impl=selected_impl(), scale_suffix=scale_suffix)


def _is_fused_moe(layer) -> bool:
    from sglang.srt.layers.moe.fused_moe_triton import FusedMoE

    return isinstance(layer, FusedMoE)


def select_mxfp4_method(orig, self, layer, prefix):
    """AROUND ``Mxfp4Config.get_quant_method``: our method for serialized MXFP4 experts.

    Under this runner an ``mxfp4`` checkpoint means MXFP4 routed experts and
    unquantised everything else (SGLang's own method raises for embeddings and
    attention, and returns no method for linears of non-ROCm models).
    """
    if not (self.is_checkpoint_mxfp4_serialized and _runner_is_flashinfer_mxfp4()):
        return orig(self, layer, prefix)
    if _is_fused_moe(layer):
        return make_method(prefix)
    from sglang.srt.layers.linear import LinearBase

    if isinstance(layer, LinearBase):
        from sglang.srt.layers.quantization.unquant import UnquantizedLinearMethod

        return orig(self, layer, prefix) or UnquantizedLinearMethod()
    return None


def select_fp8_method(orig, self, layer, prefix):
    """AROUND ``Fp8Config.get_quant_method``: our method for FP8 checkpoints with MXFP4 experts (DeepSeek-V4)."""
    if (
        getattr(self, "is_fp4_experts", False)
        and not getattr(self, "dequant_fp4_to_fp8", False)
        and _is_fused_moe(layer)
        and _runner_is_flashinfer_mxfp4()
    ):
        return make_method(prefix, scale_suffix="weight_scale_inv")  # V4 loaders rename ``.scale``
    return orig(self, layer, prefix)


def mxfp4_act_dtypes(orig, cls):
    """AROUND ``Mxfp4Config.get_supported_act_dtypes``: our runner also computes in float32 (CPU serving)."""
    dtypes = list(orig(cls))
    if _runner_is_flashinfer_mxfp4() and torch.float32 not in dtypes:
        dtypes.append(torch.float32)
    return dtypes


def register_hooks() -> None:
    """Install the selection hooks; each call asks :func:`mxfp4_choice` whether ours serves."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(MXFP4_GET_QUANT_METHOD, select_mxfp4_method, HookType.AROUND)
    HookRegistry.register(FP8_GET_QUANT_METHOD, select_fp8_method, HookType.AROUND)
    HookRegistry.register(MXFP4_ACT_DTYPES, mxfp4_act_dtypes, HookType.AROUND)
