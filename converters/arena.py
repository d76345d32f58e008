"""The true minimum tensor arena, found by binary search over real TFLM allocations.

``print_allocations()`` under-reports (2,128 B said vs about 2,492 B needed in one probe), so the
size is measured: each candidate runs ``AllocateTensors`` + ``Invoke`` in the ``tflite-micro``
interpreter in a worker process, because some undersized arenas crash with SIGSEGV; one worker
answers the whole search and is replaced only when it crashes (see ``Prober``).

The host interpreter is 64-bit; a 32-bit MCU stores smaller structs, so the measured size is an
upper bound for the same kernels. Optimized kernels (CMSIS-NN, esp-nn) may ask for scratch
buffers the reference kernels do not, hence the recommended size adds a margin of
``max(1 KiB, 10%)``: the 1 KiB is what TFLM's ``RecordingMicroInterpreter`` header advises.
"""

from __future__ import annotations

import select
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bisup.converters.errors import ConversionError
from bisup.converters.tflm_probe import OK, RUN_INPUTS, RUN_OUTPUTS

ALIGNMENT = 16  # MicroArenaBufferAlignment()
START_BYTES = 64 * 1024
MAX_BYTES = 64 * 1024 * 1024
PROBE_TIMEOUT_S = 120


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str


class Prober:
    """One ``tflm_probe`` worker process answering many arena sizes for one model.

    Starting Python, numpy and tflite-micro costs about 0.3 s on a quiet machine and far more on a busy
    one, against milliseconds for the probe itself: a search of 13 probes in one worker takes a fraction
    of 13 processes. A worker that crashes (SIGSEGV on an undersized arena) answers that probe with the
    signal, and the next probe starts a fresh one, so every probe still runs in a process of its own kind.
    """

    def __init__(self, model_path: Path | None = None):
        self._model_path = model_path
        self._worker: subprocess.Popen[str] | None = None
        self._waiting = False  # a worker started early, before its model existed

    def start(self) -> Prober:
        """Start the worker now, before the model exists: it loads Python, numpy and tflite-micro (while the
        exporter converts) and then waits for ``use``."""
        self._start()
        return self

    def use(self, model_path: Path) -> None:
        """Probe ``model_path`` from now on; a worker started early reads it as its first line."""
        self._model_path = model_path
        if self._worker is not None and self._waiting:
            self._waiting = False
            try:
                self._worker.stdin.write(f"{model_path}\n")
                self._worker.stdin.flush()
            except BrokenPipeError:
                pass  # the next probe finds it dead and starts another

    def __enter__(self) -> Prober:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the worker: closing its stdin ends its loop; one that hangs is killed."""
        if self._worker is None:
            return
        worker, self._worker = self._worker, None
        worker.stdin.close()
        try:
            worker.wait(timeout=PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        worker.stdout.close()

    def _start(self) -> subprocess.Popen[str]:
        if self._worker is None:
            self._waiting = self._model_path is None
            cmd = [sys.executable, "-m", "bisup.converters.tflm_probe", str(self._model_path or "-")]
            self._worker = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=subprocess.DEVNULL, text=True, bufsize=1)
        return self._worker

    def probe(self, arena_bytes: int) -> ProbeResult:
        """Try one arena size; a crash or a timeout counts as failure, with its cause named."""
        return self.ask(f"{arena_bytes}")

    def ask(self, request: str, timeout_s: float | None = PROBE_TIMEOUT_S) -> ProbeResult:
        """One protocol line to the worker (see ``tflm_probe``) and its answer; None waits as long as it takes."""
        worker = self._start()
        try:
            worker.stdin.write(f"{request}\n")
            worker.stdin.flush()
        except BrokenPipeError:
            return self._died()
        ready, _, _ = select.select([worker.stdout], [], [], timeout_s)
        if not ready:
            worker.kill()
            self.close()
            return ProbeResult(False, f"TFLM probe timed out after {timeout_s} s")
        answer = worker.stdout.readline().strip()
        if not answer:
            return self._died()
        return ProbeResult(True, "") if answer == OK else ProbeResult(False, answer)

    def _died(self) -> ProbeResult:
        """The worker ended without answering: name the signal that killed it, and let the next probe restart."""
        worker, self._worker = self._worker, None
        code = worker.wait()
        worker.stdout.close()
        if code < 0:
            return ProbeResult(False, f"TFLM crashed with signal {-code}")
        return ProbeResult(False, f"exit code {code}")


def probe(model_path: Path, arena_bytes: int) -> ProbeResult:
    """Try one arena size in a worker process of its own (see ``Prober``)."""
    with Prober(model_path) as prober:
        return prober.probe(arena_bytes)


def recommended(arena_bytes: int) -> int:
    """The measured minimum plus ``max(1 KiB, 10%)``, rounded up to the 16-byte alignment."""
    padded = arena_bytes + max(1024, -(-arena_bytes // 10))
    return -(-padded // ALIGNMENT) * ALIGNMENT


def _upper_bound(prober: Prober) -> int:
    size = START_BYTES
    while True:
        result = prober.probe(size)
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
    with Prober(model_path) as prober:
        return _search(prober)


def _search(prober: Prober) -> int:
    """The binary search of ``minimum_arena`` with an open prober."""
    good = _upper_bound(prober)
    bad = 0
    while good - bad > ALIGNMENT:
        middle = (bad + good) // 2 // ALIGNMENT * ALIGNMENT
        if middle <= bad:
            break
        if prober.probe(middle).ok:
            good = middle
        else:
            bad = middle
    return good


def minimum_arena_of(flatbuffer: bytes) -> int:
    """``minimum_arena`` of a model held in memory (the probe worker is a subprocess, so it reads a file)."""
    with tempfile.NamedTemporaryFile(suffix=".tflite") as handle:
        handle.write(flatbuffer)
        handle.flush()
        return minimum_arena(Path(handle.name))


def minimum_arena_and_outputs(flatbuffer: bytes, x_int8: np.ndarray, outputs: int,
                              early: Prober | None = None) -> tuple[int, list[np.ndarray]]:
    """``minimum_arena_of`` the model, then its outputs on every row of ``x_int8`` with the ``recommended`` arena,
    by output position, computed by the search's worker: the oracle evaluation then runs in that process, beside
    the exporter's Keras and LiteRT work, instead of after them in this one (and this process never loads TFLM).
    ``early``, a prober started before the model existed (``Prober.start``), spares the worker's start-up."""
    with tempfile.TemporaryDirectory(prefix="bisup-tflm-") as work:
        (Path(work) / "model.tflite").write_bytes(flatbuffer)
        np.save(Path(work) / RUN_INPUTS, np.ascontiguousarray(x_int8))
        with early or Prober() as prober:
            prober.use(Path(work) / "model.tflite")
            minimum = _search(prober)
            answer = prober.ask(f"run {recommended(minimum)} {outputs} {work}", timeout_s=None)
        if not answer.ok:
            raise ConversionError(f"TFLM could not run the model with a {recommended(minimum):,} B arena: "
                                  f"{answer.detail}")
        with np.load(Path(work) / RUN_OUTPUTS) as saved:
            return minimum, [saved[f"arr_{position}"] for position in range(outputs)]
