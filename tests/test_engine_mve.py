"""The Helium (MVE) kernels on the emulated Cortex-M55, byte for byte against tflite-micro, on the shapes their
fast paths and tails are for.

tests/test_engine_isa.py's random models have few channels (up to 8 output channels, no same-shape ADD), so
they mostly reach the kernels' predicated tails. These models (``mve_model``) draw what the Helium paths
distinguish: input depths and output channels around multiples of 4, 8 and 16 (1, 3, 8, 13, 16, 24, 33),
1x1 convolutions without padding (the pixels are the rows) and with it or a stride (im2col), 3x3 convolutions
with SAME/VALID padding, strides 1 and 2 and dilation 2, depthwise convolutions (eight channels a pass, two
pixels when the windows below have the same taps; multiplier 2 falls back to the portable kernel), and residual
ADD/SUB of two activations of one shape; then random_models' head (FULLY_CONNECTED, SOFTMAX and a supervisor).

More models locally: BISUP_MVE_MODELS=200 (BISUP_MVE_SEED picks the first seed).
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from random_models import OP, _head, _Model, s
from test_engine import run_tflm

from bisup.hil import model_run

pytestmark = [pytest.mark.slow, pytest.mark.toolchain,
              pytest.mark.skipif(not (shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc")),
                                 reason="qemu-system-arm and arm-none-eabi-gcc are needed (CI installs them)")]

MODELS = int(os.environ.get("BISUP_MVE_MODELS", "24"))
SEED = int(os.environ.get("BISUP_MVE_SEED", "0"))
BATCH = 12  # models per firmware: the M55's code half (256 KB) bounds it
INPUTS = 6
DEPTHS = (1, 3, 8, 13, 16, 24, 33)


def _conv(m: _Model, x: int, depthwise: bool, size: int, stride: int, padding: int, dilation: int,
          channels: int, multiplier: int = 1) -> int:
    _, h, w, c = m.shape(x)
    eff = (size - 1) * dilation + 1
    if depthwise:
        oc = c * multiplier
        wt, b = m.weights([1, size, size, oc], 3 if m.rng.random() < 0.8 else None, m.scale(x), oc)
    else:
        oc = channels
        wt, b = m.weights([oc, size, size, c], 0 if m.rng.random() < 0.8 else None, m.scale(x), oc)
    out_h = (h + stride - 1) // stride if padding == s.Padding.SAME else (h - eff + stride) // stride
    out_w = (w + stride - 1) // stride if padding == s.Padding.SAME else (w - eff + stride) // stride
    y = m.activation([1, out_h, out_w, oc])
    if depthwise:
        o = s.DepthwiseConv2DOptionsT()
        o.depthMultiplier = multiplier
        code, kind = OP.DEPTHWISE_CONV_2D, s.BuiltinOptions.DepthwiseConv2DOptions
    else:
        o = s.Conv2DOptionsT()
        code, kind = OP.CONV_2D, s.BuiltinOptions.Conv2DOptions
    o.padding, o.strideW, o.strideH = padding, stride, stride
    o.dilationWFactor = o.dilationHFactor = dilation
    o.fusedActivationFunction = m.activation_code()
    m.op(code, [x, wt, b], [y], kind, o)
    return y


def _step(m: _Model, x: int) -> int:
    rng = m.rng
    _, h, w, c = m.shape(x)
    kind = rng.choice(["pointwise", "conv", "depthwise", "residual"])
    same, valid = s.Padding.SAME, s.Padding.VALID
    if kind == "pointwise":  # 1x1: the direct path without padding at stride 1, im2col otherwise
        stride = int(rng.choice([1, 1, 2]))
        return _conv(m, x, False, 1, stride, valid if rng.random() < 0.8 else same, 1, int(rng.choice(DEPTHS)))
    if kind == "residual":  # x + f(x) or x - f(x), one shape: the Helium ADD/SUB
        y = _conv(m, x, rng.random() < 0.5, 3 if min(h, w) >= 3 else 1, 1, same, 1, c)
        out = m.activation([1, h, w, c])
        code, options = (OP.ADD, s.AddOptionsT()) if rng.random() < 0.6 else (OP.SUB, s.SubOptionsT())
        options.fusedActivationFunction = m.activation_code()
        m.op(code, [x, y] if rng.random() < 0.5 else [y, x], [out],
             s.BuiltinOptions.AddOptions if code == OP.ADD else s.BuiltinOptions.SubOptions, options)
        return out
    size = 3 if min(h, w) >= 3 else 1
    dilation = 2 if rng.random() < 0.2 and min(h, w) >= 5 and size == 3 else 1
    stride, padding = int(rng.integers(1, 3)), same if rng.random() < 0.7 else valid
    if padding == valid and min(h, w) < (size - 1) * dilation + 1:
        padding = same
    if kind == "depthwise":
        return _conv(m, x, True, size, stride, padding, dilation, c, 2 if rng.random() < 0.15 else 1)
    return _conv(m, x, False, size, stride, padding, dilation, int(rng.choice(DEPTHS)))


def mve_model(seed: int) -> tuple[bytes, tuple[int, ...]]:
    """A model of 1 to 3 Helium-shaped layers and random_models' head, and its input shape."""
    m = _Model(np.random.default_rng(seed))
    rng = m.rng
    shape = [1, int(rng.integers(3, 11)), int(rng.integers(3, 11)), int(rng.choice(DEPTHS))]
    x = inp = m.activation(shape)
    for _ in range(int(rng.integers(1, 4))):
        x = _step(m, x)
    return _head(m, inp, x, beta=1.0), tuple(shape)


def test_helium_shaped_models_are_byte_equal_to_tflm_on_the_m55():
    cases = []
    for seed in range(SEED, SEED + MODELS):
        model, shape = mve_model(seed)
        x_q = np.random.default_rng(seed).integers(-128, 128, size=(INPUTS, *shape[1:]), dtype=np.int8)
        cases.append((seed, model, x_q, run_tflm(model, x_q)))
    for start in range(0, len(cases), BATCH):
        batch = cases[start:start + BATCH]
        runs = model_run.run_many([(model, x_q) for _, model, x_q, _ in batch], "mps3-an547")
        for (seed, _, _, (scores, confidence)), got in zip(batch, runs, strict=True):
            assert got.kernel_set == "mve", got.features
            differ = np.any(got.scores != scores, axis=1) | (got.confidence != confidence)
            assert not differ.any(), f"seed {seed}: inputs {np.flatnonzero(differ).tolist()} differ"
