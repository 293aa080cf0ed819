"""chain_attention (the CPU verify attention) against torch_native's padded causal extend."""

import pytest
import torch
import torch.nn.functional as F

from sglang_dspark.sglang.torch_native_verify import chain_attention


def padded_extend_reference(q, k_cache, v_cache, req_to_token, rows, prefixes, counts, scaling):
    """What SGLang's torch_native extend computes: the query padded to the whole sequence, causal."""
    out, start = [], 0
    for row, prefix, count in zip(rows.tolist(), prefixes.tolist(), counts.tolist()):
        total = prefix + count
        slots = req_to_token[row, :total]
        key, value = k_cache[slots].movedim(0, 1), v_cache[slots].movedim(0, 1)
        padded = q.new_zeros((q.shape[1], total, q.shape[2]))
        padded[:, prefix:] = q[start : start + count].movedim(0, 1)
        o = F.scaled_dot_product_attention(padded[None], key[None], value[None], is_causal=True, scale=scaling,
                                           enable_gqa=q.shape[1] != k_cache.shape[1])[0]
        out.append(o[:, prefix:].movedim(1, 0))
        start += count
    return torch.cat(out)


@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 2), (6, 1)])
def test_matches_the_padded_extend(hq, hkv):
    g = torch.Generator().manual_seed(hq * 10 + hkv)
    d, slots_total = 8, 200
    k_cache = torch.randn(slots_total, hkv, d, generator=g)
    v_cache = torch.randn(slots_total, hkv, d, generator=g)
    prefixes, counts = torch.tensor([5, 17, 0, 40]), torch.tensor([3, 1, 4, 8])
    req_to_token = torch.randperm(slots_total, generator=g)[:4 * 50].view(4, 50)
    rows = torch.tensor([2, 0, 3, 1])
    q = torch.randn(int(counts.sum()), hq, d, generator=g)
    got = chain_attention(q, k_cache, v_cache, req_to_token, rows, prefixes, counts, scaling=0.3)
    want = padded_extend_reference(q, k_cache, v_cache, req_to_token, rows, prefixes, counts, 0.3)
    assert got.shape == (int(counts.sum()), hq, d)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_first_row_sees_prefix_and_anchor_only():
    # Keys after the anchor must not leak into its output: change them, the anchor row stays.
    k_cache, v_cache = torch.randn(20, 1, 4), torch.randn(20, 1, 4)
    req_to_token = torch.arange(20)[None]
    q = torch.randn(3, 1, 4)
    args = (req_to_token, torch.tensor([0]), torch.tensor([5]), torch.tensor([3]))
    before = chain_attention(q, k_cache, v_cache, *args)
    k2, v2 = k_cache.clone(), v_cache.clone()
    k2[6:8], v2[6:8] = 100.0, 100.0
    after = chain_attention(q, k2, v2, *args)
    torch.testing.assert_close(after[0], before[0])
    assert not torch.allclose(after[2], before[2])
