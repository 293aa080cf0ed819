"""TARGET_VERIFY for SGLang's ``torch_native`` attention backend (the CPU path).

``torch_native`` implements causal extend and decode only. A DSPARK verify
batch is a linear chain per request (the anchor and its drafts), so verifying
it is exactly a causal extend on top of each request's committed prefix: of
``draft_token_num`` tokens per request, or of ``ragged_verify_layout.verify_lens[b]``
tokens when the batch is ragged (see ``verify_batch.py``). This hook supplies
the extend lengths that a TARGET_VERIFY ForwardBatch does not carry, runs the
extend, and restores the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TARGET = "sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend.forward_extend"
_DECODE_SEQ_LENS = "_dspark_decode_seq_lens"  # (prefix, prefix + 1) of a plain step, set by its first layer


def forward_extend_with_verify(orig, self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
    """AROUND hook: run TARGET_VERIFY batches as a causal extend over the chain.

    ``torch_native``'s extend attends with a query padded to the whole
    sequence, quadratic in the prefix; verification computes only the chain's
    rows instead (:func:`chain_attention`), and a batch verifying one token
    per request (no drafts: the speculation gate chose plain decoding, or the
    drafter failed) runs SGLang's own decode path. Cross attention and
    sliding-window layers keep the extend path.
    """
    if not forward_batch.forward_mode.is_target_verify():
        return orig(self, q, k, v, layer, forward_batch, save_kv_cache=save_kv_cache, **kwargs)
    prefix = forward_batch.seq_lens
    plain = q.shape[0] == prefix.shape[0]  # one query row per request: every count is 1
    if plain and not layer.is_cross_attention and _sliding_window(layer) is None:
        # Every layer of a plain step lands here: the decode lengths are computed once per forward.
        cached = getattr(forward_batch, _DECODE_SEQ_LENS, None)
        if cached is None or cached[0] is not prefix:
            cached = (prefix, prefix + 1)
            setattr(forward_batch, _DECODE_SEQ_LENS, cached)
        forward_batch.seq_lens = cached[1]
        try:
            return self.forward_decode(q, k, v, layer, forward_batch, save_kv_cache=save_kv_cache)
        finally:
            forward_batch.seq_lens = prefix
    spec_info = forward_batch.spec_info
    layout = getattr(spec_info, "ragged_verify_layout", None)
    if layout is not None:
        counts = layout.verify_lens.to(device=prefix.device, dtype=prefix.dtype)
    else:
        counts = torch.full_like(prefix, int(spec_info.draft_token_num))
    if layer.is_cross_attention or _sliding_window(layer) is not None:
        return _as_extend(orig, self, q, k, v, layer, forward_batch, prefix, counts, save_kv_cache, **kwargs)
    from sglang.srt.mem_cache.memory_pool import KVWriteLoc

    if save_kv_cache and k is not None and v is not None:
        self.token_to_kv_pool.set_kv_buffer(layer, KVWriteLoc(forward_batch.out_cache_loc, self.swa_out_cache_loc), k, v)
    out = chain_attention(
        q.reshape(-1, layer.tp_q_head_num, layer.qk_head_dim),
        self.token_to_kv_pool.get_key_buffer(layer.layer_id),
        self.token_to_kv_pool.get_value_buffer(layer.layer_id),
        self.req_to_token_pool.req_to_token,
        forward_batch.req_pool_indices,
        prefix,
        counts,
        scaling=layer.scaling,
    )
    return out.reshape(q.shape[0], layer.tp_q_head_num * layer.v_head_dim)


def _sliding_window(layer) -> int | None:
    size = getattr(layer, "sliding_window_size", None)
    return size if size is not None and size > -1 else None


def chain_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    prefix_lens: torch.Tensor,
    counts: torch.Tensor,
    *,
    scaling: float | None = None,
) -> torch.Tensor:
    """Causal attention of each request's verify chain over its prefix and the chain itself.

    Args:
        q: ``[sum(counts), Hq, D]`` query rows, request after request.
        k_cache, v_cache: ``[slots, Hkv, D]`` (``Dv`` for values), the chain's
            own K/V already written.
        req_to_token: ``[requests, max_len]`` slot of each position.
        req_pool_indices, prefix_lens, counts: ``[B]`` request row, committed
            length, chain length.

    Returns:
        ``[sum(counts), Hq, Dv]``: row ``i`` of a chain attends to positions
        ``0 .. prefix + i``. Only ``counts`` query rows per request are
        computed (``torch_native``'s extend computes ``prefix + count``).
    """
    out = q.new_empty((q.shape[0], q.shape[1], v_cache.shape[-1]))
    gqa = q.shape[1] != k_cache.shape[1]
    start = 0
    for row, prefix, count in zip(req_pool_indices.tolist(), prefix_lens.tolist(), counts.tolist()):
        total = prefix + count
        slots = req_to_token[row, :total]
        key = k_cache[slots].movedim(0, 1).to(q.dtype)
        value = v_cache[slots].movedim(0, 1).to(q.dtype)
        query = q[start : start + count].movedim(0, 1)
        # Row i sees keys 0 .. prefix + i.
        mask = torch.arange(total, device=q.device)[None, :] <= (prefix + torch.arange(count, device=q.device))[:, None]
        out[start : start + count] = F.scaled_dot_product_attention(
            query[None], key[None], value[None], attn_mask=mask, scale=scaling, enable_gqa=gqa
        )[0].movedim(1, 0)
        start += count
    return out


def _as_extend(orig, self, q, k, v, layer, forward_batch, prefix, counts, save_kv_cache, **kwargs):
    """torch_native's own extend over the chain (cross attention, sliding windows)."""
    saved = (forward_batch.seq_lens, forward_batch.extend_prefix_lens, forward_batch.extend_seq_lens)
    forward_batch.extend_prefix_lens = prefix
    forward_batch.extend_seq_lens = counts
    forward_batch.seq_lens = prefix + counts
    try:
        return orig(self, q, k, v, layer, forward_batch, save_kv_cache=save_kv_cache, **kwargs)
    finally:
        forward_batch.seq_lens, forward_batch.extend_prefix_lens, forward_batch.extend_seq_lens = saved
