"""Warm start from the target's next layer: the drafter's context keys/values are that layer's."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sglang_dspark.algorithm.config import DSparkConfig
from sglang_dspark.models.deepspec_drafter import DeepSpecDrafter
from sglang_dspark.train.export import drafter_config_dict
from sglang_dspark.train.recipe import load_recipe
from sglang_dspark.train.target import load_target, target_backbone, target_forward
from sglang_dspark.train.target_init import init_from_target_layer
from sglang_dspark.train.trainer import _target_config_dict

from .conftest import TINY_RECIPE


def _drafter(target, taps):
    recipe = load_recipe(TINY_RECIPE)
    recipe = dataclasses.replace(recipe, drafter=dataclasses.replace(recipe.drafter, target_layer_ids=taps))
    return DeepSpecDrafter(DSparkConfig.from_deepspec(drafter_config_dict(_target_config_dict(target.config), recipe)))


def test_context_keys_and_values_are_the_target_layers(tiny_target_dir):
    target, _ = load_target(tiny_target_dir)
    drafter = _drafter(target, (0, 1, 2))
    init_from_target_layer(drafter, target, 3)
    ids = torch.tensor([[5, 70, 71, 72, 33, 9]])
    fwd = target_forward(target, ids, (0, 1, 2), compute_logits=False)
    layer = target_backbone(target).layers[3]
    with torch.no_grad():
        ctx = drafter.project_context(fwd.context_hidden)
        h2 = fwd.context_hidden[..., 2 * target.config.hidden_size:]
        want = layer.input_layernorm(h2)
        assert torch.allclose(ctx, want, atol=1e-5)
        assert torch.allclose(drafter.layers[0].self_attn.k_proj(ctx), layer.self_attn.k_proj(want), atol=1e-5)
    assert torch.equal(drafter.norm.weight, target_backbone(target).norm.weight)


def test_layer_must_read_the_last_tap(tiny_target_dir):
    target, _ = load_target(tiny_target_dir)
    with pytest.raises(ValueError, match="last target_layer_id"):
        init_from_target_layer(_drafter(target, (0, 1)), target, 3)
