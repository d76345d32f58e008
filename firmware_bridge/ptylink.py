"""A pseudo-terminal pair as a serial link, for tests, the demo and benchmarks without a board.

``os.openpty`` gives two ends: the slave has a path that pyserial opens like any port (the bridge
side), and the master is wrapped in ``PtyPort``, a minimal pyserial-like object (the device side).
The slave is put in raw mode at once so no byte is echoed or translated before anyone opens it.
"""

from __future__ import annotations

import os
import select
import tty


class PtyPort:
    """The master end of a pty with the subset of pyserial's API the virtual device uses."""

    def __init__(self, fd: int, timeout: float = 0.05):
        self.fd, self.timeout = fd, timeout

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        return len(data)

    def read(self, size: int = 1) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], self.timeout)
        return os.read(self.fd, max(size, 4096)) if ready else b""

    def close(self) -> None:
        os.close(self.fd)


def pty_pair() -> tuple[PtyPort, str, int]:
    """(device-side port, bridge-side path, slave fd to close when done)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    tty.setraw(master)
    return PtyPort(master), os.ttyname(slave), slave
