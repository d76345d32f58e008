"""HIL's waits and cycle estimate without QEMU: the arithmetic and the parsing, on made-up boards and logs.

tests/test_hil.py runs them on the emulated boards (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from bisup.firmware_bridge import framing
from bisup.firmware_bridge import protocol as p
from bisup.hil import cycles, target


def test_an_emulated_boards_wait_grows_with_the_model():
    """The wait for a report covers the inference and the input frame at generous ceilings, and never less than
    the board's own wait for a bridge answer (after which it resends, which starts the wait again)."""
    small_hello, small = target.emulated_waits(macs=20_000, frame_bytes=100)
    _, big = target.emulated_waits(macs=60_000_000, frame_bytes=27_700)
    assert small == 2 * target.EMULATED_REQUEST_TIMEOUT_MS / 1000 and small_hello < 1
    assert big == pytest.approx((60_000_000 * 60 + 27_700 * 40_000) / 1e9) and big > small


class _SilentPort:
    def read(self, size: int) -> bytes:
        return b""

    def write(self, data: bytes) -> None:
        pass


def test_a_host_too_busy_to_emulate_is_named_with_its_load():
    """A board whose clock does not move (QEMU gets no CPU) is given up in host time, and the message says what
    QEMU ran of the wait, what CPU it got and the machine's load, not \"no HELLO within 10 s\"."""

    class Session(target.HilSession):
        MIN_WALL_S, SLOWEST_USEFUL_RATE = 0.0, float("inf")

    link = target.BoardLink(_SilentPort(), clock=lambda: 0.001, emulated=True, cpu=lambda: 0.5)
    with pytest.raises(target.HilError, match=r"too busy to emulate the board: in 0 s QEMU ran 0 M of the 1,000 M "
                                              r"instructions this wait allows .*QEMU had 0.0 s of CPU; load average "):
        Session(link, None).handshake(b"\0" * 32, 1.0)


class _ScriptedPort(_SilentPort):
    """A board that sends ``frames`` and then nothing."""

    def __init__(self, frames: list[bytes]) -> None:
        self.data = b"".join(framing.encode_frame(body) for body in frames)

    def read(self, size: int) -> bytes:
        data, self.data = self.data[:size], self.data[size:]
        return data


def _hello(boot: int) -> bytes:
    return p.encode(p.Hello(1, (0, 2, 0), b"\1" * 32, "qemu-test", boot=boot))


def test_repeated_greetings_are_not_answered_and_a_restart_is_named():
    """Greetings the board sent before it heard the host's get no answer (each would draw another HELLO); a
    greeting from another boot means the board restarted."""
    ticks = iter(np.arange(0, 100, 0.01))
    link = target.BoardLink(_ScriptedPort([_hello(7), _hello(7), _hello(7)]), clock=lambda: next(ticks))
    session = target.HilSession(link, None)
    session.handshake(b"\1" * 32, 1.0)
    assert session.feed(0, np.zeros(4, np.int8), 0.5) is None
    link.port = session.port = _ScriptedPort([_hello(8)])
    with pytest.raises(target.HilError, match=r"the board restarted \(boot id 0x7, now 0x8\)"):
        session.feed(1, np.zeros(4, np.int8), 0.5)


# A made-up -d exec,nochain,in_asm log in QEMU 7.2's format: a loop block (a load, a MAC, a store, a
# conditional branch back) run three times, the mark function entered after the first and the third pass.
LOG = """----------------
IN: bisup_model_infer
0x00000100:  6808       ldr      r0, [r1]
0x00000102:  fb00 2203  mla      r2, r0, r3, r2
0x00000106:  6008       str      r0, [r1]
0x00000108:  d1fa       bne      #0x100

Trace 0: 0x7f0000000100 [00000000/00000100/00000110/ff020200] bisup_model_infer
----------------
IN: bisup_model_profile_mark
0x00000200:  b510       push     {r4, lr}
0x00000202:  bd10       pop      {r4, pc}

Trace 0: 0x7f0000000200 [00000000/00000200/00000110/ff020200] bisup_model_profile_mark
Trace 0: 0x7f0000000100 [00000000/00000100/00000110/ff020200] bisup_model_infer
Trace 0: 0x7f0000000100 [00000000/00000100/00000110/ff020200] bisup_model_infer
Trace 0: 0x7f0000000200 [00000000/00000200/00000110/ff020200] bisup_model_profile_mark
Trace 0: 0x7f0000000300 [00000000/00000300/00000110/ff020200] main
"""


def test_cycles_are_tallied_per_layer_from_the_instruction_mix():
    """M4: the block is LDR 2 + MLA 2 + STR 1 (after a load) + branch 1 = 6 cycles for 4 instructions, and each
    block entered by a taken branch (not its predecessor's fall-through) pays the refill (2). Layer 0 is the first
    pass; layer 1 the mark's block (PUSH 3 + POP {pc} 3, reached by the taken bne), then two passes (reached by
    the mark's POP {pc} and by the bne)."""
    found = cycles.tally(LOG.splitlines(), cycles.M4, start_pc=0x100, mark_pc=0x200, layers=2)
    assert found.counts[0].tolist() == [2, 1, 1, 0, 0]  # load/store, multiply/MAC, branch, DSP SIMD, other
    assert found.cycles[0] == 6
    assert found.counts[1].tolist() == [5, 2, 3, 0, 0]
    assert found.cycles[1] == 2 + 6 + 2 + 6 + 2 + 6
    summary = cycles.summary(found, "cortex-m4")
    assert summary["instructions"] == 14 and summary["cycles_per_instruction"] == pytest.approx(30 / 14)
    assert summary["timings"] == "Cortex-M4 TRM Table 3-1"


def test_m7_dual_issue_pairs_neighbours_that_do_not_compete():
    """Two ALU instructions issue together; two loads do not; a branch never pairs."""
    def block(*mnemonics: str) -> float:
        lines = [(0x100 + 2 * k, 2, m, "r0, [r1]" if m.startswith(("ldr", "str")) else "r0, r1")
                 for k, m in enumerate(mnemonics)]
        return cycles.cost_block(lines, cycles.M7).cycles

    assert block("adds", "adds") == 1 and block("ldr", "ldr") == 2 and block("ldr", "adds") == 1
    assert block("mul", "mla") == 2 and block("adds", "b") == 2


def test_a_trace_that_ends_early_is_named():
    with pytest.raises(target.HilError, match="the trace ended after 2 of 5 layers"):
        cycles.tally(LOG.splitlines(), cycles.M4, start_pc=0x100, mark_pc=0x200, layers=5)
