"""The SGLang quant method behind ``--moe-runner-backend flashinfer_mxfp4``, driven without a server.

Each (EP, TP) rank gets its own layer; every checkpoint expert tensor is fed to
every rank's loader under the names SGLang's model loaders use, and the rank
outputs (what the layer all-reduces) must sum to the unsharded MoE.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sglang_dspark.moe import mxfp4
from sglang_dspark.moe.moe_forward import moe_forward

pytest.importorskip("sglang")

E, H, I, K = 8, 64, 64, 2


class FakeFusedMoE(torch.nn.Module):
    def __init__(self, ep_size: int, ep_rank: int, tp_size: int, tp_rank: int, limit, factor) -> None:
        super().__init__()
        self.num_global_routed_experts = E
        self.hidden_size_unpadded = H
        self.intermediate_size_per_partition = I // tp_size
        self.moe_ep_size, self.moe_ep_rank, self.moe_tp_size, self.moe_tp_rank = ep_size, ep_rank, tp_size, tp_rank
        self.num_fused_shared_experts = 0
        self.should_fuse_routed_scaling_factor_in_topk = False
        self.moe_runner_config = SimpleNamespace(
            activation="silu", gemm1_alpha=None, apply_router_weight_on_input=False,
            swiglu_limit=limit, routed_scaling_factor=factor,
        )


def checkpoint():
    g = torch.Generator().manual_seed(0)
    return {
        (e, s): mxfp4.quantize(torch.randn(*(shape), generator=g) * 0.3)
        for e in range(E)
        for s, shape in (("w1", (I, H)), ("w3", (I, H)), ("w2", (H, I)))
    }


def build(method_cls, ckpt, scale_suffix: str, impl: str = "torch", **rank):
    layer = FakeFusedMoE(**rank)
    method = method_cls("model.layers.0.mlp.experts", impl=impl, scale_suffix=scale_suffix)
    method.create_weights(layer, E // rank["ep_size"], H, I // rank["tp_size"], torch.float32)
    method.create_moe_runner(layer, layer.moe_runner_config)
    params = dict(layer.named_parameters())
    for (e, s), (packed, scale) in ckpt.items():
        group = "w13_" if s in ("w1", "w3") else "w2_"
        for suffix, tensor in (("weight", packed), (scale_suffix, scale.view(torch.float8_e8m0fnu))):
            name = f"experts.{group}{suffix}"  # what make_expert_params_mapping produces
            param = params[name[len("experts."):]]
            param.weight_loader(param, tensor, name, shard_id=s, expert_id=e)
    method.process_weights_after_loading(layer)  # as SGLang's loader does after the last tensor
    return layer, method


def reference_inputs(ckpt, *, tokens: int, seed: int, limit=None):
    """(activations, top-k ids, top-k weights, the unsharded torch MoE output) for ``ckpt``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, H, generator=g)
    ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(tokens)]).to(torch.int32)
    weights = torch.rand(tokens, K, generator=g)
    w13 = torch.stack([torch.cat([ckpt[(e, "w1")][0], ckpt[(e, "w3")][0]]) for e in range(E)])
    w13s = torch.stack([torch.cat([ckpt[(e, "w1")][1], ckpt[(e, "w3")][1]]) for e in range(E)])
    w2 = torch.stack([ckpt[(e, "w2")][0] for e in range(E)])
    w2s = torch.stack([ckpt[(e, "w2")][1] for e in range(E)])
    return x, ids, weights, moe_forward(x, w13, w13s, w2, w2s, weights, ids, impl="torch", swiglu_limit=limit)


