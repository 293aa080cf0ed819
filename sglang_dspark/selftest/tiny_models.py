"""The tiny target and drafter the draft-verify and trainer checks run, made on the spot.

The same fixtures as the test suite (tests/conftest.py): the random Llama
target of :mod:`sglang_dspark.train.tiny_target` (hidden 64, 4 layers, byte
vocabulary of 260) and the copy drafter of :mod:`sglang_dspark.copy_drafter`,
whose blocks repeat the anchor, which the tiny target often does too, so
verify steps accept whole blocks, parts of blocks and nothing. Both need
``transformers`` (SGLang depends on it).
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


@dataclass(frozen=True)
class TinyModels:
    """Where the tiny target and its copy drafter were written."""

    target_dir: Path
    drafter_dir: Path


def transformers_missing() -> str | None:
    """Why the tiny models cannot be built here, or ``None``."""
    if importlib.util.find_spec("transformers") is None:
        return "transformers is not installed (the tiny target is a transformers Llama)"
    return None


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bars or info logs from transformers inside the block."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def make_tiny_models(work_dir: Path, seed: int) -> TinyModels:
    """Write the tiny target and its copy drafter under ``work_dir``."""
    from sglang_dspark.copy_drafter import copy_drafter_config, write_copy_drafter
    from sglang_dspark.train.tiny_target import make_tiny_target

    with quiet_transformers():
        target = make_tiny_target(Path(work_dir) / "tiny-target", seed=seed)
        drafter = write_copy_drafter(Path(work_dir) / "copy-drafter", copy_drafter_config(target))
    return TinyModels(target_dir=target, drafter_dir=drafter)
