"""Pure-torch versions of SGLang's CPU speculative and KV-cache helpers.

Each function has the call signature SGLang 0.5.23 uses on CPU (that of the
real CPU sgl-kernel op of the same name) and the semantics of the Triton kernel
SGLang runs on GPUs for the same job, checked against it under the Triton
interpreter in tests/cpu_standins. ``build_tree_kernel_efficient_cpu`` and
``verify_tree_greedy_cpu`` follow ``kernels/ops/speculative/spec_tree.py``'s
Triton kernels; ``rotate_input_ids_cpu`` serves multi-layer EAGLE. Buffers are
written in place, as by the kernels; the index tensors are read as given.

Layout conventions shared with the kernels: ``req_to_token`` is a contiguous
[rows, pool_len] table addressed as ``row * pool_len + column``; packed
outputs of several requests follow one another in batch order.
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch

__all__ = [
    "assign_draft_cache_locs_contiguous_cpu",
    "assign_extend_cache_locs_cpu",
    "assign_req_to_token_pool_cpu",
    "build_tree_kernel_efficient_cpu",
    "copy_all_layer_kv_cache_cpu",
    "fill_accept_out_cache_loc_cpu",
    "fill_bonus_tokens_cpu",
    "rotate_input_ids_cpu",
    "verify_tree_greedy_cpu",
]

# TreeMaskMode values (sglang.kernels.ops.speculative.spec_tree.TreeMaskMode).
_FULL_MASK, _QLEN_ONLY, _QLEN_ONLY_BITPACKING = 0, 1, 2


def _flat(table: torch.Tensor) -> torch.Tensor:
    """A flat view of a contiguous table (never a copy: callers write through it)."""
    return table.view(-1)


def _packed_segments(req_pool_indices, start_offset, end_offset, pool_len):
    """Flat table positions and packed-output positions of every request's [start, end).

    Request i owns output slots [sum_{j<i}(end_j - start_j), ... + (end_i - start_i)),
    exactly as the kernels compute the offset (a sum over earlier requests).
    """
    device = start_offset.device
    start = start_offset.to(torch.int64)
    lens = end_offset.to(torch.int64) - start
    lens_list = lens.tolist()
    if lens_list and min(lens_list) == max(lens_list):
        # Every request the same length (a decode step's 1, a verify block's width): plain
        # broadcasting. The general path's repeat_interleave took ~0.7 ms per call in a
        # serving process, about 1 % of a SmolLM2 decode step on 2 cores.
        width = max(lens_list[0], 0)
        rows = req_pool_indices.to(torch.int64)
        cols = torch.arange(width, device=device)
        table_pos = ((rows * pool_len + start)[:, None] + cols).reshape(-1)
        return table_pos, torch.arange(table_pos.numel(), device=device)
    out_base = torch.cumsum(lens, 0) - lens
    counts = lens.clamp(min=0)
    req = torch.repeat_interleave(torch.arange(lens.numel(), device=device), counts)
    seg_base = torch.cumsum(counts, 0) - counts
    within = torch.arange(req.numel(), device=device) - seg_base[req]
    rows = req_pool_indices.to(torch.int64)[req]
    table_pos = rows * pool_len + start[req] + within
    out_pos = out_base[req] + within
    return table_pos, out_pos


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,  # mutable
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """req_to_token[req_i, start_i:end_i] = the next (end_i - start_i) entries of out_cache_loc."""
    if req_pool_indices.numel() == 0:
        return
    table_pos, out_pos = _packed_segments(req_pool_indices, start_offset, end_offset, pool_len)
    _flat(req_to_token)[table_pos] = out_cache_loc.reshape(-1)[out_pos].to(req_to_token.dtype)


def assign_extend_cache_locs_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,  # mutable
    pool_len: int,
) -> None:
    """out_cache_loc (packed, request after request) = req_to_token[req_i, start_i:end_i]."""
    if req_pool_indices.numel() == 0:
        return
    table_pos, out_pos = _packed_segments(req_pool_indices, start_offset, end_offset, pool_len)
    _flat(out_cache_loc)[out_pos] = _flat(req_to_token)[table_pos].to(out_cache_loc.dtype)


def assign_draft_cache_locs_contiguous_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    seq_lens: torch.Tensor,
    out_cache_loc: torch.Tensor,  # mutable
    pool_len: int,
    topk: int,
    num_cols: int,
) -> None:
    """out_cache_loc[i*w:(i+1)*w] = req_to_token[req_i, seq_len_i : seq_len_i + w], w = topk*num_cols."""
    bs = seq_lens.numel()
    width = int(topk) * int(num_cols)
    if bs == 0 or width == 0:
        return
    cols = torch.arange(width, device=seq_lens.device)
    table_pos = (
        req_pool_indices.to(torch.int64)[:, None] * pool_len + seq_lens.to(torch.int64)[:, None] + cols
    )
    _flat(out_cache_loc)[: bs * width] = _flat(req_to_token)[table_pos.reshape(-1)].to(out_cache_loc.dtype)


def fill_accept_out_cache_loc_cpu(
    accept_index: torch.Tensor,
    out_cache_loc: torch.Tensor,
    accept_out_cache_loc: torch.Tensor,  # mutable
    size: Optional[int] = None,
) -> None:
    """Compact out_cache_loc[accept_index] over the entries of accept_index that are not -1.

    Only the first ``size`` entries of the flattened accept_index are read when
    ``size`` is given (some sgl-kernel releases take it; SGLang 0.5.23 passes three
    arguments, as the current CPU op schema has).
    """
    flat = accept_index.reshape(-1)
    if size is not None:
        flat = flat[: int(size)]
    kept = flat[flat > -1].long()
    _flat(accept_out_cache_loc)[: kept.numel()] = out_cache_loc.reshape(-1)[kept].to(
        accept_out_cache_loc.dtype
    )


def fill_bonus_tokens_cpu(
    accept_tokens: torch.Tensor,
    accept_lens: torch.Tensor,
    bonus_tokens: torch.Tensor,  # mutable
    accept_stride: int,
) -> None:
    """bonus_tokens[i] = accept_tokens.flat[i * accept_stride + accept_lens[i] - 1]."""
    bs = accept_lens.numel()
    if bs == 0:
        return
    rows = torch.arange(bs, device=accept_lens.device)
    idx = rows * int(accept_stride) + accept_lens.reshape(-1).long() - 1
    _flat(bonus_tokens)[:bs] = accept_tokens.reshape(-1)[idx].to(bonus_tokens.dtype)


def _byte_rows(base: int, row_bytes: int, rows: int) -> torch.Tensor:
    """A [rows, row_bytes] uint8 tensor over raw memory at ``base`` (no copy)."""
    buf = (ctypes.c_uint8 * (rows * row_bytes)).from_address(base)
    return torch.frombuffer(buf, dtype=torch.uint8).view(rows, row_bytes)


def copy_all_layer_kv_cache_cpu(
    data_ptrs: torch.Tensor,
    strides: torch.Tensor,
    tgt_loc: torch.Tensor,
    src_loc: torch.Tensor,
) -> None:
    """For every KV buffer (base address, row stride in bytes) copy row src_loc[j] to row tgt_loc[j].

    Like the Triton kernel, all source rows of a buffer are read before any target
    row is written, so chains such as (1->2, 2->3) move the old rows.
    """
    if tgt_loc.numel() == 0:
        return
    src = src_loc.reshape(-1).to(torch.int64)
    tgt = tgt_loc.reshape(-1).to(torch.int64)
    rows = int(torch.maximum(src.max(), tgt.max())) + 1
    for base, row_bytes in zip(data_ptrs.tolist(), strides.tolist()):
        row_bytes = int(row_bytes)
        if row_bytes <= 0:
            continue
        view = _byte_rows(int(base), row_bytes, rows)
        view[tgt] = view[src]  # advanced indexing gathers a copy first


def rotate_input_ids_cpu(
    input_ids: torch.Tensor,  # mutable
    extend_start_loc: torch.Tensor,
    extend_seq_lens: torch.Tensor,
    topk_index: torch.Tensor,
    select_index: Optional[torch.Tensor] = None,
) -> None:
    """Shift each request's segment of input_ids left by one and put topk_index[i] last.

    With ``select_index`` the new token goes to input_ids[select_index[i]] instead
    of the end of the segment.
    """
    bs = extend_seq_lens.numel()
    if bs == 0:
        return
    flat = _flat(input_ids)
    device = flat.device
    starts = extend_start_loc.reshape(-1).to(torch.int64)
    lens = extend_seq_lens.reshape(-1).to(torch.int64)
    shift = (lens - 1).clamp(min=0)
    req = torch.repeat_interleave(torch.arange(bs, device=device), shift)
    within = torch.arange(req.numel(), device=device) - (torch.cumsum(shift, 0) - shift)[req]
    dst = starts[req] + within
    flat[dst] = flat[dst + 1]
    has = lens > 0
    if select_index is not None:
        last = select_index.reshape(-1).to(torch.int64)
    else:
        last = starts + lens - 1
    flat[last[has]] = topk_index.reshape(-1)[:bs][has].to(flat.dtype)


def build_tree_kernel_efficient_cpu(
    parent_list: torch.Tensor,
    selected_index: torch.Tensor,
    verified_seq_len: torch.Tensor,
    tree_mask: torch.Tensor,  # mutable
    positions: torch.Tensor,  # mutable
    retrive_index: torch.Tensor,  # mutable
    retrive_next_token: torch.Tensor,  # mutable
    retrive_next_sibling: torch.Tensor,  # mutable
    topk: int,
    depth: int,
    draft_token_num: int,
    tree_mask_mode: int,
) -> None:
    """Build the EAGLE verify tree: mask, positions and retrieval links, in place.

    Same contract as ``sgl_build_tree_kernel_efficient_triton`` (and the CUDA
    kernel): ``retrive_next_token`` / ``retrive_next_sibling`` must arrive filled
    with -1; only tree cells of ``tree_mask`` are written (FULL_MASK leaves the
    prefix columns as the caller filled them). QLEN_ONLY_BITPACKING follows the
    CUDA kernel: one little-endian bit row of 1, 2 or 4 bytes per draft token,
    which the caller zero-fills.
    """
    topk, depth, n = int(topk), int(depth), int(draft_token_num)
    mode = int(tree_mask_mode)
    if mode not in (_FULL_MASK, _QLEN_ONLY, _QLEN_ONLY_BITPACKING):
        raise ValueError(f"invalid tree_mask_mode {tree_mask_mode}")
    bs = verified_seq_len.numel()
    if bs == 0:
        return

    seq_lens = verified_seq_len.reshape(-1).tolist()
    sel = selected_index.reshape(bs, -1).tolist() if n > 1 else [[] for _ in range(bs)]
    parents = parent_list.reshape(bs, -1).tolist() if parent_list.numel() else [[] for _ in range(bs)]
    next_token = retrive_next_token.reshape(bs, n).tolist()
    next_sibling = retrive_next_sibling.reshape(bs, n).tolist()
    pos_out = positions.reshape(-1)[: bs * n].tolist()

    if mode == _QLEN_ONLY_BITPACKING:
        item_bytes = 4 if n > 16 else (2 if n > 8 else 1)
        mask_bytes = tree_mask.view(torch.uint8) if tree_mask.element_size() > 1 else tree_mask
        mask_bytes = _flat(mask_bytes)
        packed = mask_bytes[: bs * n * item_bytes].to(torch.uint8).tolist()
    else:
        mask_idx, mask_val = [], []

    def find(row_sel, token_idx):
        # Position of token_idx in row_sel (first n - 1 entries), or None.
        for pp in range(n - 1):
            if row_sel[pp] == token_idx:
                return pp
        return None

    seq_prefix = 0
    for b in range(bs):
        seq_len = int(seq_lens[b])
        row_sel, row_par = sel[b], parents[b]
        nt, ns = next_token[b], next_sibling[b]

        # Retrieval links (one pass from the last draft token down).
        for i in range(n - 1, 0, -1):
            parent_tb_idx = row_sel[i - 1] // topk
            if parent_tb_idx == 0:
                parent_position = 0
            else:
                pp = find(row_sel, row_par[parent_tb_idx])
                if pp is None:
                    continue  # invalid tree: the kernels skip the token
                parent_position = pp + 1
            if nt[parent_position] != -1:
                ns[i] = nt[parent_position]
            nt[parent_position] = i

        # Mask rows and positions.
        seq_tree_idx = n * n * b + seq_prefix * n
        pos_out[b * n] = seq_len
        for tid in range(n):
            if mode == _FULL_MASK:
                row = seq_tree_idx + (seq_len + n) * tid + seq_len + 1
            else:
                row = n * n * b + n * tid + 1
            # This token's n mask cells: the root, then the n - 1 draft tokens.
            cells = [True] + [False] * (n - 1)
            if tid > 0:
                cur, position = tid - 1, 0
                for _ in range(depth):
                    position += 1
                    cells[cur + 1] = True
                    parent_tb_idx = row_sel[cur] // topk
                    if parent_tb_idx == 0:
                        break
                    pp = find(row_sel, row_par[parent_tb_idx])
                    if pp is None:
                        break
                    cur = pp
                pos_out[b * n + tid] = position + seq_len
            if mode == _QLEN_ONLY_BITPACKING:
                base = (b * n + tid) * item_bytes
                packed[base] = 0  # the CUDA kernel stores 1 into this byte, then ORs bits in
                for k, on in enumerate(cells):
                    if on:
                        packed[base + k // 8] |= 1 << (k % 8)
            else:
                mask_idx.extend(range(row - 1, row - 1 + n))
                mask_val.extend(cells)
        seq_prefix += seq_len

    dev = positions.device
    _flat(positions)[: bs * n] = torch.tensor(pos_out, dtype=positions.dtype, device=dev)
    retrive_index.copy_(
        torch.arange(bs * n, dtype=retrive_index.dtype, device=dev).view(retrive_index.shape)
    )
    retrive_next_token.copy_(
        torch.tensor(next_token, dtype=retrive_next_token.dtype, device=dev).view(retrive_next_token.shape)
    )
    retrive_next_sibling.copy_(
        torch.tensor(next_sibling, dtype=retrive_next_sibling.dtype, device=dev).view(
            retrive_next_sibling.shape
        )
    )
    if mode == _QLEN_ONLY_BITPACKING:
        mask_bytes[: bs * n * item_bytes] = torch.tensor(packed, dtype=torch.uint8, device=dev).to(
            mask_bytes.dtype
        )
    else:
        flat_mask = _flat(tree_mask)
        flat_mask[torch.tensor(mask_idx, dtype=torch.int64, device=dev)] = torch.tensor(
            mask_val, dtype=torch.bool, device=dev
        ).to(flat_mask.dtype)


def verify_tree_greedy_cpu(
    predicts: torch.Tensor,  # mutable
    accept_index: torch.Tensor,  # mutable
    accept_token_num: torch.Tensor,  # mutable
    candidates: torch.Tensor,
    retrive_index: torch.Tensor,
    retrive_next_token: torch.Tensor,
    retrive_next_sibling: torch.Tensor,
    target_predict: torch.Tensor,
) -> None:
    """Greedy tree verification, as ``verify_tree_greedy_kernel_triton``.

    Walk each request's tree from the root; at every level accept the first
    child (in sibling order) whose draft token equals the target's prediction
    at the last accepted node. Writes accept_index[b, :1 + accepted] (the rest
    is left as the caller filled it), accept_token_num[b] = accepted, and the
    target prediction into predicts at every accepted node.
    """
    bs, n = candidates.shape[0], candidates.shape[1]
    spec = accept_index.shape[1]
    if bs == 0:
        return
    cand = candidates.reshape(bs, n).tolist()
    ridx = retrive_index.reshape(bs, n).tolist()
    rnt = retrive_next_token.reshape(bs, n).tolist()
    rns = retrive_next_sibling.reshape(bs, n).tolist()
    target = target_predict.reshape(-1).tolist()

    pred_pos, pred_val = [], []
    acc = accept_index.tolist()
    num = []
    for b in range(bs):
        last = ridx[b][0]
        acc[b][0] = last
        accepted = 0
        cur = 0
        for _ in range(1, spec):
            cur = rnt[b][cur]
            target_token = target[last]
            while cur != -1:
                if cand[b][cur] == target_token:
                    pred_pos.append(last)
                    pred_val.append(target_token)
                    accepted += 1
                    acc[b][accepted] = ridx[b][cur]
                    last = ridx[b][cur]
                    break
                cur = rns[b][cur]
            if cur == -1:
                break
        num.append(accepted)
        pred_pos.append(last)
        pred_val.append(target[last])

    dev = predicts.device
    accept_index.copy_(torch.tensor(acc, dtype=accept_index.dtype, device=dev))
    _flat(accept_token_num)[:bs] = torch.tensor(num, dtype=accept_token_num.dtype, device=dev)
    _flat(predicts)[torch.tensor(pred_pos, dtype=torch.int64, device=dev)] = torch.tensor(
        pred_val, dtype=predicts.dtype, device=dev
    )
