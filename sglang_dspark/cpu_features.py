"""What this CPU computes fast: detected at run time, never assumed (CPUs differ between machines)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpuinfo_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@functools.cache
def has_fast_bf16() -> bool:
    """True when this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16).

    On such CPUs a bf16 GEMM of an LM head's shape ran 4-7x faster than fp32
    (bench/RESULTS.md); on CPUs without them bf16 is emulated and slower.
    """
    if platform.system() == "Linux" and _cpuinfo_flags() & set(_BF16_FLAGS):
        return True
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and bool(check()) for check in checks)
