"""Real ``sglang serve`` processes on CPU, started once per test session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sglang_dspark.algorithm.config import DSparkConfig
from sglang_dspark.models.synthetic import write_synthetic_deepspec_checkpoint
from sglang_dspark.server_process import ServerProcess, cpu_serve_args, dspark_args
from sglang_dspark.train.tiny_target import make_tiny_target

BLOCK_SIZE = 4


def copy_drafter_config(target_dir: Path, **overrides) -> DSparkConfig:
    target = json.loads((target_dir / "config.json").read_text())
    fields = dict(
        block_size=BLOCK_SIZE,
        mask_token_id=int(target["vocab_size"]) - 1,
        target_layer_ids=(0, 2),
        markov_rank=256,
        hidden_size=int(target["hidden_size"]),
        vocab_size=int(target["vocab_size"]),
        num_draft_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        backbone="llama",
        qk_norm=False,
        num_target_layers=int(target["num_hidden_layers"]),
        rms_norm_eps=1e-6,
        max_position_embeddings=2048,
    )
    fields.update(overrides)
    return DSparkConfig(**fields)


def write_copy_drafter(directory: Path, config: DSparkConfig) -> Path:
    """A DeepSpec drafter whose Markov head proposes the previous token again.

    W2 . W1[x] is large for y == x (random unit vectors in rank 256 are nearly
    orthogonal), so the block is the anchor repeated; the tiny random target
    often repeats tokens, so verify steps accept several drafts, reject some,
    and cover every path (full block, partial, none). The confidence head is
    biased high so the scheduler verifies whole blocks at low load.
    """
    from safetensors.torch import load_file, save_file

    write_synthetic_deepspec_checkpoint(directory, config, seed=0)
    weights = load_file(str(directory / "model.safetensors"))
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(config.vocab_size, config.markov_rank, generator=gen)
    u = u / u.norm(dim=1, keepdim=True)
    weights["markov_head.markov_w1.weight"] = 60.0 * u
    weights["markov_head.markov_w2.weight"] = u.clone()
    weights["confidence_head.proj.weight"].zero_()
    weights["confidence_head.proj.bias"].fill_(4.0)
    save_file(weights, str(directory / "model.safetensors"))
    return directory


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory) -> Path:
    return make_tiny_target(tmp_path_factory.mktemp("tiny-target"), seed=0)


@pytest.fixture(scope="session")
def copy_drafter(tmp_path_factory, tiny_target) -> Path:
    return write_copy_drafter(tmp_path_factory.mktemp("copy-drafter"), copy_drafter_config(tiny_target))


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def servers(tiny_target, copy_drafter, server_logs):
    """(plain, dspark) servers of the same target, started side by side."""
    plain = ServerProcess(cpu_serve_args(tiny_target), server_logs / "plain.log").start()
    spec = ServerProcess(
        [*cpu_serve_args(tiny_target), *dspark_args(copy_drafter), "--enable-metrics"],
        server_logs / "dspark.log",
    ).start()
    try:
        plain.wait_ready()
        spec.wait_ready()
        yield plain, spec
    finally:
        plain.stop()
        spec.stop()
