"""Drafter config construction and the DeepSpec-format checkpoint writer.

The drafter config mirrors DeepSpec's ``build_draft_config``
(``deepspec/modeling/dspark/qwen3/config.py``): a copy of the target's HF
config with ``num_hidden_layers`` set to the number of *draft* layers,
``num_target_layers``, ``block_size``, ``mask_token_id``,
``target_layer_ids``, ``num_anchors``, ``enable_confidence_head``,
``confidence_head_with_markov``, ``markov_rank`` and ``markov_head_type``,
``tie_word_embeddings`` false and full attention in every layer.

The weights are written as ``model.safetensors`` with DeepSpec's tensor
names (``layers.N.*``, ``norm``, ``fc``, ``hidden_norm``,
``markov_head.markov_w1/markov_w2``, ``confidence_head.proj``). Unlike
DeepSpec's ``save_pretrained`` the target's embedding and LM head are **not**
stored: the serving side shares the target's (``load_deepspec_drafter``
accepts both layouts).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from sglang_dspark.algorithm.config import DSparkConfig
from sglang_dspark.train.recipe import Recipe

__all__ = [
    "DTYPES",
    "drafter_config_dict",
    "init_drafter_weights",
    "save_drafter",
]

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_ARCHITECTURES = {"qwen3": "Qwen3DSparkModel", "llama": "LlamaDSparkModel"}


def drafter_config_dict(target_config: Mapping[str, Any], recipe: Recipe) -> dict[str, Any]:
    """The drafter ``config.json`` (DeepSpec ``build_draft_config`` on the target config)."""
    d = recipe.drafter
    cfg = copy.deepcopy(dict(target_config))
    model_type = str(cfg.get("model_type", "llama"))
    if model_type not in _ARCHITECTURES:
        raise ValueError(
            f"target model_type {model_type!r}: DeepSpec-style drafters are built for Llama and "
            "Qwen3 targets only."
        )
    num_target_layers = int(cfg["num_hidden_layers"])
    bad = [i for i in d.target_layer_ids if not -1 <= i < num_target_layers]
    if bad:
        raise ValueError(
            f"target_layer_ids {list(d.target_layer_ids)} include {bad}; the target has "
            f"{num_target_layers} layers (valid ids -1..{num_target_layers - 1})."
        )
    vocab = int(cfg["vocab_size"])
    if not 0 <= d.mask_token_id < vocab:
        raise ValueError(f"mask_token_id {d.mask_token_id} is outside the vocabulary [0, {vocab}).")
    for key in ("quantization_config", "auto_map", "_name_or_path", "transformers_version"):
        cfg.pop(key, None)
    cfg.update(
        {
            "architectures": [_ARCHITECTURES[model_type]],
            "num_target_layers": num_target_layers,
            "num_hidden_layers": int(d.num_draft_layers),
            "block_size": int(d.block_size),
            "tie_word_embeddings": False,
            "layer_types": ["full_attention"] * int(d.num_draft_layers),
            "mask_token_id": int(d.mask_token_id),
            "target_layer_ids": [int(i) for i in d.target_layer_ids],
            "num_anchors": int(recipe.train.num_anchors),
            "enable_confidence_head": bool(d.enable_confidence_head),
            "markov_rank": int(d.markov_rank),
            "markov_head_type": str(d.markov_head_type),
            "torch_dtype": recipe.export.dtype,
        }
    )
    cfg.pop("dtype", None)
    if d.enable_confidence_head:
        cfg["confidence_head_with_markov"] = bool(d.confidence_head_with_markov)
    if d.intermediate_size is not None:
        cfg["intermediate_size"] = int(d.intermediate_size)
    if d.draft_vocab_size is not None:
        cfg["draft_vocab_size"] = int(d.draft_vocab_size)
    if d.anchor_context_input:
        cfg["anchor_context_input"] = True
    if "head_dim" not in cfg or cfg["head_dim"] is None:
        cfg["head_dim"] = int(cfg["hidden_size"]) // int(cfg["num_attention_heads"])
    return cfg


@torch.no_grad()
def init_drafter_weights(model: nn.Module, *, std: float, seed: int) -> None:
    """DeepSpec/HF init: Linear and Embedding weights ~ N(0, std), biases 0, norms 1.

    Parameters are visited in ``named_parameters`` order with one seeded CPU
    generator, so the init is a function of ``seed`` only.
    """
    gen = torch.Generator().manual_seed(int(seed))
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        elif name.endswith(".bias"):
            param.zero_()
        else:
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32) * std)


def save_drafter(
    directory: str | Path,
    drafter: nn.Module,
    config_dict: Mapping[str, Any],
    *,
    dtype: torch.dtype,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (DeepSpec names, no embedding/LM head)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    DSparkConfig.from_deepspec(dict(config_dict))  # validates before writing
    tensors = {
        # Weights in ``dtype``; the draft-vocabulary maps (int64 d2t, bool t2d) keep theirs.
        name: t.detach().to("cpu", dtype if t.is_floating_point() else t.dtype).contiguous()
        for name, t in drafter.state_dict().items()
    }
    tmp = directory / f".model.safetensors.tmp-{os.getpid()}"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(dict(config_dict), indent=2) + "\n",
                                           encoding="utf-8")
    return directory
