"""DSparkConfig parsing (DeepSpec and DeepSeek-V4 layouts) and validation messages."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sglang_dspark.algorithm.config import DSparkConfig, DSparkConfigError, RopeScaling
from sglang_dspark.models.synthetic import deepspec_config_dict, write_synthetic_v4_config


def qwen3_4b_deepspec_config() -> dict:
    """config.json as DeepSpec saves the Qwen3-4B recipe (config/dspark/dspark_qwen3_4b.py)."""
    return {
        "architectures": ["Qwen3DSparkModel"],
        "model_type": "qwen3",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 2560,
        "intermediate_size": 9728,
        "max_position_embeddings": 40960,
        "max_window_layers": 36,
        "num_attention_heads": 32,
        "num_hidden_layers": 5,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-06,
        "rope_parameters": {"rope_theta": 1000000, "rope_type": "default"},
        "sliding_window": None,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "vocab_size": 151936,
        "layer_types": ["full_attention"] * 5,
        "num_target_layers": 36,
        "block_size": 7,
        "mask_token_id": 151669,
        "target_layer_ids": [1, 9, 17, 25, 33],
        "num_anchors": 512,
        "enable_confidence_head": True,
        "confidence_head_with_markov": True,
        "markov_rank": 256,
        "markov_head_type": "vanilla",
    }


def small_config(**overrides) -> DSparkConfig:
    kwargs = dict(
        block_size=4,
        mask_token_id=5,
        target_layer_ids=(0, 2),
        markov_rank=8,
        hidden_size=32,
        vocab_size=50,
        num_draft_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=64,
    )
    kwargs.update(overrides)
    return DSparkConfig(**kwargs)


def test_deepspec_qwen3_4b_recipe():
    cfg = DSparkConfig.from_deepspec(qwen3_4b_deepspec_config())
    assert cfg.block_size == 7
    assert cfg.num_draft_tokens == 7  # the anchor's output is a draft position
    assert cfg.max_verify_tokens == 8
    assert cfg.mask_token_id == 151669
    assert cfg.target_layer_ids == (1, 9, 17, 25, 33)
    assert cfg.markov_rank == 256 and cfg.markov_head_type == "vanilla"
    assert cfg.enable_confidence_head and cfg.confidence_head_with_markov
    assert cfg.num_draft_layers == 5 and cfg.num_target_layers == 36
    assert (cfg.hidden_size, cfg.vocab_size) == (2560, 151936)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (32, 8, 128)
    assert cfg.intermediate_size == 9728
    assert cfg.rope_theta == 1_000_000 and cfg.rope_scaling.rope_type == "default"
    assert cfg.backbone == "qwen3" and cfg.qk_norm
    assert cfg.context_feature_size == 5 * 2560
    assert cfg.confidence_input_size == 2560 + 256
    cfg.validate_for_target(36, 2560, 151936)


def test_deepspec_from_dir_and_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(qwen3_4b_deepspec_config()))
    assert DSparkConfig.from_deepspec(tmp_path) == DSparkConfig.from_deepspec(
        tmp_path / "config.json"
    )


def test_deepspec_legacy_rope_keys_and_llama():
    raw = qwen3_4b_deepspec_config()
    del raw["rope_parameters"]
    raw.update(
        model_type="llama",
        rope_theta=500000.0,
        rope_scaling={
            "type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    cfg = DSparkConfig.from_deepspec(raw)
    assert cfg.rope_theta == 500000.0
    assert cfg.rope_scaling == RopeScaling(
        rope_type="llama3",
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    )
    assert cfg.backbone == "llama" and not cfg.qk_norm


def test_deepspec_without_confidence_head_ignores_with_markov():
    raw = qwen3_4b_deepspec_config()
    raw["enable_confidence_head"] = False
    cfg = DSparkConfig.from_deepspec(raw)
    assert not cfg.enable_confidence_head and not cfg.confidence_head_with_markov


def test_deepspec_round_trip_through_synthetic_writer():
    cfg = DSparkConfig.from_deepspec(qwen3_4b_deepspec_config())
    assert DSparkConfig.from_deepspec(deepspec_config_dict(cfg)) == cfg


def test_deepseek_v4_config(tmp_path):
    path = write_synthetic_v4_config(tmp_path)
    cfg = DSparkConfig.from_deepseek_v4(path)
    assert cfg.block_size == 5 and cfg.num_draft_tokens == 5
    assert cfg.mask_token_id == 128799
    assert cfg.target_layer_ids == (40, 41, 42)
    assert cfg.markov_rank == 256 and cfg.markov_head_type == "vanilla"
    assert (cfg.hidden_size, cfg.vocab_size) == (4096, 129280)
    assert cfg.num_draft_layers == 3  # mtp.0..mtp.2, despite num_nextn_predict_layers=1
    assert cfg.num_target_layers == 43
    assert cfg.backbone == "deepseek_v4"
    assert cfg.confidence_input_size == 4096 + 256
    assert cfg.rope_scaling.rope_type == "yarn" and cfg.rope_scaling.factor == 16
    cfg.validate_for_target(43, 4096, 129280)
    assert DSparkConfig.from_deepseek_v4(path, num_draft_layers=1).num_draft_layers == 1


def test_deepseek_v4_without_dspark_keys(tmp_path):
    path = write_synthetic_v4_config(tmp_path, overrides={"dspark_block_size": None})
    with pytest.raises(DSparkConfigError, match=r"lacks \['dspark_block_size'\].*not a DSpark"):
        DSparkConfig.from_deepseek_v4(path)


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"block_size": 1}, r"block_size must be >= 2"),
        ({"markov_rank": 0}, r"markov_rank must be >= 1"),
        ({"target_layer_ids": ()}, r"target_layer_ids is empty"),
        ({"target_layer_ids": (1, 1, 2)}, r"duplicate ids \[1\]"),
        ({"target_layer_ids": (-2, 3)}, r"negative id -2"),
        ({"target_layer_ids": (3, 1)}, r"strictly increasing"),
        ({"mask_token_id": 50}, r"mask_token_id=50 is outside the vocabulary \[0, 50\)"),
        ({"mask_token_id": -1}, r"mask_token_id=-1 is outside"),
        ({"markov_head_type": "lstm"}, r"markov_head_type='lstm' is unknown"),
        ({"num_key_value_heads": 3}, r"multiple of num_key_value_heads=3"),
        ({"target_layer_ids": (0, 7), "num_target_layers": 6}, r"include \[7\].*6 layers"),
    ],
)
def test_invalid_configs_name_the_field(overrides, pattern):
    with pytest.raises(DSparkConfigError, match=pattern):
        small_config(**overrides)


def test_embedding_output_layer_id_allowed():
    assert small_config(target_layer_ids=(-1, 3)).target_layer_ids == (-1, 3)


def test_bad_deepspec_files(tmp_path):
    raw = qwen3_4b_deepspec_config()
    del raw["markov_head_type"]
    with pytest.raises(DSparkConfigError, match="markov_head_type is missing"):
        DSparkConfig.from_deepspec(raw)
    raw = qwen3_4b_deepspec_config()
    del raw["block_size"]
    with pytest.raises(DSparkConfigError, match=r"missing required key\(s\) \['block_size'\]"):
        DSparkConfig.from_deepspec(raw)
    raw = qwen3_4b_deepspec_config()
    raw["model_type"] = "gemma4_text"
    with pytest.raises(DSparkConfigError, match="only Qwen3/Llama-family"):
        DSparkConfig.from_deepspec(raw)
    raw = qwen3_4b_deepspec_config()
    raw["rope_parameters"] = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}
    with pytest.raises(DSparkConfigError, match="rope_type='dynamic' is not supported"):
        DSparkConfig.from_deepspec(raw)
    with pytest.raises(DSparkConfigError, match="no config.json"):
        DSparkConfig.from_deepspec(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(DSparkConfigError, match="not valid JSON"):
        DSparkConfig.from_deepspec(tmp_path)


def test_validate_for_target_mismatches():
    cfg = DSparkConfig.from_deepspec(qwen3_4b_deepspec_config())
    with pytest.raises(DSparkConfigError, match=r"include \[33\].*28 layers"):
        cfg.validate_for_target(28, 2560, 151936)
    with pytest.raises(DSparkConfigError, match="num_target_layers=36 in the drafter config"):
        cfg.validate_for_target(40, 2560, 151936)
    with pytest.raises(DSparkConfigError, match="hidden_size=2560 .* target's hidden_size is 4096"):
        cfg.validate_for_target(36, 4096, 151936)
    with pytest.raises(DSparkConfigError, match="vocab_size=151936 .* target's vocab_size is 152064"):
        cfg.validate_for_target(36, 2560, 152064)


def test_frozen_and_with_block_size():
    cfg = small_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.block_size = 9  # type: ignore[misc]
    assert cfg.with_block_size(6).num_draft_tokens == 6
    with pytest.raises(DSparkConfigError, match="block_size must be >= 2"):
        cfg.with_block_size(1)
    assert hash(cfg) == hash(small_config())
