"""CONV_2D and FULLY_CONNECTED shapes that the random models (tests/random_models.py) seldom or never draw,
one for each path of the kernels (conv.c, conv_dsp.c, fully_connected*.c), byte for byte against tflite-micro:
1x1 convolutions on the input directly (odd depths, a k not a multiple of 4, odd channel and pixel counts,
strides), the first layers' 1 and 3 input channels (a 10x4 filter, 3x3 with stride 2), im2col columns of a k
not a multiple of 4 that the DSP kernel rounds up to one (3 and 5 input channels), columns widened straight from
the input (depth a multiple of 4, with and without dilation, batch 2), columns too long for the
DSP's widened scratch (the int8 SMLAD product) and for the im2col scratch (the direct loop), per-tensor and
per-channel scales, and fully connected layers over several batch rows.

On the host (gcc, UBSan) the portable kernels run; on the emulated Cortex-M4/M7/M33 (``bisup.hil.model_run``) the
DSP ones, which only run there.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as s
from board_harness import C_DIR, run_harness
from random_models import INT32, OP, _Model
from test_engine import HARNESS, KERNELS, WARNINGS, run_c

from bisup.converters import engine

pytestmark = [pytest.mark.slow, pytest.mark.toolchain]

INPUTS = 6
# name: (batch, height, width, depth, output channels, filter h, filter w, stride, SAME?, dilation, per channel)
CASES = {
    "1x1-odd": (1, 5, 7, 5, 7, 1, 1, 1, False, 1, True),
    "1x1-stride2": (1, 7, 6, 12, 6, 1, 1, 2, False, 1, False),
    "1x1-deep": (1, 3, 3, 800, 3, 1, 1, 1, True, 1, True),  # k > the DSP's widened column: int8 SMLAD
    "kws-first": (1, 13, 7, 1, 6, 10, 4, 2, True, 1, True),  # 1 input channel, a 10x4 filter
    "rgb-3x3-s2": (1, 9, 8, 3, 5, 3, 3, 2, True, 1, False),  # 3 input channels, per tensor
    "3x3-depth8-batch2": (2, 5, 6, 8, 9, 3, 3, 1, True, 1, True),  # widened from the input, two batches
    "3x3-dilated": (1, 7, 7, 4, 4, 3, 3, 1, True, 2, True),
    "5x2-valid": (1, 6, 5, 6, 3, 5, 2, 1, False, 1, True),
    "3x3-k864": (1, 4, 4, 96, 3, 3, 3, 1, True, 1, True),  # 864: int8 im2col + SMLAD on the DSP
    "3x3-k1224": (1, 3, 3, 136, 2, 3, 3, 1, True, 1, False),  # beyond the im2col scratch: the direct loop
    "vww-first": (1, 12, 11, 3, 8, 3, 3, 2, True, 1, True),  # k = 27 rounded up to 28: three pixels at a time
    "3x3-depth5": (1, 6, 5, 5, 6, 3, 3, 1, True, 1, False),  # k = 45 rounded up to 48, windows inside the input
    # six pixels at a time (whole int8 activation range): an odd group count (values doubled: 5 x 10 channels > 3 k)
    # and 35 pixels (a rest of 5), an even one (not doubled)
    "1x1-six-odd": (1, 5, 7, 12, 10, 1, 1, 1, False, 1, True),
    "1x1-six-even": (1, 4, 5, 16, 9, 1, 1, 1, False, 1, True),
    "rgb-3x3-s2-six": (1, 13, 12, 3, 8, 3, 3, 2, True, 1, True),  # k = 27 rounded up to 28, 42 pixels
    "1x1-six-doubled": (1, 4, 5, 16, 10, 1, 1, 1, False, 1, True),  # 5 x 10 channels > 3 k: values doubled
    "rgb-3x3-s2-rows": (1, 14, 26, 3, 8, 3, 3, 2, True, 1, False),  # six windows of one row inside the input at once
}


def conv_model(batch: int, h: int, w: int, c: int, oc: int, fh: int, fw: int, stride: int, same: bool,
               dilation: int, per_channel: bool, seed: int) -> bytes:
    """input -> CONV_2D -> RESHAPE [3, n / 3] -> FULLY_CONNECTED over 3 batch rows -> RESHAPE -> FULLY_CONNECTED
    -> SOFTMAX ("scores") and REDUCE_MAX ("confidence")."""
    m = _Model(np.random.default_rng(seed))
    x = m.activation([batch, h, w, c])
    wt, b = m.weights([oc, fh, fw, c], 0 if per_channel else None, m.scale(x), oc)
    eh, ew = (fh - 1) * dilation + 1, (fw - 1) * dilation + 1
    out_h = (h + stride - 1) // stride if same else (h - eh + stride) // stride
    out_w = (w + stride - 1) // stride if same else (w - ew + stride) // stride
    y = m.activation([batch, out_h, out_w, oc])
    o = s.Conv2DOptionsT()
    o.padding, o.strideW, o.strideH = s.Padding.SAME if same else s.Padding.VALID, stride, stride
    o.dilationWFactor = o.dilationHFactor = dilation
    o.fusedActivationFunction = m.activation_code()
    m.op(OP.CONV_2D, [x, wt, b], [y], s.BuiltinOptions.Conv2DOptions, o)
    flat = batch * out_h * out_w * oc
    rows = 3 if flat % 3 == 0 else 1
    y = _reshape(m, y, [rows, flat // rows])
    fc_w, fc_b = m.weights([5, flat // rows], 0 if per_channel else None, m.scale(y), 5)
    hidden = m.activation([rows, 5])
    _fully_connected(m, y, fc_w, fc_b, hidden)
    hidden = _reshape(m, hidden, [1, rows * 5])
    w2, b2 = m.weights([4, rows * 5], None, m.scale(hidden), 4)
    logits = m.activation([1, 4])
    _fully_connected(m, hidden, w2, b2, logits)
    probs = m.tensor([1, 4], 1 / 256, -128)
    softmax = s.SoftmaxOptionsT()
    softmax.beta = 1.0
    m.op(OP.SOFTMAX, [logits], [probs], s.BuiltinOptions.SoftmaxOptions, softmax)
    axis = m.tensor([1], 1.0, 0, INT32, np.array([-1], dtype=np.int32))
    reducer = s.ReducerOptionsT()
    reducer.keepDims = True
    confidence = m.tensor([1, 1], 1 / 256, -128)
    m.op(OP.REDUCE_MAX, [probs, axis], [confidence], s.BuiltinOptions.ReducerOptions, reducer)
    return m.finish([x], probs, confidence)


def _reshape(m: _Model, x: int, shape: list[int]) -> int:
    new_shape = m.tensor([len(shape)], 1.0, 0, INT32, np.array(shape, dtype=np.int32))
    y = m.tensor(shape, m.scale(x), m.tensors[x].quantization.zeroPoint[0])
    options = s.ReshapeOptionsT()
    options.newShape = shape
    m.op(OP.RESHAPE, [x, new_shape], [y], s.BuiltinOptions.ReshapeOptions, options)
    return y


def _fully_connected(m: _Model, x: int, w: int, b: int, y: int) -> None:
    options = s.FullyConnectedOptionsT()
    options.fusedActivationFunction = m.activation_code()
    m.op(OP.FULLY_CONNECTED, [x, w, b], [y], s.BuiltinOptions.FullyConnectedOptions, options)


def tflm(model: bytes, x_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """tflite-micro's outputs, one invocation per input (each of the model's full input shape)."""
    from tflite_micro.python.tflite_micro import runtime

    interpreter = runtime.Interpreter.from_bytes(model, arena_size=1 << 20)
    scores, confidence = [], []
    for sample in x_q:
        interpreter.set_input(sample, 0)
        interpreter.invoke()
        scores.append(np.array(interpreter.get_output(0)).reshape(-1))
        confidence.append(np.array(interpreter.get_output(1)).reshape(-1)[0])
    return np.stack(scores), np.array(confidence, dtype=np.int8)


@pytest.fixture(scope="module")
def cases() -> list[tuple[str, bytes, np.ndarray, tuple[np.ndarray, np.ndarray]]]:
    out = []
    for seed, (name, shape) in enumerate(CASES.items()):
        model = conv_model(*shape, seed=seed)
        rng = np.random.default_rng(100 + seed)
        x_q = rng.integers(-128, 128, size=(INPUTS, *shape[:3], shape[3]), dtype=np.int8)
        x_q[0] = 127  # the extremes, with the zero point's offset at its largest
        x_q[1] = -128
        out.append((name, model, x_q, tflm(model, x_q)))
    return out


def test_the_cases_reach_each_path(cases):
    """The shapes are the ones the module docstring names (a changed helper would silently test less)."""
    steps = {name: engine.generate(model).steps for name, model, _, _ in cases}
    for name in CASES:
        ops = [step.op for step in steps[name] if not step.alias]
        assert ops[:4] == ["CONV_2D", "FULLY_CONNECTED", "FULLY_CONNECTED", "SOFTMAX"], name
    # the six-pixel path (conv_dsp.c) wants the whole int8 range
    for name in ("1x1-six-odd", "1x1-six-even", "rgb-3x3-s2-six", "1x1-six-doubled", "rgb-3x3-s2-rows"):
        conv = [step for step in steps[name] if step.op == "CONV_2D"][0].definitions[-1]
        assert ".activation_min = -128" in conv and ".activation_max = 127" in conv, name
    deep = [step for step in steps["3x3-k1224"] if step.op == "CONV_2D"][0]
    assert ".filter_height = 3" in deep.definitions[-1] and ".depth = 136" in deep.definitions[-1]


def test_conv_shapes_are_byte_equal_to_tflm_on_the_host(cases, tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed (CI installs it)")
    for name, model, x_q, (scores, confidence) in cases:
        folder = tmp_path / name
        folder.mkdir()
        generated = engine.write(model, folder)
        exe = folder / "engine_harness"
        subprocess.run(["gcc", *WARNINGS, "-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                        f"-I{folder}", f"-I{KERNELS}", str(folder / "model_infer.c"),
                        *map(str, engine.kernel_sources()), str(HARNESS), "-o", str(exe)], check=True)
        got_scores, got_confidence = run_c(exe, x_q.reshape(len(x_q), -1), generated.classes)
        assert np.array_equal(got_scores, scores) and np.array_equal(got_confidence, confidence), name


@pytest.mark.skipif(not (shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc")),
                    reason="qemu-system-arm and arm-none-eabi-gcc are needed (CI installs them)")
@pytest.mark.parametrize("board", ["mps2-an386", "mps2-an500", "mps2-an505"])
def test_conv_shapes_are_byte_equal_to_tflm_with_the_dsp_kernels(cases, board):
    """The Cortex-M4, M7 and M33 builds, whose CONV_2D and FULLY_CONNECTED run conv_dsp.c."""
    from bisup.hil import model_run

    runs = model_run.run_many([(model, x_q.reshape(len(x_q), -1)) for _, model, x_q, _ in cases], board)
    for (name, _, _, (scores, confidence)), got in zip(cases, runs, strict=True):
        assert got.kernel_set == "dsp", board
        differ = np.any(got.scores != scores, axis=1) | (got.confidence != confidence)
        assert not differ.any(), f"{name} on {board}: inputs {np.flatnonzero(differ).tolist()} differ"


def test_a_kernel_change_would_be_seen(cases, tmp_path):
    """The comparison can fail: the same model with one filter sum off by one gives other bytes."""
    name, model, x_q, (scores, _) = cases[4]  # rgb-3x3-s2: padding, so the folded bias is used
    folder = tmp_path / "broken"
    folder.mkdir()
    generated = engine.write(model, folder)
    source = (folder / "model_infer.c").read_text()
    marker = "_folded_bias[5] = {\n  "
    assert marker in source, "the generated folded bias of the 5-channel convolution"
    start = source.index(marker) + len(marker)
    end = source.index(",", start)
    (folder / "model_infer.c").write_text(source[:start] + str(int(source[start:end]) + 40000) + source[end:])
    exe = folder / "engine_harness"
    subprocess.run(["gcc", *WARNINGS, "-O1", f"-I{folder}", f"-I{KERNELS}", str(folder / "model_infer.c"),
                    *map(str, engine.kernel_sources()), str(HARNESS), "-o", str(exe)], check=True)
    got_scores, _ = run_c(exe, x_q.reshape(len(x_q), -1), generated.classes)
    assert not np.array_equal(got_scores, scores), name




@pytest.mark.skipif(not (shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc")),
                    reason="qemu-system-arm and arm-none-eabi-gcc are needed (CI installs them)")
@pytest.mark.parametrize("board", ["mps2-an386", "mps2-an500", "mps2-an505"])
def test_dsp_conv_bytes_equal_the_portable_ones(tmp_path, board):
    """tests/c/conv_dsp_harness.c: every output byte of the DSP CONV_2D against the portable product, on random
    layers aimed at its paths (a one-value error in a widened column changes bytes a model's scores may hide)."""
    layers, checked, differ, first_layer, first_byte = run_harness(board, C_DIR / "conv_dsp_harness.c", tmp_path,
                                                                   b"CDSP", 5, budget_s=60.0)
    assert layers > 200 and checked > 500_000, (layers, checked)
    assert differ == 0, f"{differ} of {checked} bytes differ; first: layer {first_layer}, byte {first_byte}"
