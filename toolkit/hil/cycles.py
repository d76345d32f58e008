"""Cycle estimates for an emulated board: QEMU counts instructions, a core spends cycles.

One inference is traced with ``qemu-system-arm -d exec,nochain,in_asm`` (Debian's QEMU 7.2 ships no TCG
plugins): ``in_asm`` prints each translation block's instructions once, ``exec`` (with ``nochain``, every
execution) prints the block's host pointer and guest address each time it runs. The log goes through a FIFO
and is parsed as it streams, so nothing of it is stored. Each block's instructions are classed (load/store,
multiply/MAC, branch, DSP SIMD, other) and costed once with the core's timings; each execution adds the
block's cost, plus a pipeline refill when its closing branch was taken (the next block is not the fall-through).
Layers are delimited as the firmware's profile marks delimit them: from the entry of ``bisup_model_infer`` to
each call of ``bisup_model_profile_mark``.

Timings (``TIMINGS``), assuming zero-wait-state memory (QEMU models none) and no FPU work (soft float):

- Cortex-M4: Technical Reference Manual r0p1 (ARM DDI 0439B), section 3.3.1, Table 3-1 "Cortex-M4 instruction
  set summary": ALU 1, LDR 2 (1 when it follows another load/store, "neighboring load and store single
  instructions can pipeline"), STR 1 after the same rule, LDM/STM/PUSH/POP 1+N, LDRD/STRD 3, MUL 1, MLA/MLS 2,
  long and DSP multiplies and MACs 1, SDIV/UDIV 2-12 (taken as 7), a taken branch 1+P with the refill P taken
  as 2 of its 1-3, a not-taken conditional branch 1, IT 1 (it may fold to 0).
- Cortex-M33: its TRM (ARM 100230) publishes no instruction timings; its 3-stage in-order single-issue pipeline
  is the M4's, so the M4 table stands in.
- Cortex-M55: its TRM publishes no scalar table either; the M4 table stands in, an upper bound for a core with
  a 4-stage pipeline that issues some instruction pairs together. Its firmware has no MVE instructions (soft
  float, none vectorized) but uses Armv8.1-M low-overhead loops: ``dls`` and ``le`` count as other (1 cycle, no
  refill), as the loop cache makes ``le`` close to free after the first pass.
- Cortex-M7: no public per-instruction table (TRM ARM DDI 0489). Approximated as 1 cycle per instruction
  (loads included: TCM, zero wait states), LDM/STM (N+1)/2 (64-bit bus), a taken branch +1 (the branch target
  cache hits in loops), and dual issue as greedy pairing of neighbouring instructions in a block when at most one
  of the pair is a load/store, at most one a multiply, and neither a branch.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bisup.firmware_bridge.bundle import Bundle
from bisup.firmware_bridge.handler import RequestHandler
from bisup.hil import target

CLASSES = ("load_store", "multiply_mac", "branch", "dsp_simd", "other")
_COND = "(?:eq|ne|cs|hs|cc|lo|mi|pl|vs|vc|hi|ls|ge|lt|gt|le|al)?"
_BRANCH = re.compile(rf"^(?:b|bl|blx|bx){_COND}(?:\.w|\.n)?$|^(?:cbn?z|tbb|tbh)")
_MULTIPLY = re.compile(r"^(?:mul|mla|mls|smul|umul|smla|umla|smls|smmul|smmla|smmls|smua|smus|umaal|sdiv|udiv)")
_SIMD = re.compile(r"^(?:[su]h?q?(?:add|sub|asx|sax)(?:8|16)|q(?:add|sub|dadd|dsub)|[su]sat|sel|pkh|[su]xta?b16|"
                   r"usada?8|[su]xtab|[su]xtah|clz|rev|rbit)")
_INSN = re.compile(r"^0x([0-9a-f]+):\s+((?:[0-9a-f]{4} ?)+)\s+(\S+)\s*(.*)$")


@dataclass(frozen=True)
class Timing:
    """One core's cycle costs (see the module's docstring for their sources and assumptions)."""

    load: float
    load_pipelined: float
    store: float
    multiple_base: float  # LDM/STM/PUSH/POP: base + per_register * N
    multiple_per_register: float
    multiply: float
    multiply_accumulate: float  # MLA, MLS
    divide: float
    taken_branch_penalty: float
    dual_issue: bool = False


M4 = Timing(load=2, load_pipelined=1, store=1, multiple_base=1, multiple_per_register=1, multiply=1,
            multiply_accumulate=2, divide=7, taken_branch_penalty=2)
M7 = Timing(load=1, load_pipelined=1, store=1, multiple_base=0.5, multiple_per_register=0.5, multiply=1,
            multiply_accumulate=1, divide=7, taken_branch_penalty=1, dual_issue=True)
TIMINGS = {"cortex-m4": M4, "cortex-m33": M4, "cortex-m55": M4, "cortex-m7": M7}


@dataclass
class Instruction:
    """One decoded instruction: its class and what its cost depends on."""

    kind: str  # one of CLASSES
    cycles: float
    memory: bool = False
    multiply: bool = False


def _registers(operands: str) -> int:
    """Registers in a register list ``{r4, r5, lr}`` (ranges ``r4-r7`` count each)."""
    inside = operands[operands.find("{") + 1:operands.find("}")]
    count = 0
    for item in filter(None, (part.strip() for part in inside.split(","))):
        low, _, high = item.partition("-")
        count += int(high[1:]) - int(low[1:]) + 1 if high else 1
    return count


def decode(mnemonic: str, operands: str, timing: Timing, after_memory: bool) -> Instruction:
    """Class and single-issue cycles of one instruction as QEMU's disassembler prints it."""
    m = mnemonic.lower()
    if m.startswith(("push", "pop", "ldm", "stm")):
        cycles = timing.multiple_base + timing.multiple_per_register * _registers(operands)
        taken = m.startswith("pop") and "pc" in operands
        return Instruction("branch" if taken else "load_store", cycles, memory=True)
    if m.startswith(("ldrd", "strd")):
        return Instruction("load_store", timing.multiple_base + 2 * timing.multiple_per_register, memory=True)
    if m.startswith(("ldr", "ldrex")):
        return Instruction("branch" if operands.startswith("pc") else "load_store",
                           timing.load_pipelined if after_memory else timing.load, memory=True)
    if m.startswith(("str", "strex")):
        return Instruction("load_store", timing.store, memory=True)
    if _BRANCH.match(m):
        return Instruction("branch", 1)
    if _MULTIPLY.match(m):
        cycles = (timing.divide if "div" in m else
                  timing.multiply_accumulate if m.startswith(("mla", "mls")) else timing.multiply)
        return Instruction("multiply_mac", cycles, multiply=True)
    if _SIMD.match(m):
        return Instruction("dsp_simd", 1)
    return Instruction("other", 1)


