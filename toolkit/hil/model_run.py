"""Generated models alone on an emulated core: every output byte, and the instructions it took.

What the int8 kernels of each instruction set (portable C; Cortex-M DSP; Helium/MVE, chosen at compile time by
the ACLE macros ``-mcpu`` sets, or forced portable with ``BISUP_KERNELS_PORTABLE``) need to be checked and
measured on the core they are for: ``run`` generates the model's C, builds ``main_engine.c`` of the board's
firmware folder with it for the board's core (-O2, per-layer marks), boots it in QEMU under ``-icount shift=0``
and sends the inputs over the UART. The firmware answers each input with its scores and confidence, and the
cycles of the inference and of each layer; at boot it says which ACLE features its build had in effect and
which kernel set the kernels chose from them (``bisup_kernel_isa()``), so a wrong flag shows as such. No
supervisor decision, bridge or model image is involved (``bisup hil`` runs those). ``run_many`` puts several
models in one firmware: the build costs more host time than running small models.

Every wait runs on QEMU's CPU time (``target.BoardLink``), never the host's clock: a busy host makes the
emulator slower, not the board's answers later in its own time.
"""

from __future__ import annotations

import itertools
import struct
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bisup.boards import firmware_dir
from bisup.converters import engine
from bisup.hil import target
from bisup.hil.target import BoardLink, HilError

GREETING = b"BISE"  # main_engine.c's first bytes, before its ACLE word, the kernels' ISA and the models' sizes
RECORD = b"R"  # the first byte of each input's answer
FEATURES = {1: "dsp", 2: "mve", 4: "portable"}  # the ACLE word's bits (main_engine.c)
ISA_NAME_BYTES = 32  # longer is no ISA name but a line out of step
BOOT_BUDGET_S = 10.0  # QEMU CPU seconds for the greeting: start-up is a few thousand instructions
INPUT_BUDGET_S = 60.0  # QEMU CPU seconds per input: billions of instructions, far above any model here
Job = tuple[bytes, np.ndarray]  # an exported int8 .tflite and its int8 inputs, one per row


@dataclass(frozen=True)
class ModelRun:
    """One model's run on one emulated board. Outputs are laid out as tests/test_engine.py's ``run_tflm``:
    ``scores`` (inputs, classes) and ``confidence`` (inputs,), int8. Instructions are SysTick cycles times the
    board's nanoseconds per cycle (under ``-icount shift=0`` one instruction takes one nanosecond), so they
    are multiples of ``resolution`` instructions and include the per-layer marks' few reads of the clock."""

    board: str
    features: frozenset[str]  # what the firmware's build had in effect: "dsp", "mve", "portable"
    kernel_set: str  # what the kernels chose from them: bisup_kernel_isa(), "mve", "dsp" or "portable"
    scores: np.ndarray
    confidence: np.ndarray
    instructions: np.ndarray  # per input, the whole inference
    layer_instructions: np.ndarray  # per layer (kernel call), the median over the inputs
    layer_ops: tuple[str, ...]  # each layer's op (RESHAPE moves nothing and is no layer)
    resolution: float  # instructions per SysTick cycle


def run(model: bytes, x_q: np.ndarray, board: str, portable: bool = False,
        progress: Callable[[str], None] | None = None, timeout_s: float = INPUT_BUDGET_S) -> ModelRun:
    """Run ``model`` (an exported int8 .tflite) on each int8 input of ``x_q`` (one per row) on the emulated
    ``board``; ``portable`` builds it with ``-DBISUP_KERNELS_PORTABLE``. ``timeout_s``: QEMU CPU seconds an
    input may take. A model that does not fit the board raises ``HilError`` with the linker's message."""
    return run_many([(model, x_q)], board, portable, progress, timeout_s)[0]


def run_many(jobs: Sequence[Job], board: str, portable: bool = False,
             progress: Callable[[str], None] | None = None, timeout_s: float = INPUT_BUDGET_S) -> list[ModelRun]:
    """``run`` for several models in one firmware and one boot; their runs in the order given."""
    say = progress or (lambda _message: None)
    machine = target.emulated(board)
    with tempfile.TemporaryDirectory(prefix="bisup-model-run-") as work:
        generated = _write_models([model for model, _ in jobs], Path(work))
        samples = [_samples(x_q, g.input_bytes, k) for k, ((_, x_q), g) in enumerate(zip(jobs, generated, strict=True))]
        elf = _compile(board, Path(work), len(generated), portable)
        say(f"booting {board} with {len(jobs)} model(s), {sum(len(s) for s in samples)} inputs")
        with target.qemu(board, elf) as link:
            (features, isa), seq = _greeting(link, generated), itertools.count(1)
            answers = [[_infer(link, k, sample, g, next(seq), timeout_s) for sample in rows]
                       for k, (rows, g) in enumerate(zip(samples, generated, strict=True))]
    return [_model_run(board, features, isa, rows, g, machine.nanoseconds_per_cycle)
            for rows, g in zip(answers, generated, strict=True)]


def build(models: Sequence[bytes], board: str, workdir: Path,
          portable: bool = False) -> tuple[Path, list[engine.Generated]]:
    """The firmware ELF in ``workdir``: the models as generated C (``m0_infer.c`` ...) with main_engine.c, for
    the board's core."""
    generated = _write_models(models, workdir)
    return _compile(board, workdir, len(generated), portable), generated


def _write_models(models: Sequence[bytes], workdir: Path) -> list[engine.Generated]:
    """Each model's C (``m0_infer.c`` ...) and ``engine_models.h``, which lists them for main_engine.c."""
    if not models:
        raise HilError("no model to run")
    generated = []
    for k, model in enumerate(models):
        try:
            generated.append(engine.write(model, workdir, name=f"m{k}"))
        except engine.EngineError as exc:
            raise HilError(f"model {k} cannot run as generated C: {exc}") from exc
    (workdir / "engine_models.h").write_text(_model_list(generated))
    return generated


