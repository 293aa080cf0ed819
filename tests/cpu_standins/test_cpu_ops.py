"""sglang_dspark.sglang.cpu_ops: the pure-torch torch.ops.sgl_kernel CPU ops.

Each op is checked against a straightforward torch (or plain Python) computation
and, where SGLang has one, against the GPU kernel it uses for the same job run
by the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
"""

from __future__ import annotations

import pytest
import torch

from sglang_dspark.sglang.cpu_ops import CPU_OP_SCHEMAS, register_cpu_ops


@pytest.fixture(scope="module", autouse=True)
def ops():
    register_cpu_ops()
    return torch.ops.sgl_kernel


def test_registration_is_complete_and_idempotent(ops):
    for name, (schema, _, _) in CPU_OP_SCHEMAS.items():
        assert str(getattr(ops, name).default._schema) == f"sgl_kernel::{schema}"
    assert register_cpu_ops() == []


def test_feature_probes_stay_off(ops):
    # SGLang switches code paths on these names; registering them would be wrong.
    for probe in ("convert_weight_packed", "fused_qk_norm_cpu", "fused_qk_norm_rope_cpu"):
        assert probe not in CPU_OP_SCHEMAS
    from sglang.srt.utils.common import cpu_has_amx_support

    assert not cpu_has_amx_support() or hasattr(ops, "convert_weight_packed")


# ---------------------------------------------------------------------------- murmur_hash32


def _murmur_py(seed: int, pos: int, col: int) -> int:
    m = 0xFFFFFFFF

    def rotl(x, r):
        return ((x << r) | (x >> (32 - r))) & m

    def mix(h, k):
        k = rotl((k * 0xCC9E2D51) & m, 15)
        k = (k * 0x1B873593) & m
        h = rotl(h ^ k, 13)
        return (h * 5 + 0xE6546B64) & m

    h = 0
    for k in (seed & m, (seed >> 32) & m, pos & m, col & m):
        h = mix(h, k)
    h ^= 16
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & m
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & m
    return h ^ (h >> 16)


@pytest.mark.parametrize("positions_dtype", [torch.int64, torch.uint64])
def test_murmur_hash32_known_values(ops, positions_dtype):
    # The expected values of SGLang's own test of the real CPU kernel.
    from sglang.kernels.ops.sampling.murmur_hash import murmur_hash32

    seed = torch.tensor([0, 1, 42, 0x123456789ABCDEF0], dtype=torch.uint64)
    positions = torch.tensor([0, 7, 123, 456], dtype=positions_dtype)
    cols = torch.tensor([0, 1, 2, 17], dtype=torch.int64)
    out = murmur_hash32(seed, positions, cols)  # SGLang's CPU entry point
    assert out.dtype == torch.uint32 and out.shape == (4, 4)
    expected = [
        [2167721464, 10027521, 2423355346, 2203067026],
        [3755322398, 4196701286, 1002451629, 183234019],
        [772287619, 548237471, 2740678348, 3656549299],
        [3746406971, 2891010872, 104055988, 3372550890],
    ]
    assert out.tolist() == expected


def test_murmur_hash32_random_against_python_and_triton(ops):
    from sglang.kernels.ops.sampling.murmur_hash import murmur_hash32_kernel

    gen = torch.Generator().manual_seed(0)
    n, m = 5, 37
    seeds = [int(x) for x in torch.randint(0, 2**62, (n,), generator=gen)] + [2**64 - 1]
    seed = torch.tensor([s - 2**64 if s >= 2**63 else s for s in seeds], dtype=torch.int64).view(torch.uint64)
    positions = torch.randint(0, 2**40, (n + 1,), generator=gen)
    cols = torch.randint(0, 50_000, (m,), generator=gen)
    got = ops.murmur_hash32_cpu(seed, positions, cols)
    want = [[_murmur_py(s, int(p), int(c)) for c in cols] for s, p in zip(seeds, positions)]
    assert got.tolist() == want

    tri = torch.empty((n + 1, m), dtype=torch.uint32)
    murmur_hash32_kernel[(n + 1, 1)](seed, positions, cols, tri, n + 1, m, BLOCK_SIZE=64)
    assert torch.equal(got, tri)


def test_murmur_hash32_empty(ops):
    out = ops.murmur_hash32_cpu(
        torch.empty(0, dtype=torch.uint64), torch.empty(0, dtype=torch.int64), torch.arange(3)
    )
    assert out.shape == (0, 3) and out.dtype == torch.uint32


