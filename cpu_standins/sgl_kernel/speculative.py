"""Pure-torch stand-in for ``sgl_kernel.speculative`` (the part SGLang imports on CPU).

SGLang's NGRAM worker imports ``reconstruct_indices_from_tree_mask`` from here on
every device but CUDA, HIP and XPU. The CPU helpers of ``sgl_kernel`` are
re-exported under their real names too, as the real module does.
"""

from __future__ import annotations

import torch

from sgl_kernel.speculative_cpu import (  # noqa: F401
    assign_draft_cache_locs_contiguous_cpu,
    assign_extend_cache_locs_cpu,
    assign_req_to_token_pool_cpu,
    build_tree_kernel_efficient_cpu,
    fill_accept_out_cache_loc_cpu,
    fill_bonus_tokens_cpu,
    rotate_input_ids_cpu,
    verify_tree_greedy_cpu,
)


def reconstruct_indices_from_tree_mask(
    tree_mask: torch.Tensor,
    verified_seq_len: torch.Tensor,
    positions: torch.Tensor,  # mutable
    retrive_index: torch.Tensor,  # mutable
    retrive_next_token: torch.Tensor,  # mutable
    retrive_next_sibling: torch.Tensor,  # mutable
    batch_size: int,
    draft_token_num: int,
) -> None:
    """NGRAM verify metadata from a [bs, n, n] ancestor mask, in place.

    ``tree_mask[b, i, j]`` (flat, row-major; bool or uint8) marks node j an
    ancestor of node i; only j < i counts. Per node (as the Triton and CUDA
    kernels): positions = #ancestors + verified_seq_len[b]; retrive_index =
    b * n + i; next_token = the first later node whose ancestors include i;
    next_sibling = the first later node with the same parent (the largest
    ancestor), -1 for a root or when there is none.
    """
    bs, n = int(batch_size), int(draft_token_num)
    if bs == 0:
        return
    device = positions.device
    mask = tree_mask.reshape(-1)[: bs * n * n].view(bs, n, n) != 0
    idx = torch.arange(n, device=device)
    ancestors = mask & (idx[None, :] < idx[:, None])[None]  # [b, i, j]: j < i

    depth = ancestors.sum(-1)
    seq = verified_seq_len.reshape(-1)[:bs].to(torch.int64)
    positions.view(-1)[: bs * n].copy_((depth + seq[:, None]).reshape(-1).to(positions.dtype))
    retrive_index.copy_(
        torch.arange(bs * n, device=device, dtype=retrive_index.dtype).view(retrive_index.shape)
    )

    # parent[b, i] = largest ancestor of i, or -1.
    parent = torch.where(ancestors, idx, -1).amax(-1)
    # first child of t = smallest k with ancestors[b, k, t].
    first_child = torch.where(ancestors, idx[None, :, None], n).amin(1)
    next_token = torch.where(first_child < n, first_child, -1)
    # next sibling of t = smallest k > t with parent[k] == parent[t], for non-roots.
    same = (parent[:, :, None] == parent[:, None, :]) & (idx[:, None] > idx[None, :])[None]  # [b, k, t]
    first_sib = torch.where(same, idx[None, :, None], n).amin(1)
    next_sibling = torch.where((parent >= 0) & (first_sib < n), first_sib, -1)

    retrive_next_token.copy_(next_token.to(retrive_next_token.dtype).view(retrive_next_token.shape))
    retrive_next_sibling.copy_(next_sibling.to(retrive_next_sibling.dtype).view(retrive_next_sibling.shape))
