"""How a lowered op's parameters are written as C: constant arrays, designated-initializer structs, shapes, and
the DSP depthwise kernel's interleaved words. Kept apart from ``lowering`` (which decides *what* the values
are, as TFLite Micro computes them) because this is only *how* they are spelt for the kernels' headers.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from bisup.converters.engine.subgraph import EngineError


def c_array(ctype: str, name: str, values: ArrayLike) -> str:
    flat = [int(v) for v in np.asarray(values).ravel()]
    rows = [", ".join(str(v) for v in flat[i : i + 20]) for i in range(0, len(flat), 20)]
    body = ",\n  ".join(rows)
    return f"static const {ctype} {name}[{max(len(flat), 1)}] = {{\n  {body}\n}};"


def shape4(shape: tuple[int, ...], where: str) -> tuple[int, int, int, int]:
    if len(shape) > 4:
        raise EngineError(f"{where}: tensors of rank {len(shape)} are not supported (at most 4)")
    padded = (1,) * (4 - len(shape)) + tuple(shape)
    return tuple(int(d) for d in padded)  # type: ignore[return-value]


def shape_c(shape: tuple[int, ...], where: str) -> str:
    batches, height, width, depth = shape4(shape, where)
    return f"{{.batches = {batches}, .height = {height}, .width = {width}, .depth = {depth}}}"


def reduce_shape(outer: int, reduced: int, inner: int) -> str:
    return f"{{.outer = {outer}, .reduced = {reduced}, .inner = {inner}}}"


def wrap32(values: np.ndarray) -> np.ndarray:
    """int64 values wrapped to int32, as C's uint32 arithmetic wraps them."""
    return (np.asarray(values, dtype=np.int64) + (1 << 31)) % (1 << 32) - (1 << 31)


def dsp_3x3_blocks(taps: np.ndarray, interior_bias: np.ndarray, multipliers: list[tuple[int, int]]) -> np.ndarray:
    """The DSP 3 x 3 depthwise kernel's words (depthwise_conv_dsp.c), 36 per group of four channels 4g..4g+3:
    2 x interior_bias (4); per filter row, the doubled filter's (w0, w1) of each channel (4), then its (w2, w1) (4),
    as int16 pairs, low half first (24); then (multiplier, -shift - 1) per channel (8). The doubling is the
    requantization's (its SMMULR takes twice the sum); the lowering gives these only where every shift is a right
    shift and every doubled sum fits int32 (the kernel does not check it again)."""
    oc = taps.shape[1]
    groups = oc // 4
    doubled = (2 * taps[:, : groups * 4].astype(np.int64)) & 0xFFFF
    g = doubled.reshape(3, 3, groups, 4).transpose(2, 0, 1, 3)  # [group][row][column][4 channels]
    w01 = g[:, :, 0] | g[:, :, 1] << 16  # [group][row][4 channels]
    w21 = g[:, :, 2] | g[:, :, 1] << 16
    rows = np.concatenate([w01, w21], axis=2).reshape(groups, 24)
    bias2 = (2 * interior_bias[: groups * 4].astype(np.int64)).reshape(groups, 4)
    requant = np.array([[m, -s - 1] for m, s in multipliers[: groups * 4]], np.int64).reshape(groups, 8)
    return wrap32(np.concatenate([bias2, rows, requant], axis=1))


def struct(ctype: str, name: str, **fields: object) -> str:
    """A kernel's parameters as a C99 designated initializer: a field the kernels' header reorders or renames
    fails to compile instead of silently taking another field's value."""
    body = ", ".join(f".{key} = {value}" for key, value in fields.items())
    return f"static const {ctype} {name} = {{{body}}};"
