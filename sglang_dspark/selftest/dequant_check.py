"""MXFP4 dequantisation against a decoder written from the format's bit definitions.

:func:`sglang_dspark.moe.mxfp4.dequantize` is what the pure-torch MoE reference
and the dequantise-then-GEMM baseline use. Here it runs on the device under
test and must equal, bit for bit, :func:`decode_from_bits`, which follows the
OCP MX definition directly instead of the module's lookup table: byte ``i``
holds element ``2i`` in its low nibble and ``2i + 1`` in its high nibble; a
nibble is sign (bit 3), exponent (bits 1-2, bias 1) and mantissa (bit 0),
subnormal when the exponent is 0; the E8M0 byte ``s`` of each 32 elements
scales them by ``2**(s - 127)``.
"""

from __future__ import annotations

import torch

from sglang_dspark.moe import mxfp4
from sglang_dspark.selftest.moe_cases import ExpertWeights
from sglang_dspark.selftest.results import CheckResult, Status

CHECK = "mxfp4 dequant"
# E8M0 exponents of the code sweep: the subnormal 2**-127, both ends of the
# weights' range and beyond; 255 (NaN) is never produced.
SWEEP_EXPONENTS = (0, 1, 100, 118, 122, 127, 137, 200)


def e2m1_from_bits(nibble: torch.Tensor) -> torch.Tensor:
    """E2M1 codes (int32, 0..15) to float32 from their sign, exponent and mantissa bits."""
    sign = 1.0 - 2.0 * ((nibble >> 3) & 1).to(torch.float32)
    exponent = (nibble >> 1) & 3
    mantissa = (nibble & 1).to(torch.float32)
    normal = torch.ldexp(1.0 + mantissa / 2, exponent - 1)
    return sign * torch.where(exponent == 0, mantissa / 2, normal)


def decode_from_bits(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Decode ``[..., K/2]`` packed bytes with ``[..., K/32]`` E8M0 scales to float32 ``[..., K]``."""
    # Each byte value's (even, odd) pair, then one gather per byte: a tenth of the
    # time of decoding every nibble, which matters on CPU.
    byte = torch.arange(256, dtype=torch.int32, device=packed.device)
    pairs = torch.stack((e2m1_from_bits(byte & 0xF), e2m1_from_bits(byte >> 4)), dim=-1)
    raw = packed.contiguous().view(torch.uint8)
    values = pairs.index_select(0, raw.reshape(-1).to(torch.int32)).reshape(*raw.shape[:-1], -1)
    # 2**(s - 127) built as float32 bits: exponent field s, or the subnormal 2**-127 for s = 0.
    s = scales.contiguous().view(torch.uint8).to(torch.int32)
    scale = torch.where(s == 0, torch.full_like(s, 0x00400000), s << 23).view(torch.float32)
    return (values.unflatten(-1, (-1, 32)) * scale.unsqueeze(-1)).flatten(-2)


def _compare(got: torch.Tensor, want: torch.Tensor) -> tuple[int, float, str]:
    """(values that differ, max |diff| / max |want|, where the first differs)."""
    differ = got != want
    count = int(differ.sum())
    if count == 0:
        return 0, 0.0, ""
    scale = float(want.abs().max()) or 1.0
    error = float((got - want).abs().max()) / scale
    first = tuple(int(i) for i in differ.nonzero()[0])
    return count, error, f"first at index {first}: {float(got[first]):.6g}, bits say {float(want[first]):.6g}"


def check_code_sweep(device: str) -> CheckResult:
    """Every byte value under each of :data:`SWEEP_EXPONENTS`, exactly."""
    byte = torch.arange(256, dtype=torch.int32, device=device).to(torch.uint8)
    rows = len(SWEEP_EXPONENTS)
    packed = byte.repeat(rows, 1).view(torch.int8)  # [rows, 256] bytes = 512 elements
    scales = torch.tensor(SWEEP_EXPONENTS, dtype=torch.uint8, device=device)[:, None].repeat(1, 16)
    count, error, where = _compare(mxfp4.dequantize(packed, scales), decode_from_bits(packed, scales))
    case = f"256 bytes x {rows} scales"
    if count:
        return CheckResult(CHECK, case, Status.FAIL, error=error, bound=0.0, note=f"{count} values differ; {where}")
    return CheckResult(CHECK, case, Status.PASS, error=0.0, bound=0.0)


def check_experts(weights: ExpertWeights, experts: list[int], case: str, tokens: int) -> CheckResult:
    """The gate/up and down weights of ``experts``, exactly."""
    total = 0
    worst = 0.0
    first = ""
    for e in experts:
        for packed, scales, name in ((weights.w13, weights.w13_scale, "w13"), (weights.w2, weights.w2_scale, "w2")):
            count, error, where = _compare(mxfp4.dequantize(packed[e], scales[e]), decode_from_bits(packed[e], scales[e]))
            total += count
            worst = max(worst, error)
            if count and not first:
                first = f"expert {e} {name} {where}"
    if total:
        return CheckResult(CHECK, case, Status.FAIL, error=worst, bound=0.0, tokens=tokens,
                           note=f"{total} values differ; {first}")
    return CheckResult(CHECK, case, Status.PASS, error=0.0, bound=0.0, tokens=tokens)
