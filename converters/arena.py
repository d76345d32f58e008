"""The true minimum tensor arena, found by binary search over real TFLM allocations.

``print_allocations()`` under-reports (2,128 B said vs about 2,492 B needed in one probe), so the
size is measured: each candidate runs ``AllocateTensors`` + ``Invoke`` in the ``tflite-micro``
interpreter, in a fresh subprocess, because some undersized arenas crash with SIGSEGV.

The host interpreter is 64-bit; a 32-bit MCU stores smaller structs, so the measured size is an
upper bound for the same kernels. Optimized kernels (CMSIS-NN, esp-nn) may ask for scratch
buffers the reference kernels do not, hence the recommended size adds a margin of
``max(1 KiB, 10%)``: the 1 KiB is what TFLM's ``RecordingMicroInterpreter`` header advises.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bisup.converters.errors import ConversionError

ALIGNMENT = 16  # MicroArenaBufferAlignment()
START_BYTES = 64 * 1024
MAX_BYTES = 64 * 1024 * 1024
PROBE_TIMEOUT_S = 120


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str


def probe(model_path: Path, arena_bytes: int) -> ProbeResult:
    """Try one arena size in a subprocess; a crash counts as failure, with its signal named."""
    cmd = [sys.executable, "-m", "bisup.converters.tflm_probe", str(model_path), str(arena_bytes)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"TFLM probe timed out after {PROBE_TIMEOUT_S} s")
    if done.returncode == 0:
        return ProbeResult(True, "")
    if done.returncode < 0:
        return ProbeResult(False, f"TFLM crashed with signal {-done.returncode}")
    missing = [line.strip() for line in done.stderr.splitlines() if "Didn't find op" in line]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return ProbeResult(False, "; ".join(missing + lines[-1:]) or f"exit code {done.returncode}")


def recommended(arena_bytes: int) -> int:
    """The measured minimum plus ``max(1 KiB, 10%)``, rounded up to the 16-byte alignment."""
    padded = arena_bytes + max(1024, -(-arena_bytes // 10))
    return -(-padded // ALIGNMENT) * ALIGNMENT


def _upper_bound(model_path: Path) -> int:
    size = START_BYTES
    while True:
        result = probe(model_path, size)
        if result.ok:
            return size
        if "Didn't find op" in result.detail:
            raise ConversionError(f"TFLM cannot load the model: {result.detail}")
        if size >= MAX_BYTES:
            raise ConversionError(
                f"TFLM could not run the model even with a {MAX_BYTES:,} B arena: {result.detail}"
            )
        size *= 4


def minimum_arena(model_path: Path) -> int:
    """Smallest 16-byte multiple with which TFLM allocates and invokes the model."""
    good = _upper_bound(model_path)
    bad = 0
    while good - bad > ALIGNMENT:
        middle = (bad + good) // 2 // ALIGNMENT * ALIGNMENT
        if middle <= bad:
            break
        if probe(model_path, middle).ok:
            good = middle
        else:
            bad = middle
    return good


def minimum_arena_of(flatbuffer: bytes) -> int:
    """``minimum_arena`` of a model held in memory (the probes are subprocesses, so they read a file)."""
    with tempfile.NamedTemporaryFile(suffix=".tflite") as handle:
        handle.write(flatbuffer)
        handle.flush()
        return minimum_arena(Path(handle.name))
