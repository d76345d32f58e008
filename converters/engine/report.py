"""The export report's engine figures: arena against its lower bound and TFLM's, flash, MACs, per-layer entries.

``measure_flash`` compiles the generated C with the kernels (``kernel_sources``, in ``KERNELS_DIR``) for the
board's core; TFLM's flash is the flatbuffer plus its documented runtime size (``TFLM_RUNTIME_BYTES``).
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import CancelledError, Future
from pathlib import Path

from bisup.converters.engine.emit import Generated

KERNELS_DIR = Path(__file__).resolve().parent / "kernels"  # the C kernels, beside the generator that calls them


def kernel_sources() -> list[Path]:
    """Every C file of the kernels (one per op, plus the fixed-point primitives): what a build compiles
    beside the generated model_infer.c, with ``-I KERNELS_DIR``."""
    return sorted(KERNELS_DIR.glob("*.c"))

_CPUS = {"cortex-m0plus": "cortex-m0plus", "cortex-m4": "cortex-m4", "cortex-m4f": "cortex-m4",
         "cortex-m7": "cortex-m7", "cortex-m33": "cortex-m33", "cortex-m55": "cortex-m55"}
# As the HIL firmware is built (toolkit/hil/target.py): the default soft float ABI would drop the M55's
# __ARM_FEATURE_MVE, and with it the Helium kernels the board runs.
_FLOAT_ABI = {"cortex-m55": ["-mfloat-abi=softfp"]}
# TFLM's interpreter code cannot be built here; its own documentation gives the size of the core runtime.
TFLM_RUNTIME_BYTES = 16 * 1024
TFLM_RUNTIME_SOURCE = ("TensorFlow Lite for Microcontrollers overview: 'The core runtime just fits in 16 KB on an Arm "
                       "Cortex M3' (op kernels not included)")


# The kernels' instruction set per board arch: what -mcpu turns on (bisup_kernel_internal.h chooses by the same
# ACLE macros). Every other arch (Cortex-M0+, Xtensa, RISC-V, the host) runs the portable C kernels.
_KERNEL_SETS = {"cortex-m4": "dsp", "cortex-m4f": "dsp", "cortex-m7": "dsp", "cortex-m33": "dsp",
                "cortex-m55": "mve"}


def kernel_set(arch: str) -> dict:
    """Which of the engine's kernel sets a board of ``arch`` gets, and in words why."""
    chosen = _KERNEL_SETS.get(arch, "portable")
    why = {"dsp": f"{arch}: the DSP extension's SIMD multiply-accumulates (SMLAD, SXTB16)",
           "mve": f"{arch}: Helium (MVE) vectors, the DSP kernels where no Helium one exists",
           "portable": f"{arch} has no DSP or Helium kernel set in bisup: the portable C kernels"}[chosen]
    return {"kernel_set": chosen, "kernel_set_note": why}


def measure_flash(out_dir: str | Path, arch: str, stems: tuple[str, ...] = ("model_infer",)) -> dict:
    """Flash of the generated model plus the kernels it calls: its objects compiled for the board's core (-Os,
    one section per function) and linked from its inference functions with --gc-sections, as firmware links
    them, so kernels of other ops, other instruction sets and other shapes are not counted (the C library's
    memcpy is). Where the link fails, the sum of every object: an upper bound, and said so."""
    cpu = _CPUS.get(arch, "cortex-m4")
    measured_for = cpu if arch in _CPUS else f"cortex-m4 (no {arch} toolchain here)"
    if shutil.which("arm-none-eabi-gcc") is None:
        return {"flash_bytes": None, "flash_measured_for": "not measured: install gcc-arm-none-eabi"}
    sources = [*(Path(out_dir) / f"{stem}.c" for stem in stems), *kernel_sources()]
    with tempfile.TemporaryDirectory() as work:
        objects = _compile(sources, cpu, Path(out_dir), Path(work))
        linked = _link(objects, cpu, [f"bisup_{stem}" for stem in stems], Path(work) / "flash.elf")
        rows = subprocess.run(["arm-none-eabi-size", *map(str, [linked] if linked else objects)], check=True,
                              capture_output=True, text=True).stdout.splitlines()[1:]
        total = sum(int(row.split()[0]) + int(row.split()[1]) for row in rows)  # text + data
    how = "linked, unused code dropped" if linked else "every object summed (the link failed): an upper bound"
    return {"flash_bytes": total, "flash_measured_for": f"{measured_for}, {how}"}


