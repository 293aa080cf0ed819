"""MoE over MXFP4 experts: torch reference vs dense math, Triton (interpreted on CPU) vs torch."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from sglang_dspark.moe import mxfp4
from sglang_dspark.moe.moe_forward import moe_forward, resolve_impl, shard_intermediate

pytest.importorskip("triton")

H, I = 64, 64


def make_experts(num_experts: int, hidden: int = H, inter: int = I, seed: int = 0, gain: float = 0.05):
    """Random MXFP4 experts whose rows span several scale exponents."""
    g = torch.Generator().manual_seed(seed)

    def q(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.randn(num_experts, rows, cols, generator=g) * gain
        w = w * torch.exp2(torch.randint(-2, 3, (num_experts, rows, 1), generator=g).float())
        return mxfp4.quantize(w)

    return (*q(2 * inter, hidden), *q(hidden, inter))


def make_routing(tokens: int, top_k: int, num_experts: int, seed: int = 0, dtype=torch.float32, hidden: int = H):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g).to(dtype)
    ids = torch.stack([torch.randperm(num_experts, generator=g)[:top_k] for _ in range(tokens)]).reshape(tokens, top_k)
    weights = torch.rand(tokens, top_k, generator=g)
    return x, weights, ids.to(torch.int32)


def dense_moe(x, experts, weights, ids, limit=None, local_range=None):
    """Float64, token by token, from fully dequantised weights indexed by global id."""
    w13 = mxfp4.dequantize(experts[0], experts[1]).double()
    w2 = mxfp4.dequantize(experts[2], experts[3]).double()
    lo, hi = (0, w13.shape[0]) if local_range is None else local_range
    out = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            if not lo <= e < hi:
                continue
            gate, up = (w13[e] @ x[t].double()).chunk(2)
            if limit is not None:
                gate, up = gate.clamp(max=limit), up.clamp(-limit, limit)
            out[t] += float(weights[t, j]) * (w2[e] @ (F.silu(gate) * up))
    return out


def assert_close(got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    scale = want.float().abs().max().clamp_min(1e-6)
    err = (got.float() - want.float()).abs().max()
    assert err <= rel * scale, f"max error {err:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("limit", [None, 0.3])
def test_torch_reference_matches_dense(limit: float | None) -> None:
    experts = make_experts(8)
    x, w, ids = make_routing(7, 3, 8)
    got = moe_forward(x, *experts, w, ids, impl="torch", swiglu_limit=limit)
    assert_close(got, dense_moe(x, experts, w, ids, limit), 1e-5)


def test_torch_reference_expert_parallel_slice() -> None:
    experts = make_experts(16)
    x, w, ids = make_routing(5, 4, 16)
    local = tuple(t[8:] for t in experts)
    got = moe_forward(x, *local, w, ids, impl="torch", expert_offset=8)
    assert_close(got, dense_moe(x, experts, w, ids, local_range=(8, 16)), 1e-5)


TRITON_CASES = {
    # name: (tokens, top_k, experts, dtype, swiglu_limit, expert_offset, local experts, reduce)
    "decode_T1_top6": (1, 6, 8, torch.float32, None, 0, None, "sum"),
    "odd_T7_top8_bf16": (7, 8, 8, torch.bfloat16, None, 0, None, "sum"),
    "idle_experts_fp16": (3, 2, 8, torch.float16, None, 0, None, "sum"),
    "ep_slice": (5, 4, 16, torch.float32, None, 8, 8, "sum"),
    "swiglu_clamp_bf16": (7, 3, 8, torch.bfloat16, 0.3, 0, None, "sum"),
    "atomic_reduce_ep": (7, 2, 8, torch.float32, 0.3, 4, 4, "atomic"),
    "ragged_tiles_96": (4, 2, 4, torch.float32, None, 0, None, "sum"),  # H = I = 96: partial N and K tiles
}


@pytest.mark.parametrize("case", list(TRITON_CASES), ids=list(TRITON_CASES))
def test_triton_matches_torch(case: str) -> None:
    from kernels.mxfp4_moe import fused_moe_mxfp4

    tokens, top_k, num_experts, dtype, limit, offset, num_local, reduce = TRITON_CASES[case]
    size = 96 if case == "ragged_tiles_96" else H
    experts = make_experts(num_experts, hidden=size, inter=size)
    if num_local is not None:
        experts = tuple(t[offset : offset + num_local] for t in experts)
    x, w, ids = make_routing(tokens, top_k, num_experts, dtype=dtype, hidden=size)
    kwargs = dict(swiglu_limit=limit, expert_offset=offset, num_local_experts=num_local)
    want = moe_forward(x, *experts, w, ids, impl="torch", **kwargs)
    got = fused_moe_mxfp4(x, *experts, w, ids, reduce=reduce, **kwargs)
    assert got.dtype == dtype and got.shape == x.shape
    assert_close(got, want, 1e-5 if dtype == torch.float32 else 2e-2)
    if limit is not None:  # the clamp must actually bite in these cases
        unclamped = moe_forward(x, *experts, w, ids, impl="torch", expert_offset=offset, num_local_experts=num_local)
        assert (unclamped.float() - want.float()).abs().max() > 0.05 * want.float().abs().max()


def test_triton_accepts_e8m0_scales_and_empty_batch() -> None:
    experts = make_experts(8)
    e8m0 = (experts[0], experts[1].view(torch.float8_e8m0fnu), experts[2], experts[3].view(torch.float8_e8m0fnu))
    x, w, ids = make_routing(2, 2, 8)
    assert torch.equal(
        moe_forward(x, *e8m0, w, ids, impl="triton"), moe_forward(x, *experts, w, ids, impl="triton")
    )
    empty = moe_forward(x[:0], *e8m0, w[:0], ids[:0], impl="triton")
    assert empty.shape == (0, H)


def test_expert_parallel_ranks_sum_to_full_output() -> None:
    experts = make_experts(8)
    x, w, ids = make_routing(6, 3, 8)
    full = moe_forward(x, *experts, w, ids, impl="torch")
    ranks = [
        moe_forward(x, *(t[r * 4 : (r + 1) * 4] for t in experts), w, ids, impl="triton", expert_offset=r * 4)
        for r in range(2)
    ]
    assert_close(ranks[0] + ranks[1], full, 1e-5)


def test_tensor_parallel_shards_sum_to_full_output() -> None:
    experts = make_experts(4, inter=128)
    x, w, ids = make_routing(3, 2, 4)
    full = moe_forward(x, *experts, w, ids, impl="torch", swiglu_limit=0.3)
    shards = [shard_intermediate(*experts, r, 4) for r in range(4)]
    assert shards[0][0].shape == (4, 64, H // 2) and shards[0][3].shape == (4, H, 1)
    total = sum(moe_forward(x, *s, w, ids, impl="torch", swiglu_limit=0.3) for s in shards)
    assert_close(total, full, 1e-5)
    with pytest.raises(ValueError):
        shard_intermediate(*experts, 0, 8)  # 16-wide shards would split a scale block


def test_align_kernel_matches_reference() -> None:
    from kernels.mxfp4_moe import moe_align_block_size, moe_align_block_size_reference

    g = torch.Generator().manual_seed(4)
    for tokens, top_k, num_experts, num_local, offset, block_m in [
        (1, 6, 8, 8, 0, 16),
        (7, 8, 8, 8, 0, 16),
        (9, 3, 16, 5, 3, 4),
        (40, 2, 32, 32, 0, 8),
    ]:
        ids = torch.randint(0, num_experts, (tokens, top_k), generator=g, dtype=torch.int32)
        got = moe_align_block_size(ids, block_m, expert_offset=offset, num_local_experts=num_local)
        sorted_ids, block_expert, used = moe_align_block_size_reference(ids, block_m, offset, num_local)
        assert int(got.num_padded.item()) == used
        assert torch.equal(got.sorted_ids[:used], sorted_ids)
        assert (got.sorted_ids[used:] == tokens * top_k).all()
        assert torch.equal(got.block_expert[: used // block_m], block_expert)


def test_flashinfer_impl_fails_clearly_without_support() -> None:
    from sglang_dspark.moe.flashinfer_mxfp4 import FlashinferUnavailableError

    experts = make_experts(2, hidden=128, inter=128)
    x = torch.randn(1, 128, dtype=torch.bfloat16)
    with pytest.raises(FlashinferUnavailableError, match="unavailable"):
        moe_forward(x, *experts, torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.int32), impl="flashinfer")


def test_auto_uses_torch_on_cpu_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    x = torch.randn(1, H)
    with caplog.at_level(logging.INFO, logger="sglang_dspark.moe.moe_forward"):
        resolve_impl("auto", x, H, I)
        assert resolve_impl("auto", x, H, I) == "torch"
    assert sum("impl='auto' uses torch" in r.getMessage() for r in caplog.records) <= 1
    with pytest.raises(ValueError):
        resolve_impl("cuda", x, H, I)  # type: ignore[arg-type]


def test_shape_errors_are_reported() -> None:
    experts = make_experts(2)
    x, w, ids = make_routing(1, 2, 2)
    with pytest.raises(ValueError, match="w13"):
        moe_forward(x[:, :32], *experts, w, ids, impl="torch")
    with pytest.raises(ValueError, match="num_local_experts"):
        moe_forward(x, *experts, w, ids, impl="torch", num_local_experts=3)
