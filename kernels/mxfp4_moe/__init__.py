"""Fused MoE over MXFP4 expert weights (Triton, W4A16) and its pure-torch reference.

``reference`` depends on torch only; ``kernel`` and ``align`` need Triton and are
imported on first use so that the reference works without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .reference import fused_moe_mxfp4_reference, moe_align_block_size_reference

if TYPE_CHECKING:
    from .align import AlignedPairs, moe_align_block_size
    from .kernel import MoeConfig, default_config, fused_moe_mxfp4

__all__ = [
    "AlignedPairs",
    "MoeConfig",
    "default_config",
    "fused_moe_mxfp4",
    "fused_moe_mxfp4_reference",
    "moe_align_block_size",
    "moe_align_block_size_reference",
]

_LAZY = {
    "AlignedPairs": "align",
    "moe_align_block_size": "align",
    "MoeConfig": "kernel",
    "default_config": "kernel",
    "fused_moe_mxfp4": "kernel",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