# ---------------------------------------------------------------------------- Qwen3.5 helpers


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_sigmoid_mul(ops, dtype):
    gen = torch.Generator().manual_seed(1)
    tokens, heads, hd = 5, 3, 8
    # As Qwen3.5's forward_prepare_native makes it: a strided [T, H, D] half of q_gate.
    q_gate = torch.randn((tokens, heads, 2 * hd), generator=gen).to(dtype)
    gate = torch.chunk(q_gate, 2, dim=-1)[1]
    assert not gate.is_contiguous()
    x = torch.randn((tokens, heads * hd), generator=gen).to(dtype)
    want = (x.float() * torch.sigmoid(gate.float()).reshape(tokens, -1)).to(dtype)
    got = x.clone()
    assert ops.fused_sigmoid_mul_cpu(got, gate) is None
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)

    flat_gate = torch.randn((tokens, heads * hd), generator=gen).to(dtype)
    got = x.clone()
    ops.fused_sigmoid_mul_cpu(got, flat_gate)
    torch.testing.assert_close(got, (x.float() * torch.sigmoid(flat_gate.float())).to(dtype), atol=1e-6, rtol=1e-6)


def _gemma_norm(x, w, eps):
    xf = x.float()
    return (xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * (1 + w.float())).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_qk_gemma_rmsnorm(ops, dtype):
    gen = torch.Generator().manual_seed(2)
    tokens, hq, hk, hd, eps = 4, 4, 2, 16, 1e-6
    qkv = torch.randn((tokens, (hq + 2 * hk) * hd), generator=gen).to(dtype)
    q, k, _ = qkv.split([hq * hd, hk * hd, hk * hd], dim=-1)  # strided views, as in the model
    qw, kw = torch.randn(hd, generator=gen).to(dtype), torch.randn(hd, generator=gen).to(dtype)
    q_out, k_out = ops.fused_qk_gemma_rmsnorm_cpu(q, k, qw, kw, eps, hd)
    assert q_out.shape == (tokens * hq, hd) and k_out.shape == (tokens * hk, hd)
    assert q_out.is_contiguous() and k_out.is_contiguous()
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(q_out, _gemma_norm(q.reshape(-1, hd), qw, eps), **tol)
    torch.testing.assert_close(k_out, _gemma_norm(k.reshape(-1, hd), kw, eps), **tol)

    # SGLang's own GemmaRMSNorm layer (the non-fused path of the same model).
    from sglang.srt.layers.layernorm import GemmaRMSNorm

    norm = GemmaRMSNorm(hd, eps=eps)
    norm.weight.data.copy_(qw.float())
    torch.testing.assert_close(q_out.float(), norm.forward_native(q.reshape(-1, hd).float()), **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_qk_gemma_rmsnorm_with_gate(ops, dtype):
    gen = torch.Generator().manual_seed(3)
    tokens, hq, hk, hd, eps = 3, 4, 2, 8, 1e-6
    qkv = torch.randn((tokens, (2 * hq + 2 * hk) * hd), generator=gen).to(dtype)
    q_gate, k, _ = qkv.split([2 * hq * hd, hk * hd, hk * hd], dim=-1)
    qw, kw = torch.randn(hd, generator=gen).to(dtype), torch.randn(hd, generator=gen).to(dtype)
    q_out, k_out, gate = ops.fused_qk_gemma_rmsnorm_with_gate_cpu(q_gate, k, qw, kw, eps, hd, hq)
    per_head = q_gate.reshape(tokens, hq, 2 * hd)
    q_ref, gate_ref = per_head[..., :hd].reshape(-1, hd), per_head[..., hd:].reshape(-1, hd)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(q_out, _gemma_norm(q_ref, qw, eps), **tol)
    torch.testing.assert_close(k_out, _gemma_norm(k.reshape(-1, hd), kw, eps), **tol)
    assert torch.equal(gate, gate_ref) and gate.is_contiguous()


@pytest.mark.parametrize("heads", [(2, 2), (2, 4), (1, 3)])
def test_fused_qkvzba_split_reshape_cat_contiguous(ops, heads):
    from sglang.kernels.ops.attention.triton_gdn_fused_proj import (
        fused_qkvzba_split_reshape_cat_contiguous,
    )

    nk, nv = heads
    dk, dv, tokens = 8, 4, 3
    gen = torch.Generator().manual_seed(nk * 10 + nv)
    qkvz = torch.randn((tokens, 2 * nk * dk + 2 * nv * dv), generator=gen)
    ba = torch.randn((tokens, 2 * nv), generator=gen)
    qkv, z, b, a = ops.fused_qkvzba_split_reshape_cat_contiguous_cpu(qkvz, ba, nk, nv, dk, dv)

    # Qwen3.5's unfused path (fix_query_key_value_ordering, then cat).
    q, k, v, z_ref = qkvz.split([nk * dk, nk * dk, nv * dv, nv * dv], dim=-1)
    b_ref, a_ref = ba.split([nv, nv], dim=-1)
    assert torch.equal(qkv, torch.cat([q, k, v], dim=-1))
    assert torch.equal(z, z_ref.reshape(tokens, nv, dv))
    assert torch.equal(b, b_ref) and torch.equal(a, a_ref)
    assert all(t.is_contiguous() for t in (qkv, z, b, a))

    # The Triton kernel SGLang runs on GPUs for the same split.
    t_qkv, t_z, t_b, t_a = fused_qkvzba_split_reshape_cat_contiguous(qkvz, ba, nk, nv, dk, dv)
    for mine, theirs in zip((qkv, z, b, a), (t_qkv, t_z, t_b, t_a)):
        assert torch.equal(mine, theirs)


# ---------------------------------------------------------------------------- Python-level fallbacks


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("do_add", [False, True])
def test_fused_gate_sigmoid_mul_against_triton(dtype, do_add):
    from sglang.kernels.ops.elementwise.elementwise import _fused_gate_sigmoid_mul_add_kernel

    from sglang_dspark.sglang.cpu_ops import (
        fused_gate_sigmoid_mul_add_torch,
        fused_gate_sigmoid_mul_torch,
    )

    gen = torch.Generator().manual_seed(4)
    tokens, hidden = 5, 48
    h = torch.randn((tokens, hidden), generator=gen).to(dtype)
    w = (0.2 * torch.randn(hidden, generator=gen)).to(dtype)
    shared = torch.randn((tokens, hidden), generator=gen).to(dtype)
    final = torch.randn((tokens, hidden), generator=gen).to(dtype)

    want = final.clone() if do_add else torch.empty_like(shared)
    _fused_gate_sigmoid_mul_add_kernel[(tokens,)](
        h, w, shared, want, hidden_dim=hidden, BLOCK_SIZE=64, DO_ADD=do_add
    )
    if do_add:
        got = final.clone()
        assert fused_gate_sigmoid_mul_add_torch(h, w, shared, got) is None
    else:
        got = fused_gate_sigmoid_mul_torch(h, w, shared)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(got, want, **tol)
    # The straightforward formula.
    gate = torch.sigmoid(h.float() @ w.float())[:, None]
    ref = gate * shared.float() + (final.float() if do_add else 0)
    torch.testing.assert_close(got.float(), ref, **tol)


@pytest.fixture
def restore_fallback_targets():
    """install_cpu_fallbacks patches SGLang modules; put the originals back afterwards."""
    import importlib
    import sys

    from sglang_dspark.sglang.cpu_ops import _FALLBACK_PATCHES

    saved = []
    for mod_name, attr, _, do_import in _FALLBACK_PATCHES:
        module = importlib.import_module(mod_name) if do_import else sys.modules.get(mod_name)
        if module is not None:
            saved.append((module, attr, getattr(module, attr)))
    yield
    for module, attr, fn in saved:
        setattr(module, attr, fn)


def test_install_cpu_fallbacks_wraps_and_dispatches(restore_fallback_targets):
    from sglang.kernels.ops.elementwise import elementwise
    from sglang.srt.layers.moe import fused_moe_native

    from sglang_dspark.sglang.cpu_ops import install_cpu_fallbacks

    patched = install_cpu_fallbacks()
    assert {
        "sglang.kernels.ops.elementwise.elementwise.fused_gate_sigmoid_mul",
        "sglang.kernels.ops.elementwise.elementwise.fused_gate_sigmoid_mul_add",
        "sglang.srt.layers.moe.fused_moe_native.moe_forward_native",
    } <= set(patched)
    assert install_cpu_fallbacks() == []
    wrapper = elementwise.fused_gate_sigmoid_mul_add
    assert wrapper._sglang_dspark_cpu_fallback and wrapper.__name__ == "fused_gate_sigmoid_mul_add"
    assert fused_moe_native.moe_forward_native.__wrapped__ is not None

    gen = torch.Generator().manual_seed(5)
    h, shared, final = (torch.randn((3, 16), generator=gen) for _ in range(3))
    w = torch.randn(16, generator=gen)
    got = final.clone()
    wrapper(h, w, shared, got)  # CPU tensors: the torch path, no Triton driver needed
    torch.testing.assert_close(got, final + torch.sigmoid(h @ w)[:, None] * shared)
    out = elementwise.fused_gate_sigmoid_mul(h, w, shared)
    torch.testing.assert_close(out, torch.sigmoid(h @ w)[:, None] * shared)


def test_vocab_mask_runs_eagerly_on_cpu(restore_fallback_targets):
    """TP > 1 embedding masking: no inductor compile on CPU (19 s of a 43 s two-rank start), same values."""
    from torch._dynamo.utils import counters

    from sglang.srt.layers import vocab_parallel_embedding as vpe

    from sglang_dspark.sglang.cpu_ops import install_cpu_fallbacks

    compiled = vpe.get_masked_input_and_mask
    assert "sglang.srt.layers.vocab_parallel_embedding.get_masked_input_and_mask" in install_cpu_fallbacks()
    assert vpe.get_masked_input_and_mask.__wrapped__ is compiled
    ids = torch.tensor([0, 5, 9, 10, 17, 3])
    frames = counters["frames"]["total"]
    # Rank 1 of 2 over a 20-token vocabulary without added tokens: ids 10..19 are local.
    masked, outside = vpe.get_masked_input_and_mask(ids, 10, 20, 0, 20, 20)
    assert counters["frames"]["total"] == frames, "dynamo traced the CPU call"
    assert masked.tolist() == [0, 0, 0, 0, 7, 0]
    assert outside.tolist() == [True, True, True, False, False, True]


@pytest.mark.parametrize("ep_size", [2, 4])
def test_ep_safe_moe_forward_native_sums_to_the_full_moe(ep_size):
    """Each EP rank's partial (its experts only, others -1) adds up to the unsharded MoE."""
    from types import SimpleNamespace

    from sglang.srt.layers.moe.fused_moe_native import moe_forward_native
    from sglang.srt.layers.moe.moe_runner import MoeRunnerConfig

    from sglang_dspark.sglang.cpu_ops import ep_safe_moe_forward_native

    gen = torch.Generator().manual_seed(6)
    experts, topk, hidden, inter, tokens = 8, 2, 16, 12, 7
    w13 = 0.3 * torch.randn((experts, 2 * inter, hidden), generator=gen)
    w2 = 0.3 * torch.randn((experts, hidden, inter), generator=gen)
    x = torch.randn((tokens, hidden), generator=gen)
    logits = torch.randn((tokens, experts), generator=gen)
    weights, ids = torch.topk(torch.softmax(logits, -1), topk, dim=-1)
    cfg = MoeRunnerConfig(num_experts=experts, activation="silu")

    full = moe_forward_native(
        SimpleNamespace(num_experts=experts, w13_weight=w13, w2_weight=w2), x, (weights, ids, None), cfg
    )

    # A straightforward dense reference for the unsharded MoE itself.
    ref = torch.zeros_like(x)
    for t in range(tokens):
        for j in range(topk):
            e = int(ids[t, j])
            gate, up = (w13[e] @ x[t]).chunk(2)
            ref[t] += weights[t, j] * (w2[e] @ (torch.nn.functional.silu(gate) * up))
    torch.testing.assert_close(full, ref, atol=1e-5, rtol=1e-5)

    wrapped = ep_safe_moe_forward_native(moe_forward_native)
    local = experts // ep_size
    total = torch.zeros_like(x)
    for rank in range(ep_size):
        mapping = torch.full((experts,), -1, dtype=torch.int64)
        mapping[rank * local : (rank + 1) * local] = torch.arange(local)
        layer = SimpleNamespace(
            num_experts=experts,
            w13_weight=w13[rank * local : (rank + 1) * local],
            w2_weight=w2[rank * local : (rank + 1) * local],
        )
        local_ids = mapping[ids]
        if rank == 0:
            with pytest.raises((RuntimeError, IndexError)):
                moe_forward_native(layer, x, (weights, local_ids, None), cfg)  # SGLang's own: broken
        total += wrapped(layer, x, (weights, local_ids, None), cfg)
    torch.testing.assert_close(total, full, atol=1e-5, rtol=1e-5)

    # No -1 ids (ep_size 1): the original runs unchanged.
    assert torch.equal(
        wrapped(SimpleNamespace(num_experts=experts, w13_weight=w13, w2_weight=w2), x, (weights, ids, None), cfg),
        full,
    )
