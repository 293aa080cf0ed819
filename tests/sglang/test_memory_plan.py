"""The per-GPU memory estimate ``preflight`` prints."""

from __future__ import annotations

import pytest

from sglang_dspark.sglang.memory_plan import GIB, MemoryPlan, kv_bytes_per_token, plan_memory

# Published configs (Hugging Face config.json of each release).
LLAMA3_8B = {"model_type": "llama", "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
             "hidden_size": 4096}
DEEPSEEK_V3 = {"model_type": "deepseek_v3", "num_hidden_layers": 61, "num_attention_heads": 128,
               "kv_lora_rank": 512, "qk_rope_head_dim": 64}


def test_kv_bytes_per_token_by_layout():
    # GQA: K and V, 8 KV heads x 128 x 32 layers x 2 bytes; split over TP until one head per rank.
    assert kv_bytes_per_token(LLAMA3_8B, tp_size=1) == (2 * 32 * 8 * 128 * 2, None)
    assert kv_bytes_per_token(LLAMA3_8B, tp_size=8)[0] == 2 * 32 * 1 * 128 * 2
    assert kv_bytes_per_token(LLAMA3_8B, tp_size=16)[0] == 2 * 32 * 1 * 128 * 2  # replicated past 8
    assert kv_bytes_per_token(LLAMA3_8B, tp_size=1, kv_cache_dtype="fp8_e4m3")[0] == 2 * 32 * 8 * 128
    # MLA: one latent per token per layer, not split by TP.
    assert kv_bytes_per_token(DEEPSEEK_V3, tp_size=8) == (61 * 576 * 2, None)
    none, why = kv_bytes_per_token({"model_type": "deepseek_v4"}, tp_size=8)
    assert none is None and "not modelled" in why


def test_plan_lines_and_the_weights_that_do_not_fit():
    plan = plan_memory(LLAMA3_8B, checkpoint_bytes=16 * GIB, gpu_gib=80, tp_size=1, mem_fraction_static=0.9)
    assert plan.weight_bytes_per_gpu == 16 * GIB and plan.pool_bytes == int(72 * GIB) - 16 * GIB
    assert plan.tokens == plan.pool_bytes // 131072 and plan.error() is None
    assert "about 458,752 tokens" in plan.line()
    too_big = plan_memory(LLAMA3_8B, checkpoint_bytes=80 * GIB, gpu_gib=80, tp_size=1, mem_fraction_static=0.9)
    assert too_big.tokens is None and "the weights alone need about 80.0 GiB per GPU" in too_big.error()
    with pytest.raises(ValueError, match="mem_fraction_static"):
        MemoryPlan(gpu_bytes=GIB, mem_fraction_static=1.5, weight_bytes_per_gpu=0, kv_bytes_per_token=None)
