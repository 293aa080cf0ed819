"""Full float32 matmul precision for the references and the tiny models."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def full_float32_matmuls() -> Iterator[None]:
    """IEEE float32 matmuls inside the block (no TF32), restored afterwards.

    A TF32 reference would carry about 1e-3 relative error of its own, and TF32
    logits would let near-ties of the tiny target differ between GPU and CPU.
    """
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)