def _compile(board: str, workdir: Path, count: int, portable: bool) -> Path:
    """main_engine.c with the ``count`` models ``_write_models`` wrote, for the board's core."""
    main = firmware_dir(board) / "main_engine.c"
    if not main.is_file():
        raise HilError(f"the {board} firmware folder {main.parent} has no main_engine.c, the program that runs "
                       "models alone; copy it from bisup's boards/mps2")
    (workdir / "hil_config.h").write_text(target.config_header(f"qemu-{board}", 0, 0))  # board.c's; no requests
    defines = ["-DBISUP_MODEL_PROFILE_MARKS", *(["-DBISUP_KERNELS_PORTABLE"] if portable else [])]
    sources = [main, *(workdir / f"m{k}_infer.c" for k in range(count))]
    return target.compile_firmware(board, workdir, sources, 1024, defines)


def _model_list(generated: Sequence[engine.Generated]) -> str:
    """``engine_models.h``: each model's header and the list main_engine.c builds its table from."""
    includes = "".join(f'#include "m{k}_infer.h"\n' for k in range(len(generated)))
    return (f"/* Generated by bisup.hil.model_run for main_engine.c. */\n{includes}"
            f"#define BISUP_ENGINE_MODEL_LIST {' '.join(f'X(m{k}, M{k})' for k in range(len(generated)))}\n"
            f"#define BISUP_ENGINE_MAX_INPUT_BYTES {max(g.input_bytes for g in generated)}\n"
            f"#define BISUP_ENGINE_MAX_CLASSES {max(g.classes for g in generated)}\n"
            f"#define BISUP_ENGINE_MAX_LAYERS {max(1, *(len(_layers(g)) for g in generated))}\n")


def _layers(generated: engine.Generated) -> list[engine.Step]:
    """The steps that call a kernel: the layers the firmware times (BISUP_M0_LAYERS ...)."""
    return [step for step in generated.steps if step.call]


def _samples(x_q: np.ndarray, input_bytes: int, k: int) -> np.ndarray:
    """``x_q`` as one row of bytes per input; a wrong type or size is one line naming what model ``k`` takes."""
    x_q = np.asarray(x_q)
    if x_q.dtype != np.int8 or x_q.ndim < 1 or not len(x_q):
        raise HilError(f"model {k}'s inputs must be a non-empty int8 array, one input per row, not {x_q.dtype} of "
                       f"shape {x_q.shape}")
    if x_q[0].size != input_bytes:
        raise HilError(f"model {k}'s inputs hold {x_q[0].size} int8 values each (shape {x_q.shape[1:]}); the "
                       f"model takes {input_bytes}")
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


def _greeting(link: BoardLink, generated: Sequence[engine.Generated]) -> tuple[frozenset[str], str]:
    """The build's ACLE features and the kernels' ISA, once the greeting says the firmware holds these models."""
    head = _read(link, len(GREETING) + 8, BOOT_BUDGET_S, "the greeting")
    word, isa_bytes = _words(head[len(GREETING):])
    if head[:len(GREETING)] != GREETING or isa_bytes > ISA_NAME_BYTES:
        raise HilError(f"the emulated board's greeting {head.hex()} is not main_engine.c's")
    isa = _read(link, isa_bytes, BOOT_BUDGET_S, "the kernels' ISA").decode("ascii", "replace")
    sizes = list(_words(_read(link, 4 + 12 * len(generated), BOOT_BUDGET_S, "the models' sizes")))
    expected = [len(generated), *(n for g in generated for n in (g.input_bytes, g.classes, len(_layers(g))))]
    if sizes != expected:
        raise HilError(f"the emulated board holds other models: count, then input bytes, classes and layers of "
                       f"each {sizes[:7]}... where these have {expected[:7]}...")
    return frozenset(name for bit, name in FEATURES.items() if word & bit), isa


def _infer(link: BoardLink, k: int, sample: np.ndarray, generated: engine.Generated, seq: int,
           budget_s: float) -> tuple[int, tuple[int, ...], bytes]:
    """The ``seq``-th input (from 1) through the board, one of model ``k``: its inference cycles, each layer's
    cycles, its output bytes."""
    link.port.write(struct.pack("<I", k) + sample.tobytes())
    head = len(RECORD) + 8 + 4 * len(_layers(generated))
    record = _read(link, head + generated.classes + 1, budget_s, f"an answer of model {k}")
    count, cycles, *layer_cycles = _words(record[len(RECORD):head])
    if record[:len(RECORD)] != RECORD or count != seq:
        raise HilError(f"the emulated board's answer to input {seq} (model {k}) is out of step: "
                       f"{record[:16].hex()}...")
    return cycles, tuple(layer_cycles), record[head:]


def _model_run(board: str, features: frozenset[str], isa: str, answers: list[tuple[int, tuple[int, ...], bytes]],
               generated: engine.Generated, ns_per_cycle: float) -> ModelRun:
    """One model's answers as outputs and instructions."""
    cycles = np.array([cycles for cycles, _, _ in answers], dtype=np.float64)
    layers = np.array([layers for _, layers, _ in answers], dtype=np.float64).reshape(len(answers), -1)
    outputs = np.frombuffer(b"".join(out for _, _, out in answers), dtype=np.int8).reshape(len(answers), -1)
    return ModelRun(board, features, isa, outputs[:, :generated.classes], outputs[:, generated.classes],
                    cycles * ns_per_cycle, np.median(layers, axis=0) * ns_per_cycle,
                    tuple(step.op for step in _layers(generated)), ns_per_cycle)
