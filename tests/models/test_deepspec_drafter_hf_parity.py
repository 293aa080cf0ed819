"""Parity of the reference drafter with DeepSpec's forward built from HF Qwen3 parts.

The oracle follows DeepSpec ``Qwen3DSparkModel._forward_backbone`` /
``Qwen3DSparkAttention.forward`` literally (one flat sequence
[context ; block], dense mask: context rows before the anchor + the whole
block), using transformers' ``Qwen3RMSNorm``, ``Qwen3MLP`` and
``Qwen3RotaryEmbedding`` so RoPE scaling and norms are checked against HF.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sglang_dspark.algorithm.config import DSparkConfig, RopeScaling
from sglang_dspark.models.deepspec_drafter import DeepSpecDrafter
from sglang_dspark.models.synthetic import deepspec_config_dict, make_synthetic_target_modules
from tests.torch_threads import one_torch_thread

transformers = pytest.importorskip("transformers")
from transformers import Qwen3Config  # noqa: E402
from transformers.models.qwen3.modeling_qwen3 import (  # noqa: E402
    Qwen3MLP,
    Qwen3RMSNorm,
    Qwen3RotaryEmbedding,
    rotate_half,
)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


def _config(rope: RopeScaling) -> DSparkConfig:
    return DSparkConfig(
        block_size=4,
        mask_token_id=3,
        target_layer_ids=(0, 2),
        markov_rank=8,
        hidden_size=32,
        vocab_size=64,
        num_draft_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=48,
        rope_theta=10000.0,
        rope_scaling=rope,
        max_position_embeddings=64,
    )


def _oracle(model: DeepSpecDrafter, hf_cfg, ctx_feat, anchor, embed, lm_head):
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    eps = hf_cfg.rms_norm_eps

    def norm(name, size):
        mod = Qwen3RMSNorm(size, eps=eps)
        mod.weight.data.copy_(sd[name])
        return mod

    def lin(name):
        w = sd[name + ".weight"]
        mod = nn.Linear(w.shape[1], w.shape[0], bias=False)
        mod.weight.data.copy_(w)
        return mod

    cfg = model.config
    seq_len = ctx_feat.shape[1]
    bs = cfg.block_size
    noise_ids = torch.full((1, bs), cfg.mask_token_id)
    noise_ids[0, 0] = anchor
    hidden = embed(noise_ids)
    target = norm("hidden_norm.weight", cfg.hidden_size)(lin("fc")(ctx_feat))
    pos = torch.cat([torch.arange(seq_len), seq_len + torch.arange(bs)])[None]
    cos, sin = Qwen3RotaryEmbedding(hf_cfg)(hidden, pos)
    nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    for i in range(cfg.num_draft_layers):
        p = f"layers.{i}."
        residual = hidden
        x = norm(p + "input_layernorm.weight", cfg.hidden_size)(hidden)
        q = lin(p + "self_attn.q_proj")(x).view(1, bs, nh, hd)
        q = norm(p + "self_attn.q_norm.weight", hd)(q).transpose(1, 2)
        k = torch.cat([lin(p + "self_attn.k_proj")(target), lin(p + "self_attn.k_proj")(x)], 1)
        v = torch.cat([lin(p + "self_attn.v_proj")(target), lin(p + "self_attn.v_proj")(x)], 1)
        k = norm(p + "self_attn.k_norm.weight", hd)(k.view(1, -1, nkv, hd)).transpose(1, 2)
        v = v.view(1, -1, nkv, hd).transpose(1, 2)
        c, s = cos.unsqueeze(1), sin.unsqueeze(1)
        q = q * c[..., -bs:, :] + rotate_half(q) * s[..., -bs:, :]
        k = k * c + rotate_half(k) * s
        k = k.repeat_interleave(nh // nkv, dim=1)
        v = v.repeat_interleave(nh // nkv, dim=1)
        scores = (q @ k.transpose(-1, -2)) * hd**-0.5
        attn = torch.softmax(scores, dim=-1) @ v
        x = lin(p + "self_attn.o_proj")(attn.transpose(1, 2).reshape(1, bs, nh * hd))
        hidden = residual + x
        residual = hidden
        mlp = Qwen3MLP(hf_cfg)
        for name in ("gate_proj", "up_proj", "down_proj"):
            getattr(mlp, name).weight.data.copy_(sd[p + f"mlp.{name}.weight"])
        hidden = residual + mlp(norm(p + "post_attention_layernorm.weight", cfg.hidden_size)(hidden))
    hidden = norm("norm.weight", cfg.hidden_size)(hidden)
    return hidden, lm_head(hidden)


@pytest.mark.parametrize(
    "rope",
    [
        RopeScaling(),
        RopeScaling(rope_type="yarn", factor=4.0, original_max_position_embeddings=16),
        RopeScaling(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        ),
    ],
    ids=["default", "yarn", "llama3"],
)
@torch.no_grad()
def test_matches_deepspec_forward_on_hf_components(rope):
    cfg = _config(rope)
    torch.manual_seed(0)
    embed, head = make_synthetic_target_modules(cfg, seed=1)
    model = DeepSpecDrafter(cfg, embed_tokens=embed, lm_head=head).eval()
    for param in model.parameters():  # non-trivial norm weights
        param.data.add_(0.05 * torch.randn_like(param))
    hf_cfg = Qwen3Config(**deepspec_config_dict(cfg))
    ctx = torch.randn(1, 9, cfg.context_feature_size)
    anchor = 17
    want_h, want_logits = _oracle(model, hf_cfg, ctx, anchor, embed, head)
    got = model(ctx, torch.tensor([anchor]))
    torch.testing.assert_close(got.hidden, want_h, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(got.logits, want_logits, atol=2e-5, rtol=2e-5)
