"""The MXFP4 weight format of DeepSeek-V4-Flash(-DSpark) routed experts.

Format (OCP Microscaling, MXFP4 element type with an E8M0 block scale):

* Elements are FP4 E2M1 (1 sign bit, 2 exponent bits with bias 1, 1 mantissa
  bit). Code ``c`` (0..15) decodes to ``E2M1_VALUES[c]``:
  ``0, 0.5, 1, 1.5, 2, 3, 4, 6`` for codes 0..7 and the same magnitudes negated
  for codes 8..15 (code 8 is -0).
* Two codes share a byte, stored as int8 (the checkpoint's dtype) or uint8:
  element ``2i`` of a row sits in the LOW nibble of byte ``i`` and element
  ``2i + 1`` in the HIGH nibble. A logical ``[..., K]`` tensor is stored as
  ``[..., K // 2]`` bytes.
* One scale per 32 consecutive elements along the last dimension, stored as an
  unsigned E8M0 exponent ``s`` (uint8 or ``torch.float8_e8m0fnu``, whose raw
  byte is the same) meaning ``2 ** (s - 127)``. A logical ``[..., K]`` tensor
  has ``[..., K // 32]`` scales. (``s = 255`` is NaN in E8M0; it is never
  produced here and decodes to ``inf``.)

Value of logical element ``k`` of a row:
``E2M1_VALUES[nibble(k)] * 2 ** (scale[k // 32] - 127)``.

Verified against DeepSeek's own V4 inference code: ``inference/convert.py`` of
the DeepSeek-V4-Flash release (read from the public mirror
``Mockingjay1316/deepseek-v4-flash-spark``, commit ``0825add`` "Replace
simlinks with actual files", whose first commit copies the DeepSeek V4
inference folder unchanged). Its ``FP4_TABLE`` is the table above and its
``cast_e2m1fn_to_e4m3fn`` decodes ``low = x & 0x0F`` as the even element and
``high = (x >> 4) & 0x0F`` as the odd one, with the int8 expert weights of
shape ``[out, in // 2]`` and ``float8_e8m0fnu`` scales of shape
``[out, in // 32]``; its ``model.py`` views the same int8 bytes as
``torch.float4_e2m1fn_x2`` for the FP4 GEMM, and ``kernel.py`` (``fp4_gemm``)
applies one weight scale per 32 elements along K. The same table, nibble order
and ``2 ** (s - 127)`` scale are in SGLang 0.5.23's
``srt/layers/quantization/mxfp4_tensor.py`` (``MXFP4QuantizeUtil``, from NVIDIA
ModelOpt), and SGLang's DeepSeek-V4 FlashInfer backend
(``mxfp4_flashinfer_cutlass_moe.py``) passes the checkpoint's bytes and E8M0
scale bytes to FlashInfer without re-encoding them.

Quantisation follows the OCP MX v1.0 rule: the block's shared exponent is
``floor(log2(amax)) - 2`` (2 = the largest E2M1 exponent), clamped to the E8M0
range ``[-127, 127]``; elements are divided by ``2**shared_exp``, rounded to
the nearest E2M1 value (ties to the even code) and saturated at +-6. Note that
this may clip the largest elements of a block (``amax / 2**shared_exp`` lies in
``[4, 8)``); DeepSeek's own activation quantiser uses ``ceil(log2(amax / 6))``
instead, which never clips but can waste half of the range.
"""

from __future__ import annotations

import torch

BLOCK_SIZE = 32
"""Elements per E8M0 scale."""

E8M0_BIAS = 127
E2M1_MAX = 6.0
E2M1_EMAX = 2
"""Exponent of the largest E2M1 normal (6 = 1.5 * 2**2), used by the OCP rule."""

E2M1_VALUES: tuple[float, ...] = (
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
    -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
)  # fmt: skip
"""Decoded value of each 4-bit E2M1 code."""

# Midpoints between consecutive E2M1 magnitudes and, for each, whether a tie
# rounds up (True when the upper neighbour has the even code).
_ROUND_BOUNDARIES: tuple[tuple[float, bool], ...] = (
    (0.25, False),
    (0.75, True),
    (1.25, False),
    (1.75, True),
    (2.5, False),
    (3.5, True),
    (5.0, False),
)


def _e2m1_table(device: torch.device) -> torch.Tensor:
    return torch.tensor(E2M1_VALUES, dtype=torch.float32, device=device)


def scales_to_exponents(scales: torch.Tensor) -> torch.Tensor:
    """Return the raw E8M0 bytes of ``scales`` as an int32 tensor of exponents ``s``.

    Accepts uint8 (raw bytes) or ``torch.float8_e8m0fnu``.
    """
    if scales.dtype == torch.float8_e8m0fnu:
        scales = scales.view(torch.uint8)
    if scales.dtype != torch.uint8:
        raise TypeError(f"MXFP4 scales must be uint8 or float8_e8m0fnu, got {scales.dtype}")
    return scales.to(torch.int32)


