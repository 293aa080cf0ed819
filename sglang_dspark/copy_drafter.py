"""A DeepSpec drafter that proposes the previous token again (tests and smoke benchmarks).

Built from a synthetic checkpoint of the right layout for a given target, so
a real DSPARK server can be started in seconds without training anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sglang_dspark.algorithm.config import DSparkConfig
from sglang_dspark.models.synthetic import write_synthetic_deepspec_checkpoint

__all__ = ["COPY_DRAFTER_BLOCK_SIZE", "copy_drafter_config", "write_copy_drafter"]

COPY_DRAFTER_BLOCK_SIZE = 4


def copy_drafter_config(target_dir: Path, **overrides) -> DSparkConfig:
    """A one-layer Llama-backbone drafter config matching the target in ``target_dir``."""
    target = json.loads((Path(target_dir) / "config.json").read_text())
    fields = dict(
        block_size=COPY_DRAFTER_BLOCK_SIZE,
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


def write_copy_drafter(directory: Path, config: DSparkConfig, *, confidence_spread: float = 0.0) -> Path:
    """Write a DeepSpec drafter whose Markov head proposes the previous token again.

    W2 . W1[x] is large for y == x (random unit vectors in rank 256 are nearly
    orthogonal), so the block is the anchor repeated; the tiny random target
    often repeats tokens, so verify steps accept several drafts, reject some,
    and cover every path (full block, partial, none). The confidence head is
    biased high so the scheduler verifies whole blocks at low load;
    ``confidence_spread > 0`` adds a random dependence on the drafter's hidden
    state (logit standard deviation about ``confidence_spread``), so requests
    get different confidences and the scheduler gives them different lengths.
    """
    from safetensors.torch import load_file, save_file

    directory = Path(directory)
    write_synthetic_deepspec_checkpoint(directory, config, seed=0)
    weights = load_file(str(directory / "model.safetensors"))
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(config.vocab_size, config.markov_rank, generator=gen)
    u = u / u.norm(dim=1, keepdim=True)
    weights["markov_head.markov_w1.weight"] = 60.0 * u
    # With a draft vocabulary (its first rows, see write_synthetic_deepspec_checkpoint) only
    # those tokens can be copied.
    weights["markov_head.markov_w2.weight"] = u[: config.output_vocab_size].clone()
    proj = weights["confidence_head.proj.weight"].zero_()
    if confidence_spread > 0:
        h = config.hidden_size
        proj[:, :h] = torch.randn(1, h, generator=gen) * (confidence_spread / h**0.5)
    weights["confidence_head.proj.bias"].fill_(4.0)
    save_file(weights, str(directory / "model.safetensors"))
    return directory
