"""Start a drafter from the target's own next layer instead of random weights.

With taps ``target_layer_ids`` ending at layer ``L - 1``, the drafter's context
rows are ``hidden_norm(fc(features))``. Choosing ``fc`` to pass through the
``L - 1`` tap, ``hidden_norm`` = target layer ``L``'s ``input_layernorm`` and
the drafter layer = target layer ``L`` makes the context keys and values
exactly the ones target layer ``L`` computes for those positions; the final
``norm`` is the target's. The block's queries still start from token
embeddings rather than the target's hidden states, so this is a warm start,
not the target: training adapts it. Only the drafter's first layer is set;
the Markov and confidence heads keep their random initialisation.
"""

from __future__ import annotations

import torch
from torch import nn

from sglang_dspark.models.deepspec_drafter import DeepSpecDrafter
from sglang_dspark.train.target import target_backbone

__all__ = ["init_from_target_layer"]

_LAYER_PARAMS = (
    "input_layernorm.weight", "post_attention_layernorm.weight",
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
    "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
)


@torch.no_grad()
def init_from_target_layer(drafter: DeepSpecDrafter, target: nn.Module, layer_id: int) -> None:
    """Copy target layer ``layer_id`` into the drafter (see the module docstring).

    Raises:
        ValueError: ``layer_id - 1`` is not the drafter's last tap, or the
            shapes differ (a drafter narrower than its target).
    """
    cfg = drafter.config
    taps = list(cfg.target_layer_ids)
    if taps[-1] != layer_id - 1:
        raise ValueError(
            f"init_from_target_layer={layer_id} needs the last target_layer_id to be {layer_id - 1} "
            f"(its input), got {taps}."
        )
    layers = target_backbone(target).layers
    if not 0 <= layer_id < len(layers):
        raise ValueError(f"the target has {len(layers)} layers; cannot copy layer {layer_id}.")
    source = dict(layers[layer_id].named_parameters())
    dest = dict(drafter.layers[0].named_parameters())
    for name in _LAYER_PARAMS:
        if name not in source or source[name].shape != dest[name].shape:
            raise ValueError(
                f"target layer {layer_id} {name} {tuple(source[name].shape) if name in source else 'missing'} "
                f"does not fit the drafter's {tuple(dest[name].shape)}."
            )
        dest[name].copy_(source[name])
    hidden = cfg.hidden_size
    drafter.fc.weight.zero_()
    drafter.fc.weight[:, (len(taps) - 1) * hidden:].copy_(torch.eye(hidden))
    drafter.hidden_norm.weight.copy_(source["input_layernorm.weight"])
    drafter.norm.weight.copy_(target_backbone(target).norm.weight)