@dataclass
class Block:
    """A translation block, costed once: instructions per class, cycles, and how it ends."""

    counts: np.ndarray  # per CLASSES
    cycles: float
    end: int  # the fall-through address
    branches: bool  # ends in a branch, whose refill is paid when the next block is not the fall-through


def cost_block(lines: list[tuple[int, int, str, str]], timing: Timing) -> Block:
    """``lines``: (address, size in bytes, mnemonic, operands) of one block, in order."""
    decoded, previous_memory = [], False
    for _, _, mnemonic, operands in lines:
        decoded.append(decode(mnemonic, operands, timing, previous_memory))
        previous_memory = decoded[-1].memory
    counts = np.zeros(len(CLASSES))
    for insn in decoded:
        counts[CLASSES.index(insn.kind)] += 1
    cycles = _dual_issue(decoded) if timing.dual_issue else sum(insn.cycles for insn in decoded)
    address, size, _, _ = lines[-1]
    return Block(counts, cycles, address + size, decoded[-1].kind == "branch")


def _dual_issue(decoded: list[Instruction]) -> float:
    """Greedy pairing of neighbours (see the module's docstring): a pair costs its dearer instruction."""
    cycles, k = 0.0, 0
    while k < len(decoded):
        first = decoded[k]
        second = decoded[k + 1] if k + 1 < len(decoded) else None
        if (second is not None and "branch" not in (first.kind, second.kind) and not (first.memory and second.memory)
                and not (first.multiply and second.multiply)):
            cycles, k = cycles + max(first.cycles, second.cycles), k + 2
        else:
            cycles, k = cycles + first.cycles, k + 1
    return cycles


@dataclass
class Tally:
    """What one inference executed, per layer: instructions per class and estimated cycles."""

    layers: int
    counts: np.ndarray = field(init=False)
    cycles: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.counts = np.zeros((self.layers, len(CLASSES)))
        self.cycles = np.zeros(self.layers)


