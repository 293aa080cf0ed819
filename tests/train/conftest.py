"""Shared fixtures for the trainer tests: a tiny random Llama target built on the fly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TINY_RECIPE = REPO / "recipes" / "tiny-drafter.json"


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    # Tiny matmuls on a shared 2-core machine: one intra-op thread, and the
    # determinism tests need the same thread count in every run anyway.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_target_dir(tmp_path_factory) -> Path:
    """A tiny random Llama target (byte tokenizer, vocabulary 260) on disk."""
    from sglang_dspark.train.tiny_target import make_tiny_target

    return make_tiny_target(tmp_path_factory.mktemp("tiny-target"), seed=0)
