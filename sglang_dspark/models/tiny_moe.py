"""A tiny random Qwen3-MoE checkpoint with MXFP4 experts, and its dequantised twin (tests, no download).

Both directories hold the same model: ``Qwen3MoeForCausalLM`` (hidden 64, 2
layers, 8 experts, top-2, ``moe_intermediate_size`` 64, untied embeddings) with
the byte-level tokenizer of :mod:`sglang_dspark.train.tiny_target`.

* ``mxfp4``: routed experts quantised by :func:`sglang_dspark.moe.mxfp4.quantize`
  and stored per expert as SGLang's MoE loaders read them,
  ``model.layers.{L}.mlp.experts.{E}.{gate,up,down}_proj.weight`` (int8
  ``[out, in/2]``, element ``2k`` in the low nibble) and ``...weight_scale``
  (uint8 E8M0 ``[out, in/32]``), with ``quantization_config: {quant_method:
  mxfp4}``; everything else float32.
* ``dequantised``: the same tensors with float32 experts equal to
  :func:`~sglang_dspark.moe.mxfp4.dequantize` of the packed ones, and no
  quantisation config: the reference that any runner must reproduce.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from sglang_dspark.moe import mxfp4

__all__ = ["TinyMoeSpec", "write_tiny_moe_pair"]


@dataclass(frozen=True)
class TinyMoeSpec:
    """Sizes and seed of the tiny MoE model."""

    hidden_size: int = 64
    num_layers: int = 2
    num_experts: int = 8
    top_k: int = 2
    moe_intermediate_size: int = 64
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    seed: int = 0
    embed_std: float = 0.5
    layer_std: float = 0.1
    expert_std: float = 0.2
    gate_std: float = 0.5

    def __post_init__(self) -> None:
        if self.hidden_size % mxfp4.BLOCK_SIZE or self.moe_intermediate_size % mxfp4.BLOCK_SIZE:
            raise ValueError("hidden and moe_intermediate sizes must be multiples of 32 (MXFP4 blocks)")
        if not 0 < self.top_k <= self.num_experts:
            raise ValueError(f"top_k {self.top_k} must be in [1, {self.num_experts}]")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")


def _config(spec: TinyMoeSpec, vocab: int, bos: int, eos: int) -> dict:
    return {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "vocab_size": vocab,
        "hidden_size": spec.hidden_size,
        "intermediate_size": 4 * spec.hidden_size,
        "moe_intermediate_size": spec.moe_intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "num_experts": spec.num_experts,
        "num_experts_per_tok": spec.top_k,
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": eos,
    }


def _dense_weights(spec: TinyMoeSpec, vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(spec.seed)

    def randn(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    h, d = spec.hidden_size, spec.head_dim
    w: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": randn(vocab, h, std=spec.embed_std),
        "model.norm.weight": torch.ones(h),
        "lm_head.weight": randn(vocab, h, std=spec.embed_std),
    }
    for layer in range(spec.num_layers):
        p = f"model.layers.{layer}."
        w[p + "input_layernorm.weight"] = torch.ones(h)
        w[p + "post_attention_layernorm.weight"] = torch.ones(h)
        w[p + "self_attn.q_proj.weight"] = randn(spec.num_heads * d, h, std=spec.layer_std)
        w[p + "self_attn.k_proj.weight"] = randn(spec.num_kv_heads * d, h, std=spec.layer_std)
        w[p + "self_attn.v_proj.weight"] = randn(spec.num_kv_heads * d, h, std=spec.layer_std)
        w[p + "self_attn.o_proj.weight"] = randn(h, spec.num_heads * d, std=spec.layer_std)
        w[p + "self_attn.q_norm.weight"] = torch.ones(d)
        w[p + "self_attn.k_norm.weight"] = torch.ones(d)
        w[p + "mlp.gate.weight"] = randn(spec.num_experts, h, std=spec.gate_std)
    return w


def _expert_weights(spec: TinyMoeSpec) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``name -> (packed int8, scales uint8)`` for every routed expert projection."""
    g = torch.Generator().manual_seed(spec.seed + 1)
    h, i = spec.hidden_size, spec.moe_intermediate_size
    out = {}
    for layer in range(spec.num_layers):
        for e in range(spec.num_experts):
            p = f"model.layers.{layer}.mlp.experts.{e}."
            for proj, shape in (("gate_proj", (i, h)), ("up_proj", (i, h)), ("down_proj", (h, i))):
                out[p + proj] = mxfp4.quantize(torch.randn(*shape, generator=g) * spec.expert_std)
    return out


def write_tiny_moe_pair(directory: str | Path, spec: TinyMoeSpec = TinyMoeSpec()) -> tuple[Path, Path]:
    """Write ``directory/mxfp4`` and ``directory/dequantised`` (see module docstring); return both paths."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    from sglang_dspark.train.tiny_target import make_byte_tokenizer

    root = Path(directory)
    tokenizer = make_byte_tokenizer()
    vocab = len(tokenizer)
    bos, eos = tokenizer.convert_tokens_to_ids("<|im_start|>"), tokenizer.convert_tokens_to_ids("<|im_end|>")
    dense = _dense_weights(spec, vocab)
    experts = _expert_weights(spec)
    quantised = dict(dense)
    dequantised = dict(dense)
    for name, (packed, scales) in experts.items():
        quantised[name + ".weight"] = packed
        quantised[name + ".weight_scale"] = scales
        dequantised[name + ".weight"] = mxfp4.dequantize(packed, scales)
    paths = []
    for sub, weights, quant in (
        ("mxfp4", quantised, {"quant_method": "mxfp4"}),
        ("dequantised", dequantised, None),
    ):
        path = root / sub
        path.mkdir(parents=True, exist_ok=True)
        config = _config(spec, vocab, bos, eos)
        if quant is not None:
            config["quantization_config"] = quant
        (path / "config.json").write_text(json.dumps(config, indent=2))
        save_file({k: v.contiguous() for k, v in weights.items()}, str(path / "model.safetensors"))
        tokenizer.save_pretrained(str(path))
        GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=eos).save_pretrained(str(path))
        paths.append(path)
    return paths[0], paths[1]
