"""Per-request reproducible randomness for drafting and verification.

A request that carries a sampling seed must produce the same tokens whatever
else shares its batch. A global ``torch.Generator`` cannot give that (its
stream is consumed by the whole batch), so seeded requests draw their
uniforms from a counter-based hash of ``(seed, position, stream, column)``:
the same request at the same sequence position always sees the same noise.

The hash is MurmurHash3's 32-bit finaliser applied in int64 arithmetic with
every intermediate masked to 32 bits, so it gives identical bits on every
device and never depends on signed-overflow behaviour.
"""

from __future__ import annotations

import torch

__all__ = ["DRAFT_STREAM", "PREFILL_STREAM", "VERIFY_STREAM", "seeded_uniforms", "uniforms_for_batch"]

#: Stream ids: drafting, verification and the prefill's token must not share noise.
DRAFT_STREAM = 1
VERIFY_STREAM = 2
PREFILL_STREAM = 3

_MASK = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _fmix32(x: torch.Tensor) -> torch.Tensor:
    x = x & _MASK
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _MASK
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _MASK
    return x ^ (x >> 16)


def seeded_uniforms(
    seeds: torch.Tensor, positions: torch.Tensor, stream: int, cols: int
) -> torch.Tensor:
    """Uniforms in ``(0, 1)`` determined by each row's seed and position.

    Args:
        seeds: ``int64[B]`` per-request seeds (any int64 value).
        positions: ``int64[B]`` sequence position of the step (the committed
            length), so that every step of a request gets fresh noise.
        stream: which consumer draws (``DRAFT_STREAM`` or ``VERIFY_STREAM``).
        cols: uniforms per row.

    Returns:
        ``float64[B, cols]``.
    """
    seeds = seeds.to(torch.int64)
    positions = positions.to(device=seeds.device, dtype=torch.int64)
    h = _fmix32(seeds)
    h = _fmix32(h ^ ((seeds >> 32) & _MASK))
    h = _fmix32(h ^ (positions & _MASK))
    h = _fmix32(h ^ ((positions >> 32) & _MASK) ^ (stream * _GOLDEN))
    col = torch.arange(1, cols + 1, device=seeds.device, dtype=torch.int64)
    bits = _fmix32(h[:, None] ^ ((col * _GOLDEN) & _MASK)[None, :])
    return (bits.to(torch.float64) + 0.5) / float(1 << 32)


def uniforms_for_batch(
    seeds: list[int | None],
    positions: torch.Tensor,
    stream: int,
    cols: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``float64[B, cols]``: seeded rows from :func:`seeded_uniforms`, others from ``generator``."""
    device = positions.device
    out = torch.rand((len(seeds), cols), generator=generator, device=device, dtype=torch.float64)
    rows = [i for i, s in enumerate(seeds) if s is not None]
    if rows:
        index = torch.tensor(rows, device=device)
        seeded = torch.tensor([seeds[i] for i in rows], dtype=torch.int64, device=device)
        out[index] = seeded_uniforms(seeded, positions[index], stream, cols)
    return out
