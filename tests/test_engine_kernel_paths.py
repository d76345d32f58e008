"""The kernels' specialised paths against tflite-micro, byte for byte: models aimed at them
(random_models.kernel_path_model: depthwise layers with many channels, 3 x 3 at strides 1 and 2, odd sizes, SAME
padding, channel counts not a multiple of 4, multipliers above 1; residual ADD / SUB / MUL of equal shapes; max
pooling and global average pooling), which random_model rarely reaches.

On the host (portable C, under UBSan) and, where QEMU and arm-none-eabi-gcc are installed, on the emulated
Cortex-M4, M7 and M33, where the DSP kernels run, and the M55. More models locally: BISUP_PATH_MODELS=300.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from random_models import kernel_path_model
from test_engine import HARNESS, KERNELS, WARNINGS, run_c, run_tflm

from bisup.converters import engine

pytestmark = [pytest.mark.slow, pytest.mark.toolchain]

MODELS = int(os.environ.get("BISUP_PATH_MODELS", "40"))
WIDE = 8  # 3 x 3 depthwise rows wider than the DSP path's slots, tile by tile: every stride, padding, parity
INPUTS = 8


@pytest.fixture(scope="module")
def cases() -> list[tuple[int, bytes, np.ndarray, tuple[np.ndarray, np.ndarray]]]:
    """(seed, model, inputs, tflite-micro's outputs) for each model; the wide ones' seeds are MODELS on."""
    out = []
    for seed in range(MODELS + WIDE):
        model, shape = kernel_path_model(seed - MODELS, wide=True) if seed >= MODELS else kernel_path_model(seed)
        x_q = np.random.default_rng(seed).integers(-128, 128, size=(INPUTS, *shape[1:]), dtype=np.int8)
        out.append((seed, model, x_q, run_tflm(model, x_q)))
    return out


def test_the_models_reach_the_paths(cases):
    """The draw covers what the paths distinguish (a test that could not fail otherwise)."""
    ops = [engine.generate(model).steps for _, model, _, _ in cases]
    calls = " ".join(step.op for steps in ops for step in steps)
    assert calls.count("DEPTHWISE_CONV_2D") == len(cases)
    assert "ADD" in calls and "SUB" in calls and "MUL" in calls and "AVERAGE_POOL_2D" in calls
    assert "MAX_POOL_2D" in calls
    wide = [tuple(re.search(rf"\.{name} = (\d+)", str(step.definitions)).group(1)
                  for name in ("stride_width", "pad_width"))
            for steps in ops[MODELS:] for step in steps if step.op == "DEPTHWISE_CONV_2D"]
    assert set(wide) == {("1", "0"), ("1", "1"), ("2", "0"), ("2", "1")}, wide


def test_kernel_paths_are_byte_equal_to_tflm_on_the_host(cases, tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed (CI installs it)")
    flags = [*WARNINGS, "-O1", "-fsanitize=undefined", "-fno-sanitize-recover=all", f"-I{KERNELS}"]
    objects = []
    for source in engine.kernel_sources():  # the kernels once, each model's C and the harness per model
        obj = tmp_path / f"{source.stem}.o"
        subprocess.run(["gcc", *flags, "-c", str(source), "-o", str(obj)], check=True)
        objects.append(str(obj))
    for seed, model, x_q, (want_scores, want_confidence) in cases:
        folder = tmp_path / str(seed)
        folder.mkdir()
        generated = engine.write(model, folder)
        exe = folder / "engine_harness"
        subprocess.run(["gcc", *flags, f"-I{folder}", str(folder / "model_infer.c"), str(HARNESS), *objects, "-o",
                        str(exe)], check=True)
        scores, confidence = run_c(exe, x_q, generated.classes)
        assert np.array_equal(scores, want_scores) and np.array_equal(confidence, want_confidence), (
            f"model seed {seed}: {[step.op for step in generated.steps]}")


@pytest.mark.skipif(not (shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc")),
                    reason="qemu-system-arm and arm-none-eabi-gcc are needed (CI installs them)")
@pytest.mark.parametrize(("board", "kernels"), [("mps2-an386", "dsp"), ("mps2-an500", "dsp"), ("mps2-an505", "dsp"),
                                                ("mps3-an547", "mve")])
def test_kernel_paths_are_byte_equal_to_tflm_on_the_cortex_m_cores(cases, board, kernels):
    """The DSP kernels on the M4, M7 and M33; on the M55 the Helium kernels, and the DSP ones where those decline."""
    from bisup.hil import model_run

    batch = 16
    for start in range(0, len(cases), batch):
        chunk = cases[start:start + batch]
        runs = model_run.run_many([(model, x_q) for _, model, x_q, _ in chunk], board)
        for (seed, _, _, (scores, confidence)), got in zip(chunk, runs, strict=True):
            assert got.kernel_set == kernels, f"{board}: the build's -mcpu flags"
            differ = np.any(got.scores != scores, axis=1) | (got.confidence != confidence)
            assert not differ.any(), f"seed {seed} on {board}: inputs {np.flatnonzero(differ).tolist()} differ"
