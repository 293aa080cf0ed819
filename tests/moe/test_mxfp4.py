"""MXFP4 format: nibble order, E2M1 table, E8M0 scales, OCP quantisation."""

from __future__ import annotations

import math

import pytest
import torch

from sglang_dspark.moe import mxfp4

# Written out by hand from the E2M1 definition (sign, 2-bit exponent with bias 1,
# 1-bit mantissa), not from the module's table.
HAND_E2M1 = {
    0b0000: 0.0, 0b0001: 0.5, 0b0010: 1.0, 0b0011: 1.5,
    0b0100: 2.0, 0b0101: 3.0, 0b0110: 4.0, 0b0111: 6.0,
    0b1000: -0.0, 0b1001: -0.5, 0b1010: -1.0, 0b1011: -1.5,
    0b1100: -2.0, 0b1101: -3.0, 0b1110: -4.0, 0b1111: -6.0,
}  # fmt: skip


def test_pack_unpack_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (3, 5, 64), generator=g, dtype=torch.uint8)
    packed = mxfp4.pack_e2m1(codes)
    assert packed.dtype == torch.int8 and packed.shape == (3, 5, 32)
    assert torch.equal(mxfp4.unpack_e2m1(packed), codes)
    assert torch.equal(mxfp4.unpack_e2m1(packed.view(torch.uint8)), codes)
    assert torch.equal(mxfp4.pack_e2m1(mxfp4.unpack_e2m1(packed)), packed)


def test_even_element_is_low_nibble() -> None:
    packed = torch.tensor([[0x71] + [0] * 15], dtype=torch.uint8).view(torch.int8)  # low 1 -> 0.5, high 7 -> 6
    assert mxfp4.unpack_e2m1(packed)[0, :2].tolist() == [1, 7]
    values = mxfp4.dequantize(packed, torch.tensor([[127]], dtype=torch.uint8))
    assert values[0, :2].tolist() == [0.5, 6.0]
    assert mxfp4.pack_e2m1(torch.tensor([1, 7], dtype=torch.uint8)).view(torch.uint8).item() == 0x71


@pytest.mark.parametrize("scale_dtype", [torch.uint8, torch.float8_e8m0fnu])
@pytest.mark.parametrize("exponent", [0, 1, 117, 126, 127, 128, 137, 200])
def test_dequantize_every_code_and_scale(exponent: int, scale_dtype: torch.dtype) -> None:
    codes = torch.arange(16, dtype=torch.uint8).repeat(2)  # one block of 32
    scales = torch.tensor([exponent], dtype=torch.uint8).view(scale_dtype)
    got = mxfp4.dequantize(mxfp4.pack_e2m1(codes), scales)
    expected = [HAND_E2M1[c] * 2.0 ** (exponent - 127) for c in codes.tolist()]
    assert got.dtype == torch.float32
    assert got.tolist() == expected
    assert [math.copysign(1.0, v) for v in got.tolist()] == [math.copysign(1.0, v) for v in expected]


def test_scales_named_in_the_spec() -> None:
    for value, exponent in [(2.0**-10, 117), (1.0, 127), (2.0**10, 137)]:
        assert torch.tensor([value]).to(torch.float8_e8m0fnu).view(torch.uint8).item() == exponent
        assert mxfp4.scales_to_float(torch.tensor([exponent], dtype=torch.uint8)).item() == value


def test_dequantize_rejects_mismatched_scales() -> None:
    with pytest.raises(ValueError):
        mxfp4.dequantize(torch.zeros(2, 32, dtype=torch.int8), torch.zeros(2, 3, dtype=torch.uint8))
    with pytest.raises(TypeError):
        mxfp4.dequantize(torch.zeros(2, 16, dtype=torch.int8), torch.zeros(2, 1, dtype=torch.float32))


def test_quantize_shared_exponent_follows_ocp_rule() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 128, generator=g) * torch.exp2(torch.randint(-20, 20, (64, 1), generator=g).float())
    x[3, :32] = 0.0
    packed, scales = mxfp4.quantize(x)
    assert packed.shape == (64, 64) and packed.dtype == torch.int8
    assert scales.shape == (64, 4) and scales.dtype == torch.uint8
    amax = x.unflatten(-1, (4, 32)).abs().amax(-1).double()
    expected = torch.where(amax > 0, torch.floor(torch.log2(amax)) - 2 + 127, torch.zeros_like(amax))
    assert torch.equal(scales.long(), expected.long())
    assert scales[3, 0].item() == 0
    assert mxfp4.dequantize(packed, scales)[3, :32].abs().sum() == 0


def test_quantize_error_bound() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(32, 256, generator=g) * torch.exp2(torch.randint(-12, 12, (32, 1), generator=g).float())
    packed, scales = mxfp4.quantize(x)
    y = mxfp4.dequantize(packed, scales)
    step = mxfp4.scales_to_float(scales).repeat_interleave(32, dim=-1)  # 2**shared_exp per element
    mag = x.abs() / step
    # Half the gap to the next E2M1 value, or the clipping error above 6.
    half_gap = torch.where(mag < 2, 0.25, torch.where(mag < 4, 0.5, 1.0))
    bound = torch.where(mag <= 6, half_gap, mag - 6) * step
    assert ((x - y).abs() <= bound).all()
    assert ((x - y).abs() <= 2 * step).all()


def test_quantize_rounds_ties_to_even_and_saturates() -> None:
    block = torch.zeros(32)
    inputs = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 4.0, -0.75, -5.0, 7.5, 0.1, -0.1]
    block[: len(inputs)] = torch.tensor(inputs)
    packed, scales = mxfp4.quantize(block)
    assert scales.tolist() == [127]  # amax 7.5 -> floor(log2) = 2 -> shared exponent 0
    got = mxfp4.dequantize(packed, scales)[: len(inputs)].tolist()
    assert got == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 4.0, -1.0, -4.0, 6.0, 0.0, 0.0]


def test_quantize_is_idempotent_on_representable_values() -> None:
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 16, (8, 64), generator=g, dtype=torch.uint8)
    scales = torch.randint(100, 150, (8, 2), generator=g, dtype=torch.uint8)
    values = mxfp4.dequantize(mxfp4.pack_e2m1(codes), scales)
    assert torch.equal(mxfp4.dequantize(*mxfp4.quantize(values)), values)
