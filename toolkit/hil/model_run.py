"""The generated model alone on an emulated core: every output byte, and the instructions it took.

What the int8 kernels of each instruction set (portable C; Cortex-M DSP; Helium/MVE, chosen at compile time by
the ACLE macros ``-mcpu`` sets, or forced portable with ``BISUP_KERNELS_PORTABLE``) need to be checked and
measured on the core they are for: ``run`` generates the model's C, builds ``main_engine.c`` of the board's
firmware folder with it for the board's core (-O2, per-layer marks), boots it in QEMU under ``-icount shift=0``
and sends the inputs over the UART. The firmware answers each input with its scores and confidence, and the
cycles of the inference and of each layer; at boot it says which kernel set its build had in effect, so a
wrong flag shows as such. No supervisor decision, bridge or model image is involved (``bisup hil`` runs those).

Every wait runs on QEMU's CPU time (``target.BoardLink``), never the host's clock: a busy host makes the
emulator slower, not the board's answers later in its own time.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bisup.boards import firmware_dir
from bisup.converters import engine
from bisup.hil import target
from bisup.hil.target import BoardLink, HilError

GREETING = b"BISE"  # main_engine.c's first bytes, before its kernel-set word and the model's sizes
RECORD = b"R"  # the first byte of each input's answer
FEATURES = {1: "dsp", 2: "mve", 4: "portable"}  # the kernel-set word's bits (main_engine.c)
BOOT_BUDGET_S = 30.0  # QEMU CPU seconds for the greeting: start-up is a few thousand instructions
INPUT_BUDGET_S = 120.0  # QEMU CPU seconds per input: far above any model the emulated boards hold


@dataclass(frozen=True)
class ModelRun:
    """One model's run on one emulated board. Outputs are laid out as tests/test_engine.py's ``run_tflm``:
    ``scores`` (inputs, classes) and ``confidence`` (inputs,), int8. Instructions are SysTick cycles times the
    board's nanoseconds per cycle (under ``-icount shift=0`` one instruction takes one nanosecond), so they
    are multiples of ``resolution`` instructions and include the per-layer marks' few reads of the clock."""

    board: str
    features: frozenset[str]  # what the firmware's build had in effect: "dsp", "mve", "portable"
    scores: np.ndarray
    confidence: np.ndarray
    instructions: np.ndarray  # per input, the whole inference
    layer_instructions: np.ndarray  # per layer (kernel call), the median over the inputs
    layer_ops: tuple[str, ...]  # each layer's op (RESHAPE moves nothing and is no layer)
    resolution: float  # instructions per SysTick cycle

    @property
    def kernel_set(self) -> str:
        """The kernels the build selects: Helium where the core has MVE, else DSP, else the portable C (or
        the portable C when ``BISUP_KERNELS_PORTABLE`` forces it)."""
        if "portable" in self.features:
            return "portable"
        return next((name for name in ("mve", "dsp") if name in self.features), "portable")


def run(model: bytes, x_q: np.ndarray, board: str, portable: bool = False,
        progress: Callable[[str], None] | None = None, timeout_s: float = INPUT_BUDGET_S) -> ModelRun:
    """Run ``model`` (an exported int8 .tflite) on each int8 input of ``x_q`` (one per row) on the emulated
    ``board``; ``portable`` builds it with ``-DBISUP_KERNELS_PORTABLE``. ``timeout_s``: QEMU CPU seconds an
    input may take. A model that does not fit the board raises ``HilError`` with the linker's message."""
    say = progress or (lambda _message: None)
    machine = target.emulated(board)
    with tempfile.TemporaryDirectory(prefix="bisup-model-run-") as work:
        elf, generated = build(model, board, Path(work), portable)
        samples = _samples(x_q, generated.input_bytes)
        say(f"booting {board} ({len(_layers(generated))} layers, {len(samples)} inputs)")
        with target.qemu(board, elf) as link:
            features = _greeting(link, generated)
            rows = [_infer(link, index, sample, generated, timeout_s) for index, sample in enumerate(samples)]
    cycles = np.array([row[0] for row in rows], dtype=np.float64)
    layers = np.array([row[1] for row in rows], dtype=np.float64)
    outputs = np.frombuffer(b"".join(row[2] for row in rows), dtype=np.int8).reshape(len(rows), -1)
    ns = machine.nanoseconds_per_cycle
    return ModelRun(board, features, outputs[:, :generated.classes], outputs[:, generated.classes],
                    cycles * ns, np.median(layers, axis=0) * ns, tuple(s.op for s in _layers(generated)), ns)


