"""``bisup bridge --serial``: one session per port, frames in, supervised answers out.

The port is any pyserial URL (a device path, ``socket://``, ``loop://``, ``spy://``, a pty). A
port that disappears (unplug, closed socket) is reopened with exponential backoff while the
session's dedup cache survives, so a device that retries after replugging gets its cached answer.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections.abc import Callable, Iterator

import serial

from bisup.converters.errors import BisupError
from bisup.firmware_bridge import framing
from bisup.firmware_bridge import protocol as p
from bisup.firmware_bridge.handler import RequestHandler
from bisup.firmware_bridge.ptylink import PtyPort, pty_pair

log = logging.getLogger("bisup.bridge")
MIN_BACKOFF_S, MAX_BACKOFF_S = 0.05, 5.0


class BridgeError(BisupError, RuntimeError):
    """A port that cannot be opened at start; the message names it and the fix."""


LIST_PORTS = "list ports with `python -m serial.tools.list_ports`"


def port_problem(url: str, exc: Exception) -> str:
    """``cannot open serial port URL: REASON; FIX`` in one line. pyserial repeats the errno and the path
    ("[Errno 2] could not open port X: [Errno 2] No such file or directory: 'X'") and names no fix."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOENT:
        reason = f"no such device; check the cable and the path, {LIST_PORTS}"
    elif code == errno.EACCES:
        reason = ("permission denied; add this user to the port's group (often dialout: sudo usermod -aG dialout "
                  "$USER, then log in again)")
    elif code in (errno.EBUSY, errno.EAGAIN):
        reason = "in use by another program (a monitor or another bridge?); close it and retry"
    elif code is not None:
        reason = f"{os.strerror(code).lower()}; check the cable and the path, {LIST_PORTS}"
    else:  # socket://, rfc2217:// and other URLs carry their own reason
        reason = str(exc).split(": ", 1)[-1] if str(exc).lower().startswith("could not open port") else str(exc)
    return f"cannot open serial port {url}: {reason}"


class SerialBridge:
    """Serves one port until ``stop`` is set."""

    def __init__(self, url: str, handler: RequestHandler, baud: int = 921600,
                 opener: Callable[..., serial.SerialBase] = serial.serial_for_url):
        self.url, self.handler, self.baud, self._open = url, handler, baud, opener
        self.device = self._port_name(url)  # replaced by the id the device gives in HELLO
        self.reopens = 0

    @staticmethod
    def _port_name(url: str) -> str:
        """``serial:URL``, cut to the length of a device id (which becomes state and a metric label)."""
        name = f"serial:{url}"
        short = p.bounded_id(name)
        if short != name:
            log.warning("the device on %s is called %s until it says HELLO: device ids are at most %d characters",
                        url, short, p.MAX_ID)
        return short

    def _reply(self, port: serial.SerialBase | PtyPort, body: bytes | None) -> None:
        if body is not None:
            port.write(framing.encode_frame(body))

    def _serve(self, port: serial.SerialBase | PtyPort, stop: threading.Event) -> None:
        reader = framing.FrameReader()
        while not stop.is_set():
            data = port.read(port.in_waiting or 1)
            for item in reader.feed(data):
                if isinstance(item, p.ProtocolError):
                    self._reply(port, self.handler.error(item, self.device))
                    continue
                self._note_device(item)
                self._reply(port, self.handler.handle(self.device, item))

    def _note_device(self, body: bytes) -> None:
        if len(body) > 1 and body[1] == p.MsgType.HELLO:
            try:
                self.device = p.decode(body).device_id
            except p.ProtocolError:
                pass  # the handler answers it with an ERROR

    def run(self, stop: threading.Event, wait_for_port: bool = True) -> None:
        """Serve until ``stop``; with ``wait_for_port`` False, a port that cannot be opened the first
        time raises BridgeError instead of being retried (a typo should not look like a hang)."""
        backoff, opened_once = MIN_BACKOFF_S, False
        while not stop.is_set():
            try:
                port = self._open(self.url, baudrate=self.baud, timeout=0.05)
            except (serial.SerialException, OSError, ValueError) as exc:
                if not opened_once and not wait_for_port:
                    raise BridgeError(f"{port_problem(self.url, exc)}; or pass --wait to wait until it "
                                      "appears") from exc
                log.warning("cannot open %s (%s); retrying in %.2f s", self.url, exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            backoff, opened_once = MIN_BACKOFF_S, True
            try:
                self._serve(port, stop)
            except (serial.SerialException, OSError) as exc:
                self.reopens += 1
                log.warning("lost %s (%s); reopening", self.url, exc)
            finally:
                port.close()


@contextlib.contextmanager
def bridge_over_pty(handler: RequestHandler) -> Iterator[PtyPort]:
    """A serial bridge serving one end of a fresh pty pair; yields the device's end."""
    device_port, bridge_path, slave_fd = pty_pair()
    stop = threading.Event()
    bridge = SerialBridge(bridge_path, handler)
    thread = threading.Thread(target=bridge.run, args=(stop,), name="bisup-serial-bridge", daemon=True)
    thread.start()
    try:
        yield device_port
    finally:
        stop.set()
        thread.join(timeout=5)
        device_port.close()
        os.close(slave_fd)