def tally(log: Iterable[str], timing: Timing, start_pc: int, mark_pc: int, layers: int) -> Tally:
    """Stream-parse a ``-d exec,nochain,in_asm`` log: the blocks run from the first entry of ``start_pc`` until
    the ``layers``-th entry of ``mark_pc``, attributed to layers by those entries. Executions are only counted
    per block and layer here (a log line each, millions of them); the costs are summed once at the end."""
    costed: list[Block] = []  # every translation, by its index
    current: dict[str, int] = {}  # host pointer -> the translation that lives there now
    executions = [Counter() for _ in range(layers)]
    taken, pending = [0] * layers, []
    layer, previous = -1, None
    for line in log:
        if line[:1] != "T":
            match = _INSN.match(line) if line[:2] == "0x" else None
            if match:
                pending.append((int(match[1], 16), len(match[2].replace(" ", "")) // 2, match[3], match[4]))
            continue
        parts = line.split(" ", 4)
        if len(parts) < 4 or parts[0] != "Trace":
            continue
        if pending:  # the block translated just now runs first
            current[parts[2]] = len(costed)
            costed.append(cost_block(pending, timing))
            pending = []
        pc = int(parts[3][1:].split("/")[1], 16)
        if layer < 0:
            if pc != start_pc:
                continue
            layer = 0
        elif pc == mark_pc:
            layer += 1
            if layer == layers:
                return _sum(costed, executions, taken, timing)
        index = current.get(parts[2])
        if index is None:
            continue
        if previous is not None and previous.branches and pc != previous.end:
            taken[layer] += 1
        executions[layer][index] += 1
        previous = costed[index]
    raise target.HilError(f"the trace ended after {max(layer, 0)} of {layers} layers")


def _sum(costed: list[Block], executions: list[Counter], taken: list[int], timing: Timing) -> Tally:
    """Per layer: executions x each block's instructions by class and cycles, plus the taken branches' refills."""
    result = Tally(len(executions))
    for layer, counter in enumerate(executions):
        for index, times in counter.items():
            result.counts[layer] += times * costed[index].counts
            result.cycles[layer] += times * costed[index].cycles
        result.cycles[layer] += taken[layer] * timing.taken_branch_penalty
    return result


def _symbol(elf: Path, name: str) -> int:
    """A function's address in ``elf`` (the Thumb bit cleared: QEMU logs even addresses)."""
    table = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True, check=True).stdout
    for line in table.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16) & ~1
    raise target.HilError(f"{elf.name} has no symbol {name}; build it with the profile marks")


@contextlib.contextmanager
def _fifo() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bisup-trace-") as folder:
        path = Path(folder) / "qemu.log"
        os.mkfifo(path)
        yield path


def estimate(machine: str, bundle: Bundle, x_q: np.ndarray, layers: int, workdir: Path,
             wait_s: tuple[float, float], handler: RequestHandler) -> Tally:
    """Trace one inference of ``x_q`` on the emulated ``machine`` and tally it per layer (``layers`` profile
    marks). ``wait_s``: the HELLO and report waits, in the board's own time; ``handler``: the bridge role, which
    greets the board back (until then it only greets) and answers it if it relays."""
    board = target.emulated(machine)
    elf = target.build_firmware(machine, bundle, workdir)
    start_pc, mark_pc = _symbol(elf, "bisup_model_infer"), _symbol(elf, "bisup_model_profile_mark")
    found: dict[str, Tally | Exception] = {}
    with _fifo() as fifo:
        reader = threading.Thread(target=_read, args=(fifo, TIMINGS[board.cpu], start_pc, mark_pc, layers, found))
        reader.start()
        try:
            with target.qemu(machine, elf, loaders=[target.image_loader(machine, workdir / target.MODEL_IMAGE)],
                             extra=["-d", "exec,nochain,in_asm", "-D", str(fifo)]) as link:
                session = _TracedSession(link, handler)
                session.handshake(bundle.model_hash, wait_s[0])
                session.feed(0, x_q, wait_s[1])
        finally:
            with contextlib.suppress(OSError):  # a reader still waiting for QEMU to open the log: release it
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            reader.join()
    outcome = found.get("tally", found.get("error"))
    if not isinstance(outcome, Tally):
        raise target.HilError(f"tracing the inference failed: {outcome}")
    return outcome


class _TracedSession(target.HilSession):
    """A session whose waits never give up in host time: a traced QEMU runs at the log parser's pace, far below
    what an untraced one must reach (its waits still end in the board's own time)."""

    MIN_WALL_S = float("inf")


def _read(fifo: Path, timing: Timing, start_pc: int, mark_pc: int, layers: int, found: dict) -> None:
    """The reader thread: tally the trace, then drain the FIFO until QEMU closes it (a full FIFO stops QEMU)."""
    with open(fifo, errors="replace") as log:
        try:
            found["tally"] = tally(log, timing, start_pc, mark_pc, layers)
        except (target.HilError, ValueError) as exc:
            found["error"] = exc
        finally:
            for _ in iter(lambda: log.read(1 << 20), ""):
                pass


def summary(found: Tally, cpu: str) -> dict:
    """The report's ``device_cycle_estimate``: totals, the instruction mix, and per layer instructions, estimated
    cycles and their ratio."""
    instructions, cycles = found.counts.sum(axis=1), found.cycles
    return {
        "core": cpu,
        "timings": "Cortex-M4 TRM Table 3-1" if TIMINGS[cpu] is M4 else "approximation (bisup.hil.cycles)",
        "instructions": int(instructions.sum()),
        "cycles": float(cycles.sum()),
        "cycles_per_instruction": float(cycles.sum() / max(instructions.sum(), 1)),
        "mix": {name: float(found.counts[:, k].sum() / max(instructions.sum(), 1)) for k, name in enumerate(CLASSES)},
        "layers": [{"instructions": int(n), "cycles": float(c), "cycles_per_instruction": float(c / n) if n else None}
                   for n, c in zip(instructions, cycles, strict=True)],
    }