@pytest.mark.parametrize("scale_suffix, limit, factor", [("weight_scale", None, None), ("weight_scale_inv", 1.0, 1.5)])
def test_ranks_sum_to_unsharded_moe(scale_suffix, limit, factor) -> None:
    from sglang.srt.layers.moe.topk import StandardTopKOutput
    from sglang.srt.layers.moe.utils import MoeRunnerBackend

    from sglang_dspark.sglang.mxfp4_moe_method import DSparkMxfp4MoEMethod

    ckpt = checkpoint()
    x, ids, weights, want = reference_inputs(ckpt, tokens=5, seed=1, limit=limit)
    want = want * (factor or 1.0)

    dispatch = SimpleNamespace(hidden_states=x, topk_output=StandardTopKOutput(weights, ids, torch.zeros(5, E)))
    total = torch.zeros_like(want)
    for ep_rank in range(2):
        for tp_rank in range(2):
            layer, method = build(DSparkMxfp4MoEMethod, ckpt, scale_suffix, ep_size=2, ep_rank=ep_rank,
                                  tp_size=2, tp_rank=tp_rank, limit=limit, factor=factor)
            assert method.get_moe_runner_backend(layer) is MoeRunnerBackend.FLASHINFER_MXFP4
            assert getattr(layer, f"w2_{scale_suffix}").shape == (4, H, I // 2 // 32)
            total += method.apply(layer, dispatch).hidden_states
    torch.testing.assert_close(total, want, rtol=1e-5, atol=1e-5)


def test_cpu_layer_keeps_one_copy_and_runs_torch() -> None:
    from sglang.srt.layers.moe.topk import StandardTopKOutput

    from sglang_dspark.sglang.mxfp4_moe_method import DSparkMxfp4MoEMethod

    ckpt = checkpoint()
    layer, method = build(DSparkMxfp4MoEMethod, ckpt, "weight_scale", impl="auto", ep_size=1, ep_rank=0,
                          tp_size=1, tp_rank=0, limit=None, factor=None)
    assert method.impl_in_use == "torch" and method.prepared is None
    one_copy = E * (2 * I * H // 2 + 2 * I * H // 32 + H * I // 2 + H * I // 32)  # packed nibbles + E8M0 scales
    assert method.held_bytes(layer) == one_copy
    x, ids, weights, want = reference_inputs(ckpt, tokens=4, seed=2)
    dispatch = SimpleNamespace(hidden_states=x, topk_output=StandardTopKOutput(weights, ids, torch.zeros(4, E)))
    torch.testing.assert_close(method.apply(layer, dispatch).hidden_states, want)


def test_flashinfer_layout_replaces_the_raw_copy_after_loading(monkeypatch) -> None:
    """On a GPU where FlashInfer serves: converted once after loading, raw bytes freed, no cache at forward."""
    from sglang.srt.layers.moe.topk import StandardTopKOutput

    from sglang_dspark.moe import flashinfer_mxfp4 as fi
    from sglang_dspark.sglang import mxfp4_moe_method as m

    conversions = []

    def prepare_weights(w13, w13_scale, w2, w2_scale, backend):  # same bytes as FlashInfer's layout
        conversions.append(backend)
        return fi.PreparedWeights(backend, w13.clone(), w13_scale.clone(), w2.clone(), w2_scale.clone(),
                                  num_local_experts=w13.shape[0], hidden_size=w13.shape[2] * 2,
                                  intermediate_size=w13.shape[1] // 2)

    def flashinfer_moe(hidden, prepared, topk_weights, topk_ids, *, swiglu_limit=None, expert_offset=0):
        return moe_forward(hidden, prepared.w13, prepared.w13_scale, prepared.w2, prepared.w2_scale,
                           topk_weights, topk_ids, impl="torch", swiglu_limit=swiglu_limit,
                           expert_offset=expert_offset)

    monkeypatch.setattr(m, "resolve_impl", lambda *a: "flashinfer")
    monkeypatch.setattr(fi, "select_backend", lambda *a: ("sm90_cutlass", "stated SM90 facts"))
    monkeypatch.setattr(fi, "prepare_weights", prepare_weights)
    monkeypatch.setattr(fi, "flashinfer_moe", flashinfer_moe)
    fi._prepared.clear()

    ckpt = checkpoint()
    layer, method = build(m.DSparkMxfp4MoEMethod, ckpt, "weight_scale", impl="auto", ep_size=1, ep_rank=0,
                          tp_size=1, tp_rank=0, limit=None, factor=None)
    assert conversions == ["sm90_cutlass"] and method.impl_in_use == "flashinfer"
    one_copy = E * (2 * I * H // 2 + 2 * I * H // 32 + H * I // 2 + H * I // 32)
    assert method.held_bytes(layer) == one_copy
    assert all(getattr(layer, name).numel() == 0 for name in method.names.values())  # raw copy freed
    x, ids, weights, want = reference_inputs(ckpt, tokens=4, seed=2)
    dispatch = SimpleNamespace(hidden_states=x, topk_output=StandardTopKOutput(weights, ids, torch.zeros(4, E)))
    torch.testing.assert_close(method.apply(layer, dispatch).hidden_states, want)
    assert conversions == ["sm90_cutlass"] and not fi._prepared  # nothing built at the first forward


def test_unsupported_layers_are_refused() -> None:
    from sglang_dspark.sglang.mxfp4_moe_method import DSparkMxfp4MoEMethod

    layer = FakeFusedMoE(1, 0, 1, 0, None, None)
    layer.num_fused_shared_experts = 1
    with pytest.raises(ValueError, match="--disable-shared-experts-fusion"):
        DSparkMxfp4MoEMethod("p").create_weights(layer, E, H, I, torch.float32)
    layer = FakeFusedMoE(1, 0, 1, 0, None, None)
    layer.moe_runner_config.gemm1_alpha = 1.702
    with pytest.raises(ValueError, match="SiLU-gated"):
        DSparkMxfp4MoEMethod("p").create_weights(layer, E, H, I, torch.float32)


def test_runner_env_switches(monkeypatch) -> None:
    from sglang_dspark.sglang import mxfp4_moe_runner as runner
    from sglang_dspark.sglang.serving_choice import OURS, SGLANG, ServingChoiceError

    monkeypatch.delenv(runner.RUNNER_ENV, raising=False)
    assert runner.mxfp4_choice("cuda", (9, 0)).impl == SGLANG  # SM90: SGLang's FlashInfer methods
    assert runner.mxfp4_choice("cuda", (8, 0)).impl == OURS  # SM80: SGLang's refuses, ours serves
    assert runner.mxfp4_choice("cpu").impl == OURS
    monkeypatch.setenv(runner.RUNNER_ENV, "builtin")
    assert runner.mxfp4_choice("cuda", (10, 0)).impl == SGLANG
    with pytest.raises(ServingChoiceError, match="SM80"):
        runner.mxfp4_choice("cuda", (8, 0))
    monkeypatch.setenv(runner.RUNNER_ENV, "sglang-dspark")
    assert runner.mxfp4_choice("cuda", (9, 0)).impl == OURS
    monkeypatch.setenv(runner.RUNNER_ENV, "nonsense")
    with pytest.raises(ValueError, match="builtin"):
        runner.mxfp4_choice("cpu")
    monkeypatch.setenv(runner.IMPL_ENV, "cuda")
    with pytest.raises(ValueError, match="torch"):
        runner.selected_impl()