def scales_to_float(scales: torch.Tensor) -> torch.Tensor:
    """Decode E8M0 scales (uint8 or ``float8_e8m0fnu``) to float32 ``2 ** (s - 127)``."""
    exponents = scales_to_exponents(scales)
    return torch.exp2((exponents - E8M0_BIAS).to(torch.float32))


def _as_uint8(packed: torch.Tensor) -> torch.Tensor:
    if packed.dtype in (torch.int8, torch.uint8):
        return packed.view(torch.uint8)
    float4 = getattr(torch, "float4_e2m1fn_x2", None)
    if float4 is not None and packed.dtype == float4:
        return packed.view(torch.uint8)
    raise TypeError(f"packed MXFP4 data must be int8, uint8 or float4_e2m1fn_x2, got {packed.dtype}")


def pack_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """Pack E2M1 codes ``[..., K]`` (integers 0..15) into int8 bytes ``[..., K // 2]``.

    Element ``2i`` goes to the low nibble of byte ``i``, element ``2i + 1`` to the
    high nibble.
    """
    if codes.shape[-1] % 2:
        raise ValueError(f"last dimension must be even, got {codes.shape[-1]}")
    c = codes.to(torch.uint8) & 0x0F
    packed = c[..., 0::2] | (c[..., 1::2] << 4)
    return packed.view(torch.int8)


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    """Unpack bytes ``[..., K // 2]`` (int8/uint8) into E2M1 codes ``[..., K]`` (uint8, 0..15)."""
    b = _as_uint8(packed)
    low = b & 0x0F
    high = b >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)


def e2m1_to_float(codes: torch.Tensor) -> torch.Tensor:
    """Decode E2M1 codes (any integer dtype, values 0..15) to float32."""
    return _e2m1_table(codes.device)[codes.long()]


def dequantize(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Dequantise MXFP4 data to float32.

    Args:
        packed: ``[..., K // 2]`` int8/uint8 bytes (two E2M1 codes each).
        scales: ``[..., K // 32]`` E8M0 scales, uint8 or ``torch.float8_e8m0fnu``.

    Returns:
        ``[..., K]`` float32 values.
    """
    k = packed.shape[-1] * 2
    if k % BLOCK_SIZE:
        raise ValueError(f"logical last dimension {k} is not a multiple of {BLOCK_SIZE}")
    if scales.shape != (*packed.shape[:-1], k // BLOCK_SIZE):
        raise ValueError(
            f"scales shape {tuple(scales.shape)} does not match packed shape "
            f"{tuple(packed.shape)} (expected last dimension {k // BLOCK_SIZE})"
        )
    values = e2m1_to_float(unpack_e2m1(packed))
    scale = scales_to_float(scales)
    blocks = values.unflatten(-1, (k // BLOCK_SIZE, BLOCK_SIZE)) * scale.unsqueeze(-1)
    return blocks.flatten(-2)


def _round_to_e2m1_codes(scaled: torch.Tensor) -> torch.Tensor:
    """Round float32 values (already divided by the block scale) to E2M1 codes."""
    mag = scaled.abs()
    code = torch.zeros(scaled.shape, dtype=torch.uint8, device=scaled.device)
    for boundary, tie_rounds_up in _ROUND_BOUNDARIES:
        above = mag >= boundary if tie_rounds_up else mag > boundary
        code += above.to(torch.uint8)
    negative = (scaled < 0) & (code > 0)
    return code | (negative.to(torch.uint8) << 3)


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise ``x`` ``[..., K]`` (K a multiple of 32) to MXFP4 with the OCP MX rule.

    Returns:
        ``(packed, scales)``: ``[..., K // 2]`` int8 bytes and ``[..., K // 32]``
        uint8 E8M0 scales. An all-zero block gets ``s = 0``. Non-finite inputs are
        not supported.
    """
    k = x.shape[-1]
    if k % BLOCK_SIZE:
        raise ValueError(f"last dimension {k} is not a multiple of {BLOCK_SIZE}")
    blocks = x.detach().to(torch.float32).unflatten(-1, (k // BLOCK_SIZE, BLOCK_SIZE))
    amax = blocks.abs().amax(dim=-1)
    # frexp gives amax = m * 2**e with m in [0.5, 1), so floor(log2(amax)) = e - 1
    # exactly, without the rounding of log2 near powers of two.
    _, exp = torch.frexp(amax)
    shared = (exp.to(torch.int32) - 1 - E2M1_EMAX).clamp(-E8M0_BIAS, E8M0_BIAS)
    shared = torch.where(amax > 0, shared, torch.full_like(shared, -E8M0_BIAS))
    # 2**-shared spans [2**-127, 2**127], all exactly representable in float32.
    scaled = blocks * torch.exp2(-shared.to(torch.float32)).unsqueeze(-1)
    codes = _round_to_e2m1_codes(scaled).flatten(-2)
    scales = (shared + E8M0_BIAS).to(torch.uint8)
    return pack_e2m1(codes), scales
