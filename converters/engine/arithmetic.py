"""TFLM's parameter arithmetic, reproduced exactly: the helpers its kernels' Prepare functions use.

Every multiplier, shift, activation bound and padding in the generated C comes from these, so they round as
TFLM rounds (std::round, float32 divisions where TFLM divides in float32): a bit off anywhere and the outputs
are no longer byte-equal to the tflite-micro interpreter's.
"""

from __future__ import annotations

import math

import numpy as np
from ai_edge_litert import schema_py_generated as schema

INT8_MIN, INT8_MAX = -128, 127


def tflm_round(x: float) -> int:
    """std::round: half away from zero."""
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLM's QuantizeMultiplier: a Q0.31 significand and a power-of-two shift (positive: left)."""
    if real == 0.0:
        return 0, 0
    significand, shift = math.frexp(real)
    fixed = tflm_round(significand * (1 << 31))
    if fixed == 1 << 31:
        fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return fixed, shift


def activation_range(code: int, scale: float, zero_point: int) -> tuple[int, int]:
    """CalculateActivationRangeQuantized for int8: the bound divided in float32, then std::round."""
    def q(x: float) -> int:
        return zero_point + tflm_round(float(np.float32(x) / np.float32(scale)))

    if code == 0:
        return INT8_MIN, INT8_MAX
    if code == 1:
        return max(INT8_MIN, q(0.0)), INT8_MAX
    if code == 3:
        return max(INT8_MIN, q(0.0)), min(INT8_MAX, q(6.0))
    if code == 2:
        return max(INT8_MIN, q(-1.0)), min(INT8_MAX, q(1.0))
    raise ValueError(code)


def input_radius(integer_bits: int, left_shift: int) -> int:
    """CalculateInputRadius: the largest input difference the fixed-point path represents (31 total bits)."""
    return math.floor(((1 << integer_bits) - 1) * (1 << (31 - integer_bits)) * 2.0 ** -left_shift)


def same_or_valid(padding: int, stride: int, dilation: int, size: int, filter_size: int) -> tuple[int, int]:
    """ComputePaddingHeightWidth for one axis: (output size, padding before)."""
    effective = (filter_size - 1) * dilation + 1
    out = (size + stride - 1) // stride if padding == schema.Padding.SAME else (size - effective + stride) // stride
    pad = max(0, ((out - 1) * stride + effective - size) // 2) if padding == schema.Padding.SAME else 0
    return out, pad
