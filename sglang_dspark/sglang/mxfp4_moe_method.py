"""SGLang ``FusedMoE`` quant method for MXFP4 experts, computed by :func:`moe_forward`.

Selected by :mod:`sglang_dspark.sglang.mxfp4_moe_runner` under
``--moe-runner-backend flashinfer_mxfp4``. Parameters hold the runner layout of
:mod:`sglang_dspark.moe.moe_forward` as raw bytes (``w13_weight``,
``w13_weight_scale``, ``w2_weight``, ``w2_weight_scale``, uint8); the model's
expert mapping (``experts.{e}.gate_proj.weight`` -> ``experts.w13_weight``, and
``...weight_scale`` -> ``experts.w13_weight_scale``) feeds their loader, which
copies this rank's slice (:mod:`sglang_dspark.moe.expert_sharding`).

After loading, :meth:`DSparkMxfp4MoEMethod.process_weights_after_loading` fixes
the layer's implementation once (torch on CPU; FlashInfer or Triton on GPUs).
For FlashInfer it converts the experts to the kernel's layout there and frees
the raw bytes, as SGLang's own MXFP4 methods do: the layer holds one copy, and
it is in place before SGLang measures free memory to size the KV pool (no
second copy appears at the first forward).
"""

from __future__ import annotations

import dataclasses

import torch
from sglang.srt.layers.quantization.base_config import FusedMoEMethodBase

from sglang_dspark.moe.expert_sharding import ExpertShard, checkpoint_intermediate_of, copy_expert_tensor
from sglang_dspark.moe import flashinfer_mxfp4 as fi
from sglang_dspark.moe.moe_forward import moe_forward, resolve_impl


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
        self.params_dtype: torch.dtype | None = None
        self.impl_in_use: str | None = None  # fixed by process_weights_after_loading
        self.prepared: fi.PreparedWeights | None = None  # FlashInfer's layout, when it serves

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
        self.params_dtype = params_dtype
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
        """Fix the implementation; for FlashInfer, convert to its layout once and free the raw copy."""
        w13 = getattr(layer, self.names["w13"])
        probe = torch.empty(0, dtype=self.params_dtype or torch.float32, device=w13.device)
        self.impl_in_use = resolve_impl(self.impl, probe, self.shard.hidden_size, w13.shape[1] // 2)
        if self.impl_in_use != "flashinfer":
            return
        backend, why = fi.select_backend(w13.device, self.shard.hidden_size, w13.shape[1] // 2)
        if backend is None:
            raise fi.FlashinferUnavailableError(f"{self.prefix}: impl='flashinfer' unavailable: {why}")
        local = self.shard.num_local_experts
        raw = [getattr(layer, self.names[n]) for n in ("w13", "w13_scale", "w2", "w2_scale")]
        self.prepared = fi.prepare_weights(*(t.data[:local] for t in raw), backend)
        for param in raw:
            param.data = torch.empty(0, dtype=param.dtype, device=param.device)

    def held_bytes(self, layer) -> int:
        """Bytes of expert weights this layer keeps (raw parameters plus the kernel layout)."""
        tensors = [getattr(layer, n) for n in self.names.values()]
        if self.prepared is not None:
            p = self.prepared
            tensors += [p.w13, p.w13_scale, p.w2, p.w2_scale]
        return sum(t.numel() * t.element_size() for t in tensors)

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
        if self.prepared is not None:
            out = fi.flashinfer_moe(
                x[..., :h], self.prepared, topk.topk_weights, topk.topk_ids,
                swiglu_limit=cfg.swiglu_limit, expert_offset=self.shard.expert_offset,
            )
        else:
            out = self._moe_forward(layer, x[..., :h], topk, cfg)
        factor = cfg.routed_scaling_factor
        if factor is not None and factor != 1.0 and not layer.should_fuse_routed_scaling_factor_in_topk:
            out = out * factor
        return StandardCombineInput(hidden_states=out)

    def _moe_forward(self, layer, x, topk, cfg):
        w = {name: getattr(layer, param) for name, param in self.names.items()}
        return moe_forward(
            x,
            w["w13"],
            w["w13_scale"],
            w["w2"],
            w["w2_scale"],
            topk.topk_weights,
            topk.topk_ids,
            impl=self.impl_in_use or self.impl,
            swiglu_limit=cfg.swiglu_limit,
            expert_offset=self.shard.expert_offset,
            num_local_experts=self.shard.num_local_experts,
        )


