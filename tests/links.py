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


class StderrLines:
    """A child process's stderr, read on a thread from the start: a bridge that logs while nobody reads would
    fill the pipe and block, and a test waits for what the process says rather than for a time."""

    def __init__(self, process: subprocess.Popen):
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._done = False
        self._thread = threading.Thread(target=self._read, args=(process.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._done = True
            self._changed.notify_all()

    def wait_for(self, text: str, timeout_s: float = 600.0) -> tuple[str, list[str]]:
        """The first line holding ``text`` and every line before it; fails if the process ends first."""
        def found() -> int | None:
            return next((i for i, line in enumerate(self.lines) if text in line), None)

        with self._changed:
            self._changed.wait_for(lambda: found() is not None or self._done, timeout=timeout_s)
            at = found()
        assert at is not None, f"the process never said {text!r}:\n" + "".join(self.lines)
        return self.lines[at], self.lines[:at]

    def text(self, timeout_s: float = 60.0) -> str:
        """Everything the process said, once its stderr has closed."""
        self._thread.join(timeout_s)
        return "".join(self.lines)
