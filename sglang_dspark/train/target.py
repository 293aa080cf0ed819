"""The target model as the trainer sees it: loading and hidden-state capture.

Hidden-state semantics follow DeepSpec (``scripts/data/prepare_target_cache.py``,
``run_target_forward_with_hooks``): target layer id ``L`` is the *output* of
decoder layer ``L`` (a forward hook on ``model.layers[L]``; ``hidden_states[L+1]``
in HF terms for every layer but the last, whose HF entry is post-norm), ``-1``
is the embedding output, and the features of ``target_layer_ids`` are
concatenated in order. The "last hidden state" is the final-norm output, so
``lm_head(last_hidden)`` are the target's logits.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

__all__ = [
    "TargetForward",
    "capture_target_features",
    "load_target",
    "target_backbone",
    "target_forward",
]


def load_target(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, object]:
    """Load a HF causal LM (frozen, eval mode) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model, tokenizer


def target_backbone(model: nn.Module) -> nn.Module:
    """The decoder stack (``model.model`` for HF ``*ForCausalLM``)."""
    backbone = getattr(model, "model", model)
    if not hasattr(backbone, "layers"):
        raise TypeError(f"{type(model).__name__} has no decoder layers at .model.layers.")
    return backbone


@contextlib.contextmanager
def capture_target_features(
    model: nn.Module, layer_ids: Sequence[int]
) -> Iterator[dict[str, torch.Tensor]]:
    """Hook the target so each forward stores layer outputs and the final-norm output.

    Yields a dict filled after each forward: ``"layer:<id>"`` per id and
    ``"last"`` (final-norm output).
    """
    backbone = target_backbone(model)
    store: dict[str, torch.Tensor] = {}
    handles = []

    def hook(key: str):
        def fn(_module, _inputs, output):
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            store[key] = tensor.detach()

        return fn

    try:
        for layer_id in layer_ids:
            module = backbone.embed_tokens if layer_id == -1 else backbone.layers[layer_id]
            handles.append(module.register_forward_hook(hook(f"layer:{layer_id}")))
        handles.append(backbone.norm.register_forward_hook(hook("last")))
        yield store
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class TargetForward:
    """One target forward.

    Attributes:
        logits: ``[B, T, V]`` float32.
        context_hidden: ``[B, T, n*H]`` concatenated layer outputs.
        last_hidden: ``[B, T, H]`` final-norm output.
        past_key_values: the updated KV cache (when one was used).
    """

    logits: torch.Tensor
    context_hidden: torch.Tensor
    last_hidden: torch.Tensor
    past_key_values: object | None


@torch.no_grad()
def target_forward(
    model: nn.Module,
    input_ids: torch.Tensor,
    layer_ids: Sequence[int],
    *,
    attention_mask: torch.Tensor | None = None,
    past_key_values: object | None = None,
    use_cache: bool = False,
    compute_logits: bool = True,
) -> TargetForward:
    """Run the target and return logits plus the drafter's context features."""
    with capture_target_features(model, layer_ids) as store:
        if compute_logits:
            out = model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                past_key_values=past_key_values,
                use_cache=use_cache,
            )
            logits = out.logits.float()
            past = getattr(out, "past_key_values", None)
        else:
            out = target_backbone(model)(
                input_ids=input_ids,
                attention_mask=attention_mask,
                past_key_values=past_key_values,
                use_cache=use_cache,
            )
            logits = torch.empty(0)
            past = getattr(out, "past_key_values", None)
    context = torch.cat([store[f"layer:{i}"] for i in layer_ids], dim=-1)
    return TargetForward(
        logits=logits, context_hidden=context, last_hidden=store["last"], past_key_values=past
    )
