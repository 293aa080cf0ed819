"""--tp-size / --ep-size checks against the model's head and expert counts."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from sglang_dspark.sglang.parallel_args import (
    ParallelArgumentError,
    check_parallel_args,
    check_server_parallel_args,
)

LLAMA = {"num_attention_heads": 4, "num_key_value_heads": 2}
MOE = {"num_attention_heads": 4, "num_key_value_heads": 4, "num_experts": 8}


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_dividing_tp_sizes_pass(tp):
    check_parallel_args(LLAMA, tp_size=tp)


@pytest.mark.parametrize("tp", [3, 8])
def test_tp_size_not_dividing_heads_names_the_flag(tp):
    with pytest.raises(ParallelArgumentError, match=rf"--tp-size {tp}"):
        check_parallel_args(LLAMA, tp_size=tp)


def test_kv_heads_must_divide_or_be_divided():
    with pytest.raises(ParallelArgumentError, match="--tp-size 4 cannot split the model's 3 key-value heads"):
        check_parallel_args({"num_attention_heads": 12, "num_key_value_heads": 3}, tp_size=4)
    check_parallel_args({"num_attention_heads": 12, "num_key_value_heads": 3}, tp_size=6)


def test_ep_size_not_dividing_experts_names_the_flag():
    check_parallel_args(MOE, tp_size=2, ep_size=2)
    six_experts = {"num_attention_heads": 6, "num_key_value_heads": 6, "num_local_experts": 6}
    with pytest.raises(ParallelArgumentError, match="--ep-size 4 does not divide the model's 6 experts"):
        check_parallel_args({**six_experts, "num_attention_heads": 4, "num_key_value_heads": 4}, tp_size=4, ep_size=4)
    with pytest.raises(ParallelArgumentError, match="--ep-size 4 must divide --tp-size 2"):
        check_parallel_args(MOE, tp_size=2, ep_size=4)


def test_text_config_of_multimodal_models_is_read():
    with pytest.raises(ParallelArgumentError, match="--tp-size 3"):
        check_parallel_args({"text_config": LLAMA}, tp_size=3)


def test_server_args_check_reads_the_model_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    check_server_parallel_args(SimpleNamespace(model_path=str(tmp_path), tp_size=2, ep_size=1))
    with pytest.raises(ParallelArgumentError, match="--tp-size 3"):
        check_server_parallel_args(SimpleNamespace(model_path=str(tmp_path), tp_size=3, ep_size=1))
    # Hub ids / missing directories are left to SGLang.
    check_server_parallel_args(SimpleNamespace(model_path="org/model", tp_size=3, ep_size=1))
