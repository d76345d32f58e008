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
        os.set_blocking(fd, False)  # a write takes what fits (see ``write``); reads wait in select
        self.fd, self.timeout = fd, timeout

    @property
    def in_waiting(self) -> int:
        """Unknown for a pty master; ``read`` takes whatever is there (pyserial's callers read max(n, 1))."""
        return 0

    def write(self, data: bytes) -> int:
        """Write what the far end takes within ``timeout``; the rest is lost, as on a UART that nobody reads
        (no flow control). A pty blocks instead once its buffer is full, which would hang a device whose
        bridge has died. Returns the bytes written."""
        view = memoryview(data)
        while view:
            _, writable, _ = select.select([], [self.fd], [], self.timeout)
            if not writable:
                break
            try:
                view = view[os.write(self.fd, view):]
            except BlockingIOError:
                continue
        return len(data) - len(view)

    def read(self, size: int = 1) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], self.timeout)
        if not ready:
            return b""
        try:
            return os.read(self.fd, max(size, 4096))
        except BlockingIOError:  # another handle on the same master read it first
            return b""

    def close(self) -> None:
        os.close(self.fd)


class PtyServer:
    """A pty whose master a bridge serves and whose slave path a device opens (``bisup bridge --serial pty``).

    The bridge keeps the slave open too, so the pty outlives each device run: a device can come and go
    (a new ``bisup device`` per boot) without the master seeing end-of-file."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.device_path = os.ttyname(self.slave)

    def open(self, *args: object, **kwargs: object) -> PtyPort:
        """A pyserial-style opener for ``SerialBridge``: a fresh handle on the master each time."""
        return PtyPort(os.dup(self.master))

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


def pty_pair() -> tuple[PtyPort, str, int]:
    """(device-side port, bridge-side path, slave fd to close when done)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    tty.setraw(master)
    return PtyPort(master), os.ttyname(slave), slave
