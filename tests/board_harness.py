"""A C check program (tests/c/*_harness.c) alone on an emulated board: built with the board's shared part and the
engine's kernels, booted in QEMU, and its one answer read: a four-byte tag, then little-endian 32-bit words.

Waits run on QEMU's CPU time (``BoardLink.clock``), so a busy host makes the check slower, never a failure."""

from __future__ import annotations

import struct
from pathlib import Path

from bisup.hil import target

C_DIR = Path(__file__).parent / "c"


def run_harness(board: str, source: Path, workdir: Path, tag: bytes, words: int, budget_s: float) -> tuple[int, ...]:
    """``source``'s answer on ``board``: asserts it starts with ``tag`` and returns its ``words`` words."""
    (workdir / "hil_config.h").write_text(target.config_header(f"qemu-{board}", 0, 0))  # board.c's
    elf = target.compile_firmware(board, workdir, [source], 1024, [])
    size, answer = len(tag) + 4 * words, b""
    with target.qemu(board, elf) as link:
        start = link.clock()
        while len(answer) < size:
            assert link.clock() - start < budget_s, f"the harness answered {answer!r} in {budget_s:g} s of QEMU's CPU"
            answer += link.port.read(size - len(answer))
    assert answer[:len(tag)] == tag, answer
    return struct.unpack(f"<{words}I", answer[len(tag):])
