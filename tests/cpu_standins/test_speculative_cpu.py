"""The pure-torch sgl_kernel stand-ins against SGLang's own Triton kernels.

Every helper is driven through the SGLang 0.5.23 wrapper that calls it on CPU
(``*_func`` with the module's ``_is_cpu`` forced on), so the call signature is
checked too, and its result is compared with the Triton kernel SGLang runs on
GPUs for the same job, executed by the Triton interpreter (tests/conftest.py
sets TRITON_INTERPRET=1 before any kernel module is imported).
"""

from __future__ import annotations

import os
import random

import pytest
import torch

assert os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py must set TRITON_INTERPRET=1"

triton = pytest.importorskip("triton")

import sgl_kernel  # noqa: E402  (the stand-in package)
import sgl_kernel.speculative as sgl_spec  # noqa: E402

from sglang.kernels.ops.kvcache import cache_move  # noqa: E402
from sglang.kernels.ops.speculative import (  # noqa: E402
    cache_locs,
    eagle,
    multi_layer_eagle,
    reconstruct_tree,
    spec_tree,
)
from sglang.srt.mem_cache import allocation  # noqa: E402

SEEDS = range(6)


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@pytest.fixture
def cpu_path(monkeypatch):
    """Make SGLang's wrappers take their CPU branch, calling the stand-ins."""

    def force(module, **names):
        monkeypatch.setattr(module, "_is_cpu", True)
        for attr in ("_is_cuda", "_is_hip", "_is_musa", "_is_npu", "_is_xpu"):
            if hasattr(module, attr):
                monkeypatch.setattr(module, attr, False)
        for name, fn in names.items():
            monkeypatch.setattr(module, name, fn, raising=False)

    return force


def _pool(gen, rows, pool_len):
    return torch.randint(0, 10_000, (rows, pool_len), dtype=torch.int32, generator=gen)


def _ranges(gen, bs, pool_len, max_len, equal=False):
    """Random [start, end) ranges; ``equal``: all of one random length (a decode or verify step)."""
    start = torch.randint(0, pool_len - max_len, (bs,), generator=gen)
    lens = torch.randint(0, max_len + 1, (1 if equal else bs,), generator=gen).expand(bs)
    return start, start + lens


