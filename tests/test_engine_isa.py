"""The generated C on each emulated core, byte for byte against tflite-micro: the check each instruction set's
int8 kernels (portable C, Cortex-M DSP on the M4/M7/M33, Helium/MVE on the M55) pass on the core they are for.

Random models (tests/random_models.py) run through ``bisup.hil.model_run`` on every emulated board, and with
``BISUP_KERNELS_PORTABLE`` on the M4; each board's firmware reports which ACLE features its build had in
effect and which kernel set the kernels chose (``bisup_kernel_isa()``), which checks the ``-mcpu`` and float-ABI
flags (``-mfloat-abi=soft`` drops the M55's MVE). Several models share one firmware (``run_many``): the build
costs more than running them.

More models locally: BISUP_ISA_MODELS=200 (BISUP_ISA_SEED picks the first seed, BISUP_ISA_BATCH the models per
firmware: the M55's code memory, half its 512 KB ITCM, bounds it).
"""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest
from random_models import random_model
from test_engine import run_tflm

from bisup.boards import BOARDS_PATH_ENV, PROFILE_DIR
from bisup.hil import model_run
from bisup.hil.target import HilError

pytestmark = [pytest.mark.slow, pytest.mark.toolchain,
              pytest.mark.skipif(not (shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc")),
                                 reason="qemu-system-arm and arm-none-eabi-gcc are needed (CI installs them)")]

MODELS = int(os.environ.get("BISUP_ISA_MODELS", "16"))
SEED = int(os.environ.get("BISUP_ISA_SEED", "0"))
BATCH = int(os.environ.get("BISUP_ISA_BATCH", "16"))
INPUTS = 8  # per model

# Each board, the kernel set its core implies (bisup_kernel_isa()), and the ACLE features (and define) its build
# must have in effect.
CORES = [("mps2-an386", False, "dsp", {"dsp"}), ("mps2-an500", False, "dsp", {"dsp"}),
         ("mps2-an505", False, "dsp", {"dsp"}), ("mps3-an547", False, "mve", {"dsp", "mve"}),
         ("mps2-an386", True, "portable", {"dsp", "portable"})]


@pytest.fixture(scope="module")
def oracle() -> list[tuple[int, bytes, np.ndarray, tuple[np.ndarray, np.ndarray]]]:
    """Each random model with its inputs and tflite-micro's outputs for them: (seed, model, inputs, outputs)."""
    cases = []
    for seed in range(SEED, SEED + MODELS):
        model, shape = random_model(seed)
        x_q = np.random.default_rng(seed).integers(-128, 128, size=(INPUTS, *shape[1:]), dtype=np.int8)
        cases.append((seed, model, x_q, run_tflm(model, x_q)))
    return cases


@pytest.mark.parametrize(("board", "portable", "kernels", "features"), CORES,
                         ids=[f"{b}{'-portable' * p}" for b, p, _, _ in CORES])
def test_random_models_are_byte_equal_to_tflm_on_each_core(oracle, board, portable, kernels, features):
    for start in range(0, len(oracle), BATCH):
        batch = oracle[start:start + BATCH]
        runs = model_run.run_many([(model, x_q) for _, model, x_q, _ in batch], board, portable)
        for (seed, _, _, (scores, confidence)), got in zip(batch, runs, strict=True):
            assert (got.kernel_set, got.features) == (kernels, features), f"{board}: the build's -mcpu flags"
            differ = np.any(got.scores != scores, axis=1) | (got.confidence != confidence)
            assert not differ.any(), f"seed {seed} on {board}: inputs {np.flatnonzero(differ).tolist()} differ"
            assert got.instructions.shape == (INPUTS,) and (got.instructions > 0).all()
            assert len(got.layer_instructions) == len(got.layer_ops) > 0


def test_a_model_the_board_cannot_hold_gets_the_linkers_words(oracle, tmp_path, monkeypatch):
    """A user's M55 board with 8 KB of code memory (4 KB for code, the rest the model image's): the firmware
    does not fit, and the error names the board and the region that overflowed."""
    shipped = (PROFILE_DIR / "mps3-an547.toml").read_text()
    tiny = re.sub(r"(?m)^flash_bytes = 0x[0-9a-fA-F]+", "flash_bytes = 0x2000", shipped)  # the [emulation] table's
    assert tiny != shipped, "the shipped profile's emulated code memory is no longer a hex flash_bytes line"
    (tmp_path / "tiny-m55.toml").write_text(tiny.replace('name = "mps3-an547"', 'name = "tiny-m55"'))
    monkeypatch.setenv(BOARDS_PATH_ENV, str(tmp_path))
    with pytest.raises(HilError, match=r"building the tiny-m55 firmware failed: .*region `FLASH' overflowed by \d+"):
        model_run.run(oracle[0][1], oracle[0][2], "tiny-m55")


def test_inputs_of_the_wrong_size_are_one_line(oracle):
    _, model, x_q, _ = oracle[0]
    with pytest.raises(HilError, match=rf"^model 0's inputs hold {x_q[0].size + 1} int8 values each .*; the model "
                                       rf"takes {x_q[0].size}$"):
        model_run.run(model, np.zeros((2, x_q[0].size + 1), dtype=np.int8), "mps2-an386")