def _layers(generated: engine.Generated) -> list[engine.Step]:
    """The steps that call a kernel: the BISUP_MODEL_LAYERS the firmware times."""
    return [step for step in generated.steps if step.call]


def build(model: bytes, board: str, workdir: Path, portable: bool = False) -> tuple[Path, engine.Generated]:
    """The firmware ELF in ``workdir``: the model as generated C with main_engine.c, for the board's core."""
    main = firmware_dir(board) / "main_engine.c"
    if not main.is_file():
        raise HilError(f"the {board} firmware folder {main.parent} has no main_engine.c, the program that runs "
                       "a model alone; copy it from bisup's boards/mps2")
    try:
        generated = engine.write(model, workdir)
    except engine.EngineError as exc:
        raise HilError(f"the model cannot run as generated C: {exc}") from exc
    (workdir / "hil_config.h").write_text(target.config_header(f"qemu-{board}", 0, 0))  # board.c's; no requests
    defines = ["-DBISUP_MODEL_PROFILE_MARKS", *(["-DBISUP_KERNELS_PORTABLE"] if portable else [])]
    return target.compile_firmware(board, workdir, [main, workdir / "model_infer.c"], 1024, defines), generated


def _samples(x_q: np.ndarray, input_bytes: int) -> np.ndarray:
    """``x_q`` as one row of bytes per input; a wrong type or size is one line naming what the model takes."""
    x_q = np.asarray(x_q)
    if x_q.dtype != np.int8 or x_q.ndim < 1 or not len(x_q):
        raise HilError(f"inputs must be a non-empty int8 array, one input per row, not {x_q.dtype} of shape "
                       f"{x_q.shape}")
    if x_q[0].size != input_bytes:
        raise HilError(f"each input holds {x_q[0].size} int8 values (shape {x_q.shape[1:]}); the model takes "
                       f"{input_bytes}")
    return x_q.reshape(len(x_q), input_bytes)


def _read(link: BoardLink, size: int, budget_s: float, what: str) -> bytes:
    """Exactly ``size`` bytes from the board, within ``budget_s`` seconds of QEMU's CPU time."""
    data, start = bytearray(), link.clock()
    while len(data) < size:
        if link.clock() - start > budget_s:
            raise HilError(f"the emulated board sent {len(data)} of the {size} bytes of {what} in {budget_s:g} s "
                           "of QEMU's CPU time (a fault or a hang on the core)")
        data += link.port.read(size - len(data))
    return bytes(data)


def _words(data: bytes) -> tuple[int, ...]:
    return struct.unpack(f"<{len(data) // 4}I", data)


def _greeting(link: BoardLink, generated: engine.Generated) -> frozenset[str]:
    """The firmware's kernel-set word, once its greeting says it runs this model."""
    head = _read(link, len(GREETING) + 16, BOOT_BUDGET_S, "the greeting")
    word, *sizes = _words(head[len(GREETING):])
    expected = [generated.input_bytes, generated.classes, len(_layers(generated))]
    if head[:len(GREETING)] != GREETING or sizes != expected:
        raise HilError(f"the emulated board's greeting {head.hex()} is not main_engine.c's for this model (input "
                       f"bytes, classes, layers {expected})")
    return frozenset(name for bit, name in FEATURES.items() if word & bit)


def _infer(link: BoardLink, index: int, sample: np.ndarray, generated: engine.Generated,
           budget_s: float) -> tuple[int, tuple[int, ...], bytes]:
    """One input through the board: its inference cycles, each layer's cycles and its output bytes."""
    link.port.write(sample.tobytes())
    layers = len(_layers(generated))
    record = _read(link, len(RECORD) + 8 + 4 * layers + generated.classes + 1, budget_s, f"input {index}'s answer")
    count, cycles, *layer_cycles = _words(record[len(RECORD):len(RECORD) + 8 + 4 * layers])
    if record[:len(RECORD)] != RECORD or count != index + 1:
        raise HilError(f"the emulated board's answer to input {index} is out of step (it counts {count}); "
                       f"{record[:16].hex()}...")
    return cycles, tuple(layer_cycles), record[len(RECORD) + 8 + 4 * layers:]
