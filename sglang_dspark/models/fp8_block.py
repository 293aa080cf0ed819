"""FP8 e4m3 weights with 128x128 block scales (DeepSeek-V3/V4 linear layers).

A weight ``[out, in]`` is stored as ``float8_e4m3fn`` with one scale per
128x128 block, ``[ceil(out/128), ceil(in/128)]``; DeepSeek-V4 stores the scales
as ``float8_e8m0fnu`` (``scale_fmt: ue8m0``, powers of two), V3 as float32.
Value: ``weight[i, j] * scale[i // 128, j // 128]`` (as in DeepSeek's
``inference/kernel.py`` ``weight_dequant`` and SGLang's ``_dequant_fp8``).
"""

from __future__ import annotations

import torch

BLOCK = 128
E4M3_MAX = 448.0


def _blocks(n: int, block: int) -> int:
    return -(-n // block)


def dequantize_fp8_block(weight: torch.Tensor, scale: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """Dequantise an FP8 block-scaled weight to float32 ``[out, in]``.

    Args:
        weight: ``[out, in]`` ``float8_e4m3fn``.
        scale: ``[ceil(out/block), ceil(in/block)]``, ``float8_e8m0fnu`` or float32.
    """
    if weight.dtype != torch.float8_e4m3fn:
        raise TypeError(f"FP8 block weight must be float8_e4m3fn, got {weight.dtype}")
    out, inp = weight.shape
    want = (_blocks(out, block), _blocks(inp, block))
    if tuple(scale.shape) != want:
        raise ValueError(f"scale shape {tuple(scale.shape)} does not match weight {tuple(weight.shape)} (want {want})")
    s = scale.to(torch.float32)
    s = s.repeat_interleave(block, 0)[:out].repeat_interleave(block, 1)[:, :inp]
    return weight.to(torch.float32) * s


def quantize_fp8_block(x: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise float ``[out, in]`` to (``float8_e4m3fn`` weight, ``float8_e8m0fnu`` block scales).

    Scales are the smallest powers of two with ``amax / scale <= 448`` (ue8m0),
    so :func:`dequantize_fp8_block` is within e4m3 rounding of ``x``.
    """
    out, inp = x.shape
    x = x.detach().to(torch.float32)
    pad = torch.zeros(_blocks(out, block) * block, _blocks(inp, block) * block)
    pad[:out, :inp] = x
    tiles = pad.unflatten(0, (-1, block)).unflatten(2, (-1, block))  # [bo, block, bi, block]
    amax = tiles.abs().amax(dim=(1, 3)).clamp_min(2.0**-126)
    scale = torch.exp2(torch.ceil(torch.log2(amax / E4M3_MAX)))
    s = scale.repeat_interleave(block, 0)[:out].repeat_interleave(block, 1)[:, :inp]
    weight = (x / s).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return weight, scale.to(torch.float8_e8m0fnu)
