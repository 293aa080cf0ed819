"""SGLang ``FusedMoE`` quant method for MXFP4 experts, computed by :func:`moe_forward`.

Selected by :mod:`sglang_dspark.sglang.mxfp4_moe_runner` under
``--moe-runner-backend flashinfer_mxfp4``. Parameters hold the runner layout of
:mod:`sglang_dspark.moe.moe_forward` as raw bytes (``w13_weight``,
``w13_weight_scale``, ``w2_weight``, ``w2_weight_scale``, uint8); the model's
expert mapping (``experts.{e}.gate_proj.weight`` -> ``experts.w13_weight``, and
``...weight_scale`` -> ``experts.w13_weight_scale``) feeds their loader, which
copies this rank's slice (:mod:`sglang_dspark.moe.expert_sharding`).
"""

from __future__ import annotations

import dataclasses

import torch
from sglang.srt.layers.quantization.base_config import FusedMoEMethodBase

from sglang_dspark.moe.expert_sharding import ExpertShard, checkpoint_intermediate_of, copy_expert_tensor
from sglang_dspark.moe.moe_forward import moe_forward


def param_names(scale_suffix: str) -> dict[str, str]:
    """Runner tensor -> FusedMoE parameter name.

    The scale parameter is named after the checkpoint's scale key as the model
    remaps it: ``weight_scale`` for ``quant_method: mxfp4`` checkpoints,
    ``weight_scale_inv`` for DeepSeek-V4 (whose loader renames ``.scale``).
    """
    return {
        "w13": "w13_weight",
        "w13_scale": f"w13_{scale_suffix}",
        "w2": "w2_weight",
        "w2_scale": f"w2_{scale_suffix}",
    }


def layer_shard(layer) -> ExpertShard:
    """The :class:`ExpertShard` of a SGLang ``FusedMoE`` layer on this rank."""
    return ExpertShard(
        num_experts=layer.num_global_routed_experts,
        hidden_size=layer.hidden_size_unpadded,
        intermediate_size=layer.intermediate_size_per_partition * layer.moe_tp_size,
        ep_size=layer.moe_ep_size,
        ep_rank=layer.moe_ep_rank,
        tp_size=layer.moe_tp_size,
        tp_rank=layer.moe_tp_rank,
    )


class DSparkMxfp4MoEMethod(FusedMoEMethodBase):
    """FusedMoE quant method for MXFP4 experts, computed by :func:`moe_forward`."""

    def __init__(self, prefix: str = "", impl: str = "auto", scale_suffix: str = "weight_scale") -> None:
        super().__init__()
        self.prefix = prefix
        self.impl = impl
        self.names = param_names(scale_suffix)
        self.runner = None
        self.shard: ExpertShard | None = None
        self._checkpoint_size_known = False

    def create_weights(self, layer, num_experts, hidden_size, intermediate_size_per_partition, params_dtype, **extra):
        if extra.get("with_bias"):
            raise ValueError(f"{self.prefix}: flashinfer_mxfp4 (sglang-dspark) does not support expert biases")
        if layer.num_fused_shared_experts:
            raise ValueError(
                f"{self.prefix}: flashinfer_mxfp4 (sglang-dspark) keeps shared experts out of the routed "
                "MoE; serve with --disable-shared-experts-fusion"
            )
        cfg = layer.moe_runner_config
        if cfg.activation != "silu" or cfg.gemm1_alpha is not None or cfg.apply_router_weight_on_input:
            raise ValueError(
                f"{self.prefix}: flashinfer_mxfp4 (sglang-dspark) runs SiLU-gated experts only "
                f"(activation={cfg.activation!r}, gemm1_alpha={cfg.gemm1_alpha})"
            )
        shard = layer_shard(layer)
        if shard.num_local_experts != num_experts:
            raise ValueError(
                f"{self.prefix}: {num_experts} local experts but the EP split gives {shard.num_local_experts} "
                "(redundant EPLB experts are not supported by this runner)"
            )
        self.shard = shard
        loader = self._weight_loader
        for name, shape in shard.local_shapes().items():
            param = torch.nn.Parameter(torch.zeros(shape, dtype=torch.uint8), requires_grad=False)
            param.weight_loader = loader
            layer.register_parameter(self.names[name], param)

    def _weight_loader(self, param, loaded_weight, weight_name, shard_id, expert_id, **_):
        kind = "scale" if "scale" in weight_name else "weight"
        if not self._checkpoint_size_known:
            self._fit_checkpoint_intermediate(loaded_weight, shard_id, kind)
        copy_expert_tensor(
            param.data, loaded_weight, shard=self.shard, global_expert=int(expert_id), shard_id=shard_id, kind=kind
        )
        return True

    def _fit_checkpoint_intermediate(self, tensor: torch.Tensor, shard_id: str, kind: str) -> None:
        # On CPU, SGLang pads the model's intermediate size for tensor parallelism
        # (adjust_config_with_unaligned_cpu_tp, by the full TP size even under EP)
        # after the checkpoint was written: the layer is wider than its tensors.
        size = checkpoint_intermediate_of(tensor, shard_id, kind)
        if size != self.shard.intermediate_size:
            try:
                self.shard = dataclasses.replace(self.shard, checkpoint_intermediate_size=size)
            except ValueError as e:
                raise ValueError(f"{self.prefix}: checkpoint experts do not fit the layer: {e}") from None
        self._checkpoint_size_known = True

    def process_weights_after_loading(self, layer) -> None:
        return None

    def create_moe_runner(self, layer, moe_runner_config) -> None:
        self.moe_runner_config = moe_runner_config

    def get_moe_runner_backend(self, layer):
        from sglang.srt.layers.moe.utils import MoeRunnerBackend

        # flashinfer_mxfp4 keeps global expert ids in the dispatcher; apply() rebases them.
        return MoeRunnerBackend.FLASHINFER_MXFP4

    def apply(self, layer, dispatch_output):
        from sglang.srt.layers.moe.token_dispatcher.standard import StandardCombineInput
        from sglang.srt.layers.moe.topk import TopKOutputChecker

        topk = dispatch_output.topk_output
        if TopKOutputChecker.format_is_bypassed(topk):
            topk = topk.to_standard()
        x = dispatch_output.hidden_states
        h = self.shard.hidden_size
        cfg = self.moe_runner_config
        w = {name: getattr(layer, param) for name, param in self.names.items()}
        out = moe_forward(
            x[..., :h],
            w["w13"],
            w["w13_scale"],
            w["w2"],
            w["w2_scale"],
            topk.topk_weights,
            topk.topk_ids,
            impl=self.impl,
            swiglu_limit=cfg.swiglu_limit,
            expert_offset=self.shard.expert_offset,
            num_local_experts=self.shard.num_local_experts,
        )
        factor = cfg.routed_scaling_factor
        if factor is not None and factor != 1.0 and not layer.should_fuse_routed_scaling_factor_in_topk:
            out = out * factor
        return StandardCombineInput(hidden_states=out)