@pytest.mark.parametrize("equal", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_assign_req_to_token_pool(seed, equal, cpu_path):
    gen = torch.Generator().manual_seed(seed)
    bs, rows, pool_len = 1 + seed, 9, 96
    rpi = torch.randperm(rows, generator=gen)[:bs]
    start, end = _ranges(gen, bs, pool_len, 40, equal)
    locs = torch.randint(0, 1 << 20, (int((end - start).sum()),), dtype=torch.int64, generator=gen)
    table = _pool(gen, rows, pool_len)

    want = table.clone()
    allocation.assign_req_to_token_pool[(bs,)](rpi, want, start, end, locs, pool_len, _pow2(bs))
    got = table.clone()
    cpu_path(allocation, assign_req_to_token_pool_cpu=sgl_kernel.assign_req_to_token_pool_cpu)
    allocation.assign_req_to_token_pool_func(rpi, got, start, end, locs, bs)
    assert torch.equal(got, want)


@pytest.mark.parametrize("equal", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_assign_extend_cache_locs(seed, equal, cpu_path):
    gen = torch.Generator().manual_seed(seed)
    bs, rows, pool_len = 1 + seed, 9, 96
    rpi = torch.randperm(rows, generator=gen)[:bs]
    start, end = _ranges(gen, bs, pool_len, 40, equal)
    table = _pool(gen, rows, pool_len)
    total = int((end - start).sum())

    want = torch.full((total,), -7, dtype=torch.int64)
    cache_locs.assign_extend_cache_locs[(bs,)](rpi, table, start, end, want, pool_len, _pow2(bs))
    cpu_path(cache_locs, assign_extend_cache_locs_cpu=sgl_kernel.assign_extend_cache_locs_cpu)
    # The wrapper allocates bs * draft_token_num slots and packs the ranges at the front.
    got = cache_locs.assign_extend_cache_locs_func(rpi, table, start, end, bs, 40, "cpu")
    assert got.dtype == torch.int64 and got.numel() == bs * 40
    assert torch.equal(got[:total], want)


@pytest.mark.parametrize("seed", SEEDS)
def test_fill_front_out_cache_loc(seed, cpu_path):
    # SGLang's second use of assign_extend_cache_locs_cpu: an int32 window table.
    gen = torch.Generator().manual_seed(seed)
    bs, width = 1 + seed, 8
    window = torch.randint(0, 1 << 20, (bs * width,), dtype=torch.int64, generator=gen)
    num_front = torch.randint(0, width + 1, (bs,), generator=gen)
    total = int(num_front.sum())

    want = torch.full((bs * width,), -7, dtype=torch.int64)
    rows = torch.arange(bs)
    cache_locs.assign_extend_cache_locs[(bs,)](
        rows, window.view(bs, width), torch.zeros_like(num_front), num_front, want, width, _pow2(bs)
    )
    got = torch.full((bs * width,), -7, dtype=torch.int64)
    cpu_path(cache_locs, assign_extend_cache_locs_cpu=sgl_kernel.assign_extend_cache_locs_cpu)
    cache_locs.fill_front_out_cache_loc_func(num_front, window, got)
    assert torch.equal(got[:total], want[:total])
    assert torch.equal(got, want)


@pytest.mark.parametrize("seed", SEEDS)
def test_assign_draft_cache_locs_contiguous(seed, cpu_path):
    gen = torch.Generator().manual_seed(seed)
    bs, rows, pool_len = 1 + seed, 9, 128
    topk, num_cols = 1 + seed % 3, 2 + seed % 4
    rpi = torch.randperm(rows, generator=gen)[:bs]
    seq_lens = torch.randint(0, pool_len - topk * num_cols, (bs,), generator=gen)
    table = _pool(gen, rows, pool_len)

    want = torch.full((bs * topk * num_cols,), -7, dtype=torch.int64)
    cache_locs.assign_draft_cache_locs_contiguous[(bs,)](rpi, table, seq_lens, want, pool_len, topk, num_cols)
    got = torch.full_like(want, -7)
    cpu_path(
        cache_locs,
        assign_draft_cache_locs_contiguous_cpu=sgl_kernel.assign_draft_cache_locs_contiguous_cpu,
    )
    cache_locs.assign_draft_cache_locs_contiguous_func(rpi, table, seq_lens, got, topk, num_cols)
    assert torch.equal(got, want)


@pytest.mark.parametrize("seed", SEEDS)
def test_fill_accept_out_cache_loc(seed, cpu_path):
    gen = torch.Generator().manual_seed(seed)
    bs, width = 1 + seed, 5
    accept_index = torch.randint(0, bs * width, (bs, width), dtype=torch.int32, generator=gen)
    accept_index[torch.rand((bs, width), generator=gen) < 0.4] = -1
    out_cache_loc = torch.randint(0, 1 << 20, (bs * width,), dtype=torch.int64, generator=gen)
    size = accept_index.numel()

    want = torch.zeros(size, dtype=torch.int64)
    eagle.fill_accept_out_cache_loc[(size,)](accept_index, out_cache_loc, want, _pow2(size))
    got = torch.zeros(size, dtype=torch.int64)
    cpu_path(eagle, fill_accept_out_cache_loc_cpu=sgl_kernel.fill_accept_out_cache_loc_cpu)
    eagle.fill_accept_out_cache_loc_func(accept_index, out_cache_loc, got, size)
    assert torch.equal(got, want)
    # The real CPU kernel's optional 4th argument (size) gives the same result.
    again = torch.zeros(size, dtype=torch.int64)
    sgl_kernel.fill_accept_out_cache_loc_cpu(accept_index, out_cache_loc, again, size)
    assert torch.equal(again, want)


@pytest.mark.parametrize("seed", SEEDS)
def test_fill_bonus_tokens(seed, cpu_path):
    gen = torch.Generator().manual_seed(seed)
    bs, stride = 1 + seed, 6
    accept_tokens = torch.randint(0, 50_000, (bs, stride), dtype=torch.int32, generator=gen)
    accept_lens = torch.randint(1, stride + 1, (bs,), dtype=torch.int32, generator=gen)

    want = torch.full((bs,), -7, dtype=torch.int32)
    eagle.fill_bonus_tokens[(bs,)](accept_tokens, accept_lens, want, stride)
    got = torch.full((bs,), -7, dtype=torch.int32)
    cpu_path(eagle, fill_bonus_tokens_cpu=sgl_kernel.fill_bonus_tokens_cpu)
    eagle.fill_bonus_tokens_func(accept_tokens, accept_lens, got, stride, bs)
    assert torch.equal(got, want)


def _kv_buffers(gen, rows):
    # Two layers of K and V with different row widths, like a pool with v_head_dim != head_dim.
    shapes = [(rows, 2, 8), (rows, 2, 8), (rows, 3, 4), (rows, 1, 12)]
    return [torch.randn(s, generator=gen) for s in shapes]


@pytest.mark.parametrize("seed", SEEDS)
def test_copy_all_layer_kv_cache(seed, cpu_path):
    gen = torch.Generator().manual_seed(seed)
    rows, n = 40, 3 + 2 * seed
    perm = torch.randperm(rows, generator=gen)
    src = perm[:n].clone()
    # Targets are distinct and overlap the sources (chains such as 1 -> 2, 2 -> 3).
    tgt = perm[n // 2 : n // 2 + n].clone()

    base = _kv_buffers(gen, rows)
    want = [b.clone() for b in base]
    got = [b.clone() for b in base]

    def ptrs(bufs):
        return (
            torch.tensor([b.data_ptr() for b in bufs], dtype=torch.uint64),
            torch.tensor([b.stride(0) * b.element_size() for b in bufs]),
        )

    data_ptrs, strides = ptrs(want)
    tile = 32
    cache_move.copy_all_layer_kv_cache_tiled[(len(want), -(-int(strides.max()) // tile))](
        data_ptrs, strides, tgt, src, n, _pow2(n), BYTES_PER_TILE=tile
    )
    # Sanity: the kernel really moved rows (a no-op kernel would pass vacuously).
    assert torch.equal(want[0][tgt], base[0][src])

    data_ptrs, strides = ptrs(got)
    cpu_path(cache_move, copy_all_layer_kv_cache_cpu=sgl_kernel.copy_all_layer_kv_cache_cpu)
    cfg = {"bytes_per_tile": tile, "byte_tiles": 1, "num_warps": 4, "num_locs_upper": 256}
    # SGLang passes longer loc buffers and the live count.
    pad = torch.zeros(4, dtype=torch.int64)
    cache_move.copy_all_layer_kv_cache_func(
        data_ptrs, strides, torch.cat([tgt, pad]), torch.cat([src, pad]), n, _pow2(n), cfg
    )
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("with_select", [False, True])
def test_rotate_input_ids(seed, with_select, cpu_path):
    gen = torch.Generator().manual_seed(seed)
    bs = 1 + seed
    lens = torch.randint(0, 12, (bs,), generator=gen)
    starts = torch.cumsum(lens, 0) - lens
    total = int(lens.sum()) + 3
    ids = torch.randint(0, 50_000, (total,), generator=gen)
    topk_index = torch.randint(0, 50_000, (bs,), generator=gen)
    select = None
    if with_select:
        # One slot inside each non-empty segment (the kernel only writes those).
        select = starts + (torch.rand(bs, generator=gen) * lens.clamp(min=1)).long()

    want = ids.clone()
    multi_layer_eagle.rotate_input_ids_kernel[(bs,)](
        want, starts, lens, topk_index, select, BLOCK_SIZE=4096 if with_select else 8
    )
    got = ids.clone()
    cpu_path(multi_layer_eagle, rotate_input_ids_cpu=sgl_kernel.rotate_input_ids_cpu)
    out = multi_layer_eagle.rotate_input_ids(got, starts, lens, topk_index, select)
    assert out is got
    assert torch.equal(got, want)


# --------------------------------------------------------------------------- trees


def _eagle_draft(gen, bs, topk, depth, n):
    """parent_list and top_scores_index as EAGLE's draft loop builds them.

    Mirrors select_top_k_tokens (first/later) and organize_draft_results: scores
    are products of probabilities, so a node never outranks its parent and the
    n - 1 best nodes form a tree.
    """
    scores = torch.rand((bs, topk), generator=gen, dtype=torch.float64)
    score_list = [scores.unsqueeze(1)]
    parents_list = [torch.arange(-1, topk).expand(bs, -1)]
    for i in range(1, depth):
        topk_p = torch.rand((bs * topk, topk), generator=gen, dtype=torch.float64)
        expand = scores.unsqueeze(2) * topk_p.view(-1, topk, topk)
        scores, cs_index = torch.topk(expand.flatten(1), topk, dim=-1)
        score_list.append(expand)
        parents_list.append(cs_index + (topk * topk * (i - 1) + topk))
    if len(parents_list) > 1:
        parent_list = torch.cat(parents_list[:-1], dim=1).contiguous()
    else:
        parent_list = torch.empty(bs, 0, dtype=torch.long)
    flat = torch.cat(score_list, dim=1).flatten(1)
    top = torch.sort(torch.topk(flat, n - 1, dim=-1).indices).values
    return parent_list, top.contiguous()


def _tree_case(seed):
    rnd = random.Random(seed)
    topk = rnd.choice([1, 2, 3, 4])
    depth = rnd.choice([1, 2, 3, 5])
    max_nodes = topk + (depth - 1) * topk * topk
    n = rnd.randint(2, min(max_nodes, 12) + 1)
    bs = rnd.randint(1, 4)
    return bs, topk, depth, n


def _build_tree_buffers(bs, n, seq_lens, mode):
    if mode == spec_tree.TreeMaskMode.FULL_MASK:
        mask = torch.full((int(seq_lens.sum()) * n + n * n * bs,), True)
    else:
        mask = torch.full((n * n * bs,), True)
    retrieve = torch.full((3, bs, n), -1, dtype=torch.long)
    positions = torch.full((bs * n,), -9, dtype=torch.long)
    return mask, positions, retrieve


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("mode", ["FULL_MASK", "QLEN_ONLY"])
def test_build_tree_kernel_efficient(seed, mode, cpu_path):
    mode = spec_tree.TreeMaskMode[mode]
    gen = torch.Generator().manual_seed(seed)
    bs, topk, depth, n = _tree_case(seed)
    parent_list, selected = _eagle_draft(gen, bs, topk, depth, n)
    seq_lens = torch.randint(1, 9, (bs,), generator=gen)

    w_mask, w_pos, w_ret = _build_tree_buffers(bs, n, seq_lens, mode)
    spec_tree.sgl_build_tree_kernel_triton(
        parent_list, selected, seq_lens, w_mask, w_pos, w_ret[0], w_ret[1], w_ret[2], topk, depth, n, mode
    )
    g_mask, g_pos, g_ret = _build_tree_buffers(bs, n, seq_lens, mode)
    cpu_path(spec_tree, sgl_build_tree_kernel_efficient_cpu=sgl_kernel.build_tree_kernel_efficient_cpu)
    spec_tree.build_tree_kernel_efficient_func(
        parent_list, selected, seq_lens, g_mask, g_pos, g_ret[0], g_ret[1], g_ret[2], topk, depth, n, mode
    )
    assert torch.equal(g_pos, w_pos)
    assert torch.equal(g_ret, w_ret)
    assert torch.equal(g_mask, w_mask)


@pytest.mark.parametrize("seed", range(6))
def test_build_tree_bitpacking_matches_qlen_only(seed):
    # The Triton reference has no QLEN_ONLY_BITPACKING; the stand-in follows the
    # CUDA kernel: bit j of token i's row = QLEN_ONLY mask[i, j], little endian.
    gen = torch.Generator().manual_seed(seed)
    bs, topk, depth, n = _tree_case(seed + 100)
    parent_list, selected = _eagle_draft(gen, bs, topk, depth, n)
    seq_lens = torch.randint(1, 9, (bs,), generator=gen)

    q_mask, q_pos, q_ret = _build_tree_buffers(bs, n, seq_lens, spec_tree.TreeMaskMode.QLEN_ONLY)
    sgl_kernel.build_tree_kernel_efficient_cpu(
        parent_list, selected, seq_lens, q_mask, q_pos, q_ret[0], q_ret[1], q_ret[2], topk, depth, n, 1
    )
    dtype = [torch.uint8, torch.uint16, torch.uint32][(n > 8) + (n > 16)]
    packed = torch.zeros((n * bs,), dtype=dtype)
    p_pos = torch.empty((bs * n,), dtype=torch.long)
    p_ret = torch.full((3, bs, n), -1, dtype=torch.long)
    sgl_kernel.build_tree_kernel_efficient_cpu(
        parent_list, selected, seq_lens, packed, p_pos, p_ret[0], p_ret[1], p_ret[2], topk, depth, n, 2
    )
    bits = q_mask.view(bs * n, n).long()
    want = (bits << torch.arange(n)).sum(-1)
    assert torch.equal(packed.long(), want)
    assert torch.equal(p_pos, q_pos) and torch.equal(p_ret, q_ret)


@pytest.mark.parametrize("seed", range(8))
def test_verify_tree_greedy(seed, cpu_path):
    gen = torch.Generator().manual_seed(seed)
    bs, topk, depth, n = _tree_case(seed)
    parent_list, selected = _eagle_draft(gen, bs, topk, depth, n)
    seq_lens = torch.randint(1, 9, (bs,), generator=gen)
    mask, positions, retrieve = _build_tree_buffers(bs, n, seq_lens, spec_tree.TreeMaskMode.QLEN_ONLY)
    spec_tree.sgl_build_tree_kernel_triton(
        parent_list, selected, seq_lens, mask, positions, *retrieve, topk, depth, n,
        spec_tree.TreeMaskMode.QLEN_ONLY,
    )
    # A tiny vocabulary so that many drafts match and deep paths get accepted.
    candidates = torch.randint(0, 2, (bs, n), generator=gen)
    target_predict = torch.randint(0, 2, (bs, n), generator=gen)
    spec_steps = depth + 1

    def buffers():
        return (
            torch.full((bs * n,), -5, dtype=torch.int32),
            torch.full((bs, spec_steps), -1, dtype=torch.int32),
            torch.full((bs,), -5, dtype=torch.int32),
        )

    want = buffers()
    spec_tree.verify_tree_greedy_triton(*want, candidates, *retrieve, target_predict)
    got = buffers()
    cpu_path(spec_tree, sgl_verify_tree_greedy_cpu=sgl_kernel.verify_tree_greedy_cpu)
    out = spec_tree.verify_tree_greedy_func(*got, candidates, *retrieve, target_predict, topk=topk)
    assert out[0] is got[0]
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def _ngram_mask(gen, bs, n):
    """Ancestor-or-self masks of random trees rooted at node 0 (parents precede children)."""
    mask = torch.zeros((bs, n, n), dtype=torch.bool)
    for b in range(bs):
        parent = [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)]
        for i in range(n):
            j = i
            while j >= 0:
                mask[b, i, j] = True
                j = parent[j]
    return mask.reshape(-1)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("kind", ["tree", "random"])
def test_reconstruct_indices_from_tree_mask(seed, kind):
    gen = torch.Generator().manual_seed(seed)
    bs, n = 1 + seed % 4, 2 + seed
    if kind == "tree":
        mask = _ngram_mask(gen, bs, n)
    else:  # any bit pattern: the stand-in must agree with the kernel cell for cell
        mask = torch.rand((bs * n * n,), generator=gen) < 0.5
    seq_lens = torch.randint(1, 50, (bs,), generator=gen)

    def buffers():
        return torch.full((bs * n,), -9, dtype=torch.long), torch.full((3, bs, n), -9, dtype=torch.long)

    w_pos, w_ret = buffers()
    reconstruct_tree.reconstruct_indices_from_tree_mask_triton(mask, seq_lens, w_pos, *w_ret, bs, n)
    g_pos, g_ret = buffers()
    # SGLang's own entry point on CPU calls sgl_kernel.speculative's function.
    assert reconstruct_tree.reconstruct_indices_from_tree_mask is sgl_spec.reconstruct_indices_from_tree_mask
    reconstruct_tree.reconstruct_indices_from_tree_mask_func(mask, seq_lens, g_pos, *g_ret, bs, n)
    assert torch.equal(g_pos, w_pos)
    assert torch.equal(g_ret, w_ret)
    # uint8 masks (the NGRAM worker's buffers may be either) give the same answer.
    u_pos, u_ret = buffers()
    sgl_spec.reconstruct_indices_from_tree_mask(mask.to(torch.uint8), seq_lens, u_pos, *u_ret, bs, n)
    assert torch.equal(u_pos, w_pos) and torch.equal(u_ret, w_ret)


def test_empty_batches_are_noops():
    empty = torch.empty(0, dtype=torch.int64)
    table = torch.zeros((2, 8), dtype=torch.int32)
    sgl_kernel.assign_req_to_token_pool_cpu(empty, table, empty, empty, empty, 8)
    sgl_kernel.assign_extend_cache_locs_cpu(empty, table, empty, empty, empty.clone(), 8)
    sgl_kernel.assign_draft_cache_locs_contiguous_cpu(empty, table, empty, empty.clone(), 8, 2, 2)
    sgl_kernel.fill_bonus_tokens_cpu(empty, empty, empty.clone(), 4)
    sgl_kernel.copy_all_layer_kv_cache_cpu(torch.tensor([0], dtype=torch.uint64), torch.tensor([4]), empty, empty)
    assert torch.equal(table, torch.zeros((2, 8), dtype=torch.int32))
