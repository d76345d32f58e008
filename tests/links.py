"""Test links: two pty pairs joined by a proxy thread that can flip and drop bytes (line noise)."""

from __future__ import annotations

import os
import random
import select
import subprocess
import threading
import tty


class NoisyProxy:
    """Joins pty pair A and pair B; devices open ``path_a``, bridges ``path_b``."""

    def __init__(self, flip: float = 0.0, drop: float = 0.0, seed: int = 0):
        self.masters, self.slaves = [], []
        for _ in range(2):
            master, slave = os.openpty()
            tty.setraw(master)
            tty.setraw(slave)
            self.masters.append(master)
            self.slaves.append(slave)
        self.path_a, self.path_b = (os.ttyname(s) for s in self.slaves)
        self.flip, self.drop, self.rng = flip, drop, random.Random(seed)
        self.flipped = self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)

    def _noisy(self, data: bytes) -> bytes:
        out = bytearray()
        for byte in data:
            if self.rng.random() < self.drop:
                self.dropped += 1
                continue
            if self.rng.random() < self.flip:
                byte ^= 1 << self.rng.randrange(8)
                self.flipped += 1
            out.append(byte)
        return bytes(out)

    def _pump(self) -> None:
        a, b = self.masters
        while not self._stop.is_set():
            ready, _, _ = select.select([a, b], [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                os.write(b if fd == a else a, self._noisy(data))

    def __enter__(self) -> NoisyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for fd in self.masters + self.slaves:
            os.close(fd)


def wait_for_line(process: subprocess.Popen, text: str) -> tuple[str, list[str]]:
    """Read ``process``'s stderr until a line holds ``text`` (a bridge that says it serves); return that line
    and every line before it. Waiting for the line, not for a time, keeps a loaded machine from failing it."""
    before = []
    while True:
        line = process.stderr.readline()
        assert line, "the process exited before saying " + repr(text) + ":\n" + "".join(before)
        if text in line:
            return line, before
        before.append(line)
