"""Synthetic checkpoints with the real on-disk layouts, for tests and loader checks.

* :func:`write_synthetic_deepspec_checkpoint`: a DeepSpec drafter directory as
  DeepSpec's ``save_pretrained`` writes it: ``config.json`` (the target's
  Qwen3/Llama config plus ``block_size``, ``mask_token_id``,
  ``target_layer_ids``, ``num_target_layers``, ``markov_rank``,
  ``markov_head_type``, ``enable_confidence_head``,
  ``confidence_head_with_markov``, ``num_anchors``) and safetensors with
  DeepSpec's tensor names, including the copies of the target's
  ``embed_tokens.weight``/``lm_head.weight``; random weights.
* :func:`write_synthetic_v4_config`: a DeepSeek-V4-Flash-DSpark-shaped
  ``config.json`` (``dspark_*`` keys, V4 sizes).
* :func:`make_synthetic_target_modules`: an embedding and LM head standing in
  for the target's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sglang_dspark.algorithm.config import DSparkConfig
from sglang_dspark.algorithm.draft_vocab import DraftVocab
from sglang_dspark.models.deepspec_drafter import deepspec_state_dict_shapes

__all__ = [
    "deepspec_config_dict",
    "make_synthetic_target_modules",
    "write_synthetic_deepspec_checkpoint",
    "write_synthetic_v4_config",
]


def deepspec_config_dict(config: DSparkConfig) -> dict[str, Any]:
    """The ``config.json`` DeepSpec would save for ``config`` (transformers-5 form)."""
    if config.backbone not in ("qwen3", "llama"):
        raise ValueError(f"DeepSpec drafters are Qwen3/Llama-family, not {config.backbone!r}.")
    out: dict[str, Any] = {
        "architectures": ["Qwen3DSparkModel" if config.backbone == "qwen3" else "LlamaDSparkModel"],
        "model_type": config.backbone,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_draft_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "hidden_act": config.hidden_act,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_parameters": config.rope_scaling.to_hf(config.rope_theta),
        "attention_bias": config.attention_bias,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "sliding_window": None,
        "layer_types": ["full_attention"] * config.num_draft_layers,
        "torch_dtype": "bfloat16",
        "block_size": config.block_size,
        "mask_token_id": config.mask_token_id,
        "target_layer_ids": list(config.target_layer_ids),
        "num_anchors": 512,
        "enable_confidence_head": config.enable_confidence_head,
        "markov_rank": config.markov_rank,
        "markov_head_type": config.markov_head_type,
    }
    if config.num_target_layers is not None:
        out["num_target_layers"] = config.num_target_layers
    if config.draft_vocab_size is not None:
        out["draft_vocab_size"] = config.draft_vocab_size
    if config.anchor_context_input:
        out["anchor_context_input"] = True
    if config.enable_confidence_head:
        out["confidence_head_with_markov"] = config.confidence_head_with_markov
    return out


def _random_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if len(shape) == 1 and name.endswith("norm.weight"):
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if len(shape) == 1:  # biases
        return 0.1 * torch.randn(shape, generator=gen)
    if "markov_w1" in name:
        return torch.randn(shape, generator=gen) * 0.5
    fan_in = shape[-1]
    return torch.randn(shape, generator=gen) / math.sqrt(fan_in)


def write_synthetic_deepspec_checkpoint(
    directory: str | Path,
    config: DSparkConfig,
    *,
    seed: int,
    num_shards: int = 1,
    dtype: torch.dtype = torch.float32,
    target_modules: tuple[nn.Embedding, nn.Linear] | None = None,
) -> Path:
    """Write a DeepSpec-layout drafter checkpoint with random weights.

    Args:
        directory: created if missing.
        config: drafter config (Qwen3/Llama backbone).
        seed: weights are a deterministic function of ``seed`` and ``config``.
        num_shards: >1 writes ``model-0000i-of-0000n.safetensors`` plus
            ``model.safetensors.index.json``; 1 writes ``model.safetensors``.
        dtype: stored dtype.
        target_modules: the target's (embedding, LM head) to copy into the
            checkpoint as DeepSpec does; random copies when ``None``.

    Returns:
        The checkpoint directory.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    raw_config = deepspec_config_dict(config)
    raw_config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (directory / "config.json").write_text(json.dumps(raw_config, indent=2), encoding="utf-8")
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        name: _random_tensor(name, shape, gen).to(dtype)
        for name, shape in sorted(deepspec_state_dict_shapes(config).items())
    }
    if config.draft_vocab_size is not None:
        # The first draft_vocab_size token ids (EAGLE-3 maps, as training writes them).
        vocab = DraftVocab(torch.arange(config.draft_vocab_size), config.vocab_size)
        tensors["d2t"], tensors["t2d"] = vocab.d2t(), vocab.membership()
    if target_modules is None:
        target_modules = make_synthetic_target_modules(config, seed=seed + 1)
    embed, head = target_modules
    tensors["embed_tokens.weight"] = embed.weight.detach().to("cpu", dtype).clone()
    tensors["lm_head.weight"] = head.weight.detach().to("cpu", dtype).clone()

    names = sorted(tensors)
    if num_shards <= 1:
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return directory
    chunk = math.ceil(len(names) / num_shards)
    weight_map: dict[str, str] = {}
    for i in range(num_shards):
        part = names[i * chunk : (i + 1) * chunk]
        fname = f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, str(directory / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(
        json.dumps(index, indent=2), encoding="utf-8"
    )
    return directory


def make_synthetic_target_modules(
    config: DSparkConfig, *, seed: int, dtype: torch.dtype = torch.float32
) -> tuple[nn.Embedding, nn.Linear]:
    """A random (embedding ``[V, H]``, bias-free LM head ``[V, H]``) pair."""
    gen = torch.Generator().manual_seed(seed)
    embed = nn.Embedding(config.vocab_size, config.hidden_size)
    head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
    with torch.no_grad():
        embed.weight.copy_(torch.randn(embed.weight.shape, generator=gen))
        head.weight.copy_(
            torch.randn(head.weight.shape, generator=gen) / math.sqrt(config.hidden_size)
        )
    return embed.to(dtype), head.to(dtype)


def write_synthetic_v4_config(
    directory: str | Path,
    *,
    block_size: int = 5,
    noise_token_id: int = 128799,
    target_layer_ids: tuple[int, ...] = (40, 41, 42),
    markov_rank: int = 256,
    hidden_size: int = 4096,
    vocab_size: int = 129280,
    num_hidden_layers: int = 43,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Write a DeepSeek-V4-Flash-DSpark-shaped ``config.json``; returns its path.

    ``overrides`` replaces or removes (value ``None``) top-level keys.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "architectures": ["DeepseekV4ForCausalLM"],
        "model_type": "deepseek_v4",
        "hidden_size": hidden_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": 64,
        "num_key_value_heads": 1,
        "head_dim": 512,
        "qk_rope_head_dim": 64,
        "q_lora_rank": 1024,
        "o_lora_rank": 1024,
        "o_groups": 8,
        "n_routed_experts": 256,
        "n_shared_experts": 1,
        "num_experts_per_tok": 6,
        "moe_intermediate_size": 2048,
        "routed_scaling_factor": 1.5,
        "scoring_func": "sqrtsoftplus",
        "swiglu_limit": 10.0,
        "sliding_window": 128,
        "hc_mult": 4,
        "hc_sinkhorn_iters": 20,
        "hc_eps": 1e-6,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000,
        "rope_scaling": {
            "type": "yarn",
            "factor": 16,
            "original_max_position_embeddings": 65536,
            "beta_fast": 32,
            "beta_slow": 1,
        },
        "max_position_embeddings": 1048576,
        "vocab_size": vocab_size,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "tie_word_embeddings": False,
        "num_nextn_predict_layers": 1,
        "torch_dtype": "bfloat16",
        "dspark_block_size": block_size,
        "dspark_noise_token_id": noise_token_id,
        "dspark_target_layer_ids": list(target_layer_ids),
        "dspark_markov_rank": markov_rank,
    }
    for key, value in (overrides or {}).items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path = directory / "config.json"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path
