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

TARGET = "sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend.forward_extend"


def forward_extend_with_verify(orig, self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
    """AROUND hook: run TARGET_VERIFY batches as a causal extend over the chain.

    A batch verifying one token per request (no drafts: the speculation gate
    chose plain decoding, or the drafter failed) runs SGLang's decode path
    instead: ``torch_native``'s extend attends with a query padded to the
    whole sequence, i.e. quadratic in the prefix, where decode is linear.
    """
    if not forward_batch.forward_mode.is_target_verify():
        return orig(self, q, k, v, layer, forward_batch, save_kv_cache=save_kv_cache, **kwargs)
    prefix = forward_batch.seq_lens
    spec_info = forward_batch.spec_info
    layout = getattr(spec_info, "ragged_verify_layout", None)
    if layout is not None:
        counts = layout.verify_lens.to(device=prefix.device, dtype=prefix.dtype)
    else:
        counts = torch.full_like(prefix, int(spec_info.draft_token_num))
    if q.shape[0] == prefix.shape[0] and not layer.is_cross_attention:
        # One query row per request: every count is 1.
        saved_seq_lens = forward_batch.seq_lens
        forward_batch.seq_lens = prefix + 1
        try:
            return self.forward_decode(q, k, v, layer, forward_batch, save_kv_cache=save_kv_cache)
        finally:
            forward_batch.seq_lens = saved_seq_lens
    saved = (forward_batch.seq_lens, forward_batch.extend_prefix_lens, forward_batch.extend_seq_lens)
    forward_batch.extend_prefix_lens = prefix
    forward_batch.extend_seq_lens = counts
    forward_batch.seq_lens = prefix + counts
    try:
        return orig(self, q, k, v, layer, forward_batch, save_kv_cache=save_kv_cache, **kwargs)
    finally:
        forward_batch.seq_lens, forward_batch.extend_prefix_lens, forward_batch.extend_seq_lens = saved
