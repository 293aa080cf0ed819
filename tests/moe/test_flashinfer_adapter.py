"""FlashInfer adapter plumbing, against a stand-in ``flashinfer`` that computes
the MoE the way FlashInfer documents its MXFP4 entry points ([up; gate] fc1,
per-expert clamp, experts outside the rank's range skipped). Layout shuffles
are identities here; only a GPU run checks those."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from sglang_dspark.moe import flashinfer_mxfp4 as fi
from sglang_dspark.moe import mxfp4
from sglang_dspark.moe.moe_forward import moe_forward

H, I = 128, 128


def _expert_moe(x, ids, weights, fc1, fc1_s, fc2, fc2_s, limit, start, num_local):
    out = torch.zeros(x.shape, dtype=torch.float32)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j]) - start
            if not 0 <= e < num_local:
                continue
            up, gate = (mxfp4.dequantize(fc1[e], fc1_s[e]) @ x[t].float()).chunk(2)
            if limit is not None:
                gate, up = gate.clamp(max=float(limit[e])), up.clamp(-float(limit[e]), float(limit[e]))
            out[t] += float(weights[t, j]) * (mxfp4.dequantize(fc2[e], fc2_s[e]) @ (F.silu(gate) * up))
    return out


def _fake_flashinfer() -> types.ModuleType:
    calls: dict = {}

    def cutlass_fused_moe(*, input, token_selected_experts, token_final_scales, fc1_expert_weights,
                          fc2_expert_weights, output_dtype, quant_scales, swiglu_limit, ep_size, ep_rank,
                          use_w4_group_scaling, activation_type, output):  # fmt: skip
        calls.update(ep_size=ep_size, use_w4_group_scaling=use_w4_group_scaling, ids=token_selected_experts)
        num_local = fc1_expert_weights.shape[0]
        s1, s2 = (s.view(torch.uint8) for s in quant_scales)
        output.copy_(_expert_moe(input, token_selected_experts, token_final_scales, fc1_expert_weights, s1,
                                 fc2_expert_weights, s2, swiglu_limit, ep_rank * num_local, num_local))  # fmt: skip
        return output

    def trtllm_fp4_block_scale_routed_moe(*, topk_ids, hidden_states, gemm1_weights, gemm1_weights_scale,
                                          gemm1_clamp_limit, gemm2_weights, gemm2_weights_scale, num_experts,
                                          local_expert_offset, local_num_experts, output, **_):  # fmt: skip
        ids, weights = topk_ids
        calls.update(num_experts=num_experts, ids=ids)
        s1, s2 = (s.view(torch.uint8) for s in (gemm1_weights_scale, gemm2_weights_scale))
        output.copy_(_expert_moe(hidden_states, ids, weights, gemm1_weights, s1, gemm2_weights, s2,
                                 gemm1_clamp_limit, local_expert_offset, local_num_experts))  # fmt: skip
        return [output]

    def permute(cache, w, tile, num_elts_per_sf=None):
        return torch.arange(w.shape[0])

    fused_moe = types.ModuleType("flashinfer.fused_moe")
    fused_moe.cutlass_fused_moe = cutlass_fused_moe
    fused_moe.trtllm_fp4_block_scale_routed_moe = trtllm_fp4_block_scale_routed_moe
    fused_moe.interleave_moe_weights_for_sm90_mixed_gemm = lambda w, kind: w.clone()
    fused_moe.interleave_moe_scales_for_sm90_mixed_gemm = lambda s, group_size: s.clone()
    fused_moe.ActivationType = types.SimpleNamespace(Swiglu=3)
    fused_moe.RoutingMethodType = types.SimpleNamespace(TopK=5)
    fused_moe.core = types.ModuleType("flashinfer.fused_moe.core")
    fused_moe.core._maybe_get_cached_w3_w1_permute_indices = permute
    fused_moe.core.get_w2_permute_indices_with_cache = permute
    root = types.ModuleType("flashinfer")
    root.fused_moe = fused_moe
    root.fp4_quantization = types.ModuleType("flashinfer.fp4_quantization")
    root.fp4_quantization.block_scale_interleave = lambda s: s.clone()
    root.calls = calls
    return root


@pytest.fixture
def fake_flashinfer(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    root = _fake_flashinfer()
    for module in (root, root.fused_moe, root.fused_moe.core, root.fp4_quantization):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return root


@pytest.mark.parametrize("backend", ["sm90_cutlass", "sm100_trtllm"])
def test_adapter_matches_reference(fake_flashinfer: types.ModuleType, backend: str) -> None:
    g = torch.Generator().manual_seed(0)
    num_experts, offset, num_local = 8, 4, 4
    w13, w13_s = mxfp4.quantize(torch.randn(num_experts, 2 * I, H, generator=g) * 0.1)
    w2, w2_s = mxfp4.quantize(torch.randn(num_experts, H, I, generator=g) * 0.1)
    local = [t[offset : offset + num_local] for t in (w13, w13_s.view(torch.float8_e8m0fnu), w2, w2_s)]
    x = torch.randn(5, H, generator=g).to(torch.bfloat16)
    ids = torch.stack([torch.randperm(num_experts, generator=g)[:3] for _ in range(5)]).to(torch.int32)
    weights = torch.rand(5, 3, generator=g)

    prepared = fi.prepare_weights(*local, backend)
    got = fi.flashinfer_moe(x, prepared, weights, ids, swiglu_limit=0.5, expert_offset=offset)
    want = moe_forward(x, *local, weights, ids, impl="torch", swiglu_limit=0.5, expert_offset=offset)
    scale = want.float().abs().max()
    assert (got.float() - want.float()).abs().max() <= 2e-2 * scale
    routed = fake_flashinfer.calls["ids"]
    assert routed.dtype == torch.int32 and int(routed.max()) <= num_local and int(routed.min()) >= 0
    if backend == "sm90_cutlass":
        assert fake_flashinfer.calls["ep_size"] == 2 and fake_flashinfer.calls["use_w4_group_scaling"]
    else:
        assert fake_flashinfer.calls["num_experts"] == 2 * num_local


def test_flashinfer_rejects_non_bf16(fake_flashinfer: types.ModuleType) -> None:
    w13, w13_s = mxfp4.quantize(torch.randn(2, 2 * I, H))
    w2, w2_s = mxfp4.quantize(torch.randn(2, H, I))
    prepared = fi.prepare_weights(w13, w13_s, w2, w2_s, "sm90_cutlass")
    with pytest.raises(ValueError, match="bfloat16"):
        fi.flashinfer_moe(torch.randn(1, H), prepared, torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.int32))
