"""Shared fixtures for the trainer tests: a tiny random Llama target built on the fly."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.torch_threads import one_torch_thread

REPO = Path(__file__).resolve().parents[2]
TINY_RECIPE = REPO / "recipes" / "tiny-drafter.json"


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def tiny_target_dir(tiny_target) -> Path:
    """A tiny random Llama target (byte tokenizer, vocabulary 260) on disk: the session's ``tiny_target``."""
    return tiny_target
