"""Recipe files: they parse, fit their targets and keep the SmolLM2 drafter small."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sglang_dspark.algorithm.config import DSparkConfig
from sglang_dspark.models.deepspec_drafter import deepspec_state_dict_shapes
from sglang_dspark.train.export import drafter_config_dict
from sglang_dspark.train.recipe import Recipe, RecipeError, load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

# SmolLM2-135M-Instruct's config.json as `python -m sglang_dspark.demo prepare` writes it.
SMOLLM2_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
    "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
    "num_key_value_heads": 3, "head_dim": 64, "hidden_act": "silu", "vocab_size": 49152,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-05,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    "tie_word_embeddings": True, "attention_bias": False, "bos_token_id": 1, "eos_token_id": 2,
}


def test_every_recipe_loads_and_round_trips():
    paths = sorted(RECIPES.glob("*.json"))
    assert {p.name for p in paths} >= {"smollm2-135m-drafter.json", "tiny-drafter.json"}
    for path in paths:
        recipe = load_recipe(path)
        assert Recipe.from_dict(recipe.to_dict()) == recipe


def test_smollm2_drafter_fits_target_and_size_budget():
    recipe = load_recipe(RECIPES / "smollm2-135m-drafter.json")
    raw = drafter_config_dict(SMOLLM2_CONFIG, recipe)
    config = DSparkConfig.from_deepspec(raw)
    config.validate_for_target(30, 576, 49152)
    assert config.backbone == "llama" and not config.qk_norm
    assert raw["num_target_layers"] == 30 and raw["num_hidden_layers"] == recipe.drafter.num_draft_layers
    assert raw["architectures"] == ["LlamaDSparkModel"] and raw["tie_word_embeddings"] is False
    assert 7 <= config.block_size <= 8 and 64 <= config.markov_rank <= 256
    ids = config.target_layer_ids
    assert len(ids) >= 4 and ids[0] <= 2 and ids[-1] >= 25  # spread over depth
    assert config.mask_token_id == 16  # '<empty_output>', never used in chat
    shapes = deepspec_state_dict_shapes(config)
    assert not any(name.startswith(("embed_tokens", "lm_head")) for name in shapes)
    params = sum(math.prod(s) for s in shapes.values())
    assert params * 2 < 25e6, f"{params} parameters: {params * 2 / 1e6:.1f} MB in bf16"


def test_unknown_keys_and_bad_values_are_rejected(tmp_path):
    base = json.loads((RECIPES / "tiny-drafter.json").read_text())
    bad = dict(base, train=dict(base["train"], learning_rate=1.0))
    with pytest.raises(RecipeError, match="learning_rate"):
        Recipe.from_dict(bad)
    with pytest.raises(RecipeError, match="increasing"):
        Recipe.from_dict(dict(base, drafter=dict(base["drafter"], target_layer_ids=[3, 1])))
    with pytest.raises(RecipeError, match="multiple"):
        Recipe.from_dict(dict(base, train=dict(base["train"], batch_size=3, micro_batch_size=2)))
    with pytest.raises(RecipeError, match="cache_implementation"):
        Recipe.from_dict(dict(base, distill=dict(base["distill"], cache_implementation="paged")))
    path = tmp_path / "r.json"
    path.write_text("{not json")
    with pytest.raises(RecipeError):
        load_recipe(path)
    with pytest.raises(ValueError, match="target_layer_ids"):
        drafter_config_dict(dict(SMOLLM2_CONFIG, num_hidden_layers=20),
                            load_recipe(RECIPES / "smollm2-135m-drafter.json"))
