"""The Helium kernels' vectorised requantization on the emulated Cortex-M55, bit for bit against the scalar one.

tests/test_engine_isa.py checks whole random models against tflite-micro; requantization corners (ties, the
one saturating product, INT32_MIN, every shift) are rare in them. tests/c/mve_requantize_harness.c runs
bisup_kernel_requantize_mve against requantize() (TFLM's MultiplyByQuantizedMultiplier, which the host tests
check against tflite-micro) on corner and pseudo-random accumulators, multipliers and every shift in
[-31, 30], on QEMU's Cortex-M55, and reports the cases that differ. And every kernel file builds warning-free
for the M55 (Helium in) and the M0+ (Helium compiled out).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from board_harness import C_DIR, run_harness

pytestmark = [pytest.mark.slow, pytest.mark.toolchain,
              pytest.mark.skipif(not (shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc")),
                                 reason="qemu-system-arm and arm-none-eabi-gcc are needed (CI installs them)")]

HARNESS = C_DIR / "mve_requantize_harness.c"
BOARD = "mps3-an547"
BUDGET_S = 120.0  # QEMU CPU seconds: the check runs a few hundred million instructions


def test_helium_requantization_is_bit_exact_with_the_scalar_one(tmp_path):
    checked, differ, *first = run_harness(BOARD, HARNESS, tmp_path, b"MVEQ", 7, BUDGET_S)
    assert checked > 2_000_000
    acc, multiplier, shift, want, got = (v - (1 << 32) if v >= 1 << 31 else v for v in first)
    assert differ == 0, (f"{differ} of {checked} differ; first: acc {acc}, multiplier {multiplier}, shift {shift}: "
                         f"scalar {want}, Helium {got}")


@pytest.mark.parametrize("flags", [["-mcpu=cortex-m55", "-mfloat-abi=softfp"], ["-mcpu=cortex-m55", "-mfloat-abi=hard"],
                                   ["-mcpu=cortex-m0plus"]], ids=["m55-softfp", "m55-hard", "m0plus"])
def test_the_kernels_build_warning_free_with_and_without_helium(tmp_path, flags):
    """Every kernel file, the Helium ones included, under the engine's warnings; on the M55 (either float ABI
    keeps __ARM_FEATURE_MVE) the Helium entry points are in the objects, on the M0+ they are not."""
    from test_engine import KERNELS, WARNINGS

    from bisup.converters import engine

    symbols = ""
    for source in engine.kernel_sources():
        obj = tmp_path / f"{source.stem}.o"
        subprocess.run(["arm-none-eabi-gcc", *flags, "-mthumb", "-O2", *WARNINGS, f"-I{KERNELS}", "-c", str(source),
                        "-o", str(obj)], check=True)
        symbols += subprocess.run(["arm-none-eabi-nm", str(obj)], check=True, capture_output=True, text=True).stdout
    helium = {"bisup_kernel_conv2d_mve", "bisup_kernel_depthwise_conv2d_mve", "bisup_kernel_fully_connected_mve",
              "bisup_kernel_add_mve"}
    defined = {line.split()[-1] for line in symbols.splitlines() if " T " in line}
    assert (helium <= defined) == ("cortex-m55" in flags[0]), sorted(defined & helium)
