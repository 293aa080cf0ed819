"""One torch intra-op thread for tests of tiny models."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Tiny matmuls on a shared 2-core box: intra-op threads only add contention,
    and the determinism tests need the same thread count in every run."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