def _link(objects: list[Path], cpu: str, entries: list[str], elf: Path) -> Path | None:
    """``objects`` linked from ``entries`` with --gc-sections; None if the toolchain cannot. Symbols defined
    by the firmware (a shared arena, the profile hook) are left unresolved: they take no flash here."""
    cmd = ["arm-none-eabi-gcc", f"-mcpu={cpu}", "-mthumb", *_FLOAT_ABI.get(cpu, []), "--specs=nano.specs",
           "-nostartfiles", "-Wl,--gc-sections", "-Wl,--unresolved-symbols=ignore-all", f"-Wl,-e,{entries[0]}",
           *(f"-Wl,--undefined={entry}" for entry in entries[1:]), *map(str, objects), "-o", str(elf)]
    return elf if subprocess.run(cmd, capture_output=True).returncode == 0 else None


def _flags(cpu: str, include: Path) -> list[str]:
    return [f"-mcpu={cpu}", "-mthumb", *_FLOAT_ABI.get(cpu, []), "-Os", "-std=c99", "-ffunction-sections",
            "-fdata-sections", f"-I{include}", f"-I{KERNELS_DIR}"]


def _compile(sources: list[Path], cpu: str, out_dir: Path, work: Path) -> list[Path]:
    """Objects of ``sources`` for ``cpu``, compiled all at once: the compilers are independent, and on two
    cores the kernels build beside the model's. Kernels compiled ahead (``compile_kernels_ahead``) are taken."""
    objects = [_take_ahead(cpu, source) or work / f"{index}_{source.stem}.o" for index, source in enumerate(sources)]
    builds = [subprocess.Popen(["arm-none-eabi-gcc", *_flags(cpu, out_dir), "-c", str(source), "-o", str(obj)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
              for source, obj in zip(sources, objects, strict=True) if obj.parent == work]
    for build in builds:
        _, errors = build.communicate()
        if build.returncode:
            raise subprocess.CalledProcessError(build.returncode, build.args, stderr=errors)
    return objects


# Kernel objects being compiled ahead, by (cpu, source): what the object depends on (``_kernel_text``) when it was
# queued, gcc's exit code to come, and the object it writes.
_AHEAD: dict[tuple[str, Path], tuple[bytes, Future[int], Path]] = {}


def _kernel_text(source: Path) -> bytes:
    """What a kernel's object depends on: its source and the kernels' headers."""
    return source.read_bytes() + b"".join(header.read_bytes() for header in sorted(KERNELS_DIR.glob("*.h")))


def compile_kernels_ahead(arch: str) -> None:
    """Start compiling every kernel for ``arch``'s core in the background, for the next ``measure_flash``.

    The kernels' objects do not depend on the model: an export starts them before it loads TensorFlow, whose
    import keeps one core busy and leaves the other idle. One gcc at a time, so that they take that idle core
    rather than a share of TensorFlow's. An object is taken only if the kernels are unchanged since it was
    queued; whatever is not taken is discarded when the process ends."""
    if shutil.which("arm-none-eabi-gcc") is None:
        return
    cpu = _CPUS.get(arch, "cortex-m4")
    work = Path(tempfile.mkdtemp(prefix="bisup-kernels-"))
    atexit.register(_discard, work)
    jobs = []
    for index, source in enumerate(kernel_sources()):
        if (cpu, source) not in _AHEAD:
            obj, done = work / f"{index}_{source.stem}.o", Future()
            jobs.append((["arm-none-eabi-gcc", *_flags(cpu, KERNELS_DIR), "-c", str(source), "-o", str(obj)], done))
            _AHEAD[(cpu, source)] = (_kernel_text(source), done, obj)
    threading.Thread(target=_compile_in_turn, args=(jobs,), daemon=True, name="bisup-kernels-ahead").start()


def _compile_in_turn(jobs: list[tuple[list[str], Future[int]]]) -> None:
    """Run each queued gcc to its end, one after the other, skipping those cancelled at exit."""
    for argv, done in jobs:
        if done.set_running_or_notify_cancel():
            try:
                done.set_result(subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode)
            except OSError as exc:
                done.set_exception(exc)


def _take_ahead(cpu: str, source: Path) -> Path | None:
    """The object compiled ahead for ``source``, if it built and the kernels have not changed since; else None."""
    ahead = _AHEAD.pop((cpu, source), None)
    if ahead is None:
        return None
    text, done, obj = ahead
    try:
        built = done.result() == 0
    except (CancelledError, OSError):
        built = False
    return obj if built and text == _kernel_text(source) else None


def _discard(work: Path) -> None:
    """At exit: cancel the ahead compiles nobody took (the running one finishes) and remove their objects."""
    for key, (_, done, obj) in list(_AHEAD.items()):
        if obj.parent == work:
            if not done.cancel():
                done.exception()  # wait for a running gcc; its outcome no longer matters
            del _AHEAD[key]
    shutil.rmtree(work, ignore_errors=True)


def summary(generated: Generated, tflm_arena_bytes: int, model_bytes: int) -> dict:
    """The export report's engine section: memory against the lower bound and against TFLM, per op."""
    plan = generated.plan
    return {
        "generated": True,
        "arena_bytes": plan.arena_bytes,
        "arena_lower_bound_bytes": plan.lower_bound_bytes,  # with the ops that run in place sharing a buffer
        "arena_lower_bound_without_in_place_bytes": plan.copy_lower_bound_bytes,
        "arena_vs_lower_bound": plan.ratio,
        "tflm_arena_bytes": tflm_arena_bytes,
        "arena_vs_tflm": plan.arena_bytes / tflm_arena_bytes,
        **tflm_flash(model_bytes),
        "macs": total_macs(generated),
        "layers": layers(generated),
        "arena_peak": peak(generated),
    }


def peak(generated: Generated) -> dict:
    """The layer (its row in ``layers``) during which the most activation bytes are live: the one to shrink,
    or to split, when the arena does not fit (TFLM runs the ops in the same order, so it peaks there too)."""
    calls = [position for position, step in enumerate(generated.steps) if step.call]
    row = max(range(len(calls)), key=lambda k: generated.plan.live_bytes[calls[k] + 1])
    return {"layer": row, "op": generated.steps[calls[row]].op, "live_bytes": generated.plan.live_bytes[calls[row] + 1]}


def tflm_flash(model_bytes: int) -> dict:
    """TFLM's flash for comparison: the flatbuffer plus the documented size of its core runtime."""
    return {"tflm_flash_bytes": model_bytes + TFLM_RUNTIME_BYTES,
            "tflm_flash_source": f"the flatbuffer ({model_bytes:,} B) plus {TFLM_RUNTIME_SOURCE}"}


def total_macs(generated: Generated) -> int:
    """Multiply-accumulates of one inference: the sum over the layers (only CONV, DEPTHWISE and FC have any)."""
    return sum(step.macs for step in generated.steps)


def layers(generated: Generated) -> list[dict]:
    """One entry per kernel call (the BISUP_MODEL_LAYERS the profile marks count; RESHAPE moves nothing):
    op, MACs, parameters (count and bytes), output bytes and where the output sits in the arena
    (``arena_offset`` up to ``arena_end``, exclusive)."""
    entries = []
    for step in (s for s in generated.steps if s.call):
        output_bytes = sum(generated.sizes[t] for t in step.outputs)
        offset = generated.plan.offsets.get(step.outputs[0])
        entries.append({"op": step.op, "macs": step.macs, "parameters": step.parameters,
                        "parameter_bytes": step.parameter_bytes, "output_bytes": output_bytes,
                        "arena_offset": offset, "arena_end": None if offset is None else offset + output_bytes})
    return entries
