"""A link you can control: a ``LinkSchedule`` applied to real bytes in real time, between a device and the bridge.

The emulator sits on the byte stream, so the device, the bridge and their retry and timeout logic run unchanged.
Each direction is a line of its own (full duplex); what it does to the bytes:

* bandwidth: a chunk occupies the line for ``8 * bytes / bandwidth`` (serialisation) after what is already
  queued on it, so a burst queues behind itself. The queue is bounded (``queue_bytes``, 256 KiB by default) so a
  flooding sender cannot grow the emulator's memory: past it a serial line drops what comes in, as a radio's full
  transmit buffer does (counted as ``overflow``), and a TCP line stops reading the sender until half has drained,
  so TCP's own flow control pushes back on it. A serial frame still unfinished past that bound is dropped too;
* delay: every byte arrives half the phase's round trip after it left the line;
* loss and outage, per kind of link:

  - ``serial`` (a UART or radio serial bridge, a byte stream with no retransmission): bytes travel in packets of
    ``packet_bytes``, each lost with the phase's probability; a lost packet's bytes vanish (the frame's CRC or
    its COBS framing then fails, and the device's timeout and resend act). In an outage every byte is dropped.
  - ``tcp`` (the MQTT proxy; TCP never loses bytes, it resends them): each packet (segment) is lost with the
    phase's probability per attempt, independently, and every lost attempt costs one retransmission timeout
    ``max(2 * rtt, MIN_RTO_S)`` before the resend; delivery stays in order, so later segments wait behind it
    (head-of-line blocking). In an outage bytes are held and leave when the link comes back (the connection is
    not cut: TCP and MQTT keep-alives usually outlast a short outage; a schedule ending in an outage holds them
    for ever).

A phase is taken at the moment a packet starts on the line (a packet straddling a phase change keeps the first
phase's rate). After the schedule's ``end`` the last phase goes on.

``time_scale`` compresses the schedule: link time runs ``time_scale`` times faster than the host's clock, so a
two-minute schedule plays in 12 s at 10; bandwidths are multiplied by it and delays divided. Whatever runs on
either side (a device's timeout, the host's compute) keeps host time, so scale those waits by the same factor.

One thread serves every connection with a selector and a heap of pending deliveries: no busy loop, and
``close`` stops it promptly.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import random
import selectors
import socket
import threading
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import serial

from bisup.converters.errors import BisupError
from bisup.firmware_bridge.link_schedule import LinkSchedule, Phase
from bisup.firmware_bridge.serial_bridge import port_problem

PACKET_BYTES = 64  # a radio packet (BLE's is 27..251 B, LoRa's up to 255 B); the unit of loss
MIN_RTO_S = 0.2  # Linux's minimum TCP retransmission timeout
SEND_TIMEOUT_S = 5.0  # a TCP peer that takes nothing for this long is cut off
QUEUE_BYTES = 256 * 1024  # per direction: a TCP socket buffer's order, ten times bisup's largest frame


class LinkError(BisupError, RuntimeError):
    """A link emulator that cannot start (a port in use, a device that cannot be opened)."""


class End:
    """One side's file descriptor (a pty, a serial port). ``read``: the bytes there, None if none yet, b"" once
    the other side has gone."""

    def __init__(self, fd: int):
        os.set_blocking(fd, False)
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def read(self) -> bytes | None:
        try:
            return os.read(self.fd, 4096)
        except BlockingIOError:
            return None
        except OSError:  # a pty whose other side went away
            return b""

    def write(self, data: bytes) -> None:
        """What the other side takes now; the rest is lost, as on a UART nobody reads (no flow control)."""
        try:
            os.write(self.fd, data)
        except OSError:
            pass

    def close(self) -> None:
        """Nothing: the fd belongs to whoever opened it (a pty pair, a serial port object)."""


class SocketEnd(End):
    """A TCP connection; a write blocks up to ``SEND_TIMEOUT_S`` (TCP's flow control), then cuts it."""

    def __init__(self, sock: socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(SEND_TIMEOUT_S)
        self.sock, self.fd = sock, sock.fileno()

    def read(self) -> bytes | None:
        try:
            return self.sock.recv(65536)
        except (BlockingIOError, TimeoutError):
            return None
        except OSError:
            return b""

    def write(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            self.sock.close()

    def close(self) -> None:
        self.sock.close()


@dataclass
class LineStats:
    """One direction's bytes: taken from the sender, delivered, dropped (serial loss, outages and overflow), of
    those dropped because the queue was full (``overflow``), and packets resent or held by an outage (tcp)."""

    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    overflow: int = 0
    resent: int = 0
    held: int = 0


@dataclass
class Line:
    """One direction of the link, in link time: when the line is free again and when the last packet arrived."""

    schedule: LinkSchedule
    lossless: bool  # tcp: resend lost packets and hold bytes in outages; serial: drop them
    rng: random.Random
    queue_bytes: int = QUEUE_BYTES
    queued: int = 0  # planned, not yet delivered
    peak_queued: int = 0
    free_at: float = 0.0
    last_arrival: float = 0.0
    stats: LineStats = field(default_factory=LineStats)

    def _open_at(self, t: float) -> tuple[float, Phase] | None:
        """The first moment from ``t`` on when the link carries bytes, and its phase (None: an outage to the end)."""
        for start, stop, phase in self.schedule.spans():
            if stop > t and not phase.outage:
                return max(t, start), phase
        last = self.schedule.phases[-1]
        return None if last.outage else (t, last)

    def plan(self, data: bytes, now: float, packet_bytes: int) -> list[tuple[float, bytes]]:
        """``(arrival, packet)`` in link time for each packet of ``data`` that gets through, taken at ``now``."""
        self.stats.sent += len(data)
        out = []
        for i in range(0, len(data), packet_bytes):
            packet = data[i:i + packet_bytes]
            full = not self.lossless and self.queued + len(packet) > self.queue_bytes
            arrival = None if full else self._packet(packet, max(now, self.free_at))
            if arrival is None:
                self.stats.dropped += len(packet)
                self.stats.overflow += len(packet) if full else 0
            else:
                self.last_arrival = max(arrival, self.last_arrival)  # in order, as a byte stream is
                self.add(len(packet))
                out.append((self.last_arrival, packet))
        return out

    def add(self, size: int) -> None:
        """``size`` more bytes planned on the line."""
        self.queued += size
        self.peak_queued = max(self.peak_queued, self.queued)

    @property
    def full(self) -> bool:
        """More queued than the bound: a TCP sender is no longer read."""
        return self.queued > self.queue_bytes

    def _packet(self, packet: bytes, start: float) -> float | None:
        phase = self.schedule.at(start)
        if phase.outage and not self.lossless:
            return None
        if phase.outage:
            opened = self._open_at(start)
            if opened is None:
                return None
            self.stats.held += len(packet)
            start, phase = opened
        self.free_at = start + len(packet) * 8 / phase.bandwidth_bps
        arrival = self.free_at + phase.rtt_s / 2
        while self.rng.random() < phase.loss:
            if not self.lossless:
                return None
            self.stats.resent += 1
            arrival += max(2 * phase.rtt_s, MIN_RTO_S)
        return arrival


@dataclass
class _Route:
    """Bytes from ``source`` to ``target`` over ``line``; ``peer`` is the opposite direction of the connection;
    ``partial``: the start of a frame not yet complete (with ``spare``); ``paused``: not read until the line
    drains (a full TCP line)."""

    source: End
    target: End
    line: Line
    peer: _Route | None = None
    partial: bytes = b""
    paused: bool = False


class LinkEmulator:
    """Carries bytes between pairs of ends through the schedule (see the module docstring)."""

    def __init__(self, schedule: LinkSchedule, kind: str = "serial", time_scale: float = 1.0,
                 packet_bytes: int = PACKET_BYTES, seed: int = 0, spare: Callable[[bytes], bool] | None = None,
                 queue_bytes: int = QUEUE_BYTES):
        """``spare``: serial only, a test harness's own frames sharing the line (HIL's FEED and REPORT): the stream
        is cut into frames at each 0x00 delimiter, and a frame for which ``spare(frame)`` holds is untouched by the
        link: no delay, bandwidth or loss, though never ahead of bytes already in flight, so the order of frames
        holds (a HELLO's reply, then a FEED). The others are held until their delimiter and go through whole."""
        if kind not in ("serial", "tcp"):
            raise LinkError(f"link kind {kind!r} is neither 'serial' nor 'tcp'")
        if time_scale <= 0:
            raise LinkError(f"time scale {time_scale:g} must be positive (1: real time; 10: ten times faster)")
        if packet_bytes < 1:
            raise LinkError(f"packet size {packet_bytes} must be at least 1 byte")
        if queue_bytes < packet_bytes:
            raise LinkError(f"queue bound {queue_bytes} B must hold at least one packet ({packet_bytes} B)")
        self.queue_bytes = queue_bytes
        self.schedule, self.lossless, self.time_scale = schedule, kind == "tcp", time_scale
        self.packet_bytes, self.rng, self.spare = packet_bytes, random.Random(seed), spare
        self.lines: list[Line] = []
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._due: list[tuple[float, int, _Route, bytes | None]] = []
        self._order = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bisup-link", daemon=True)
        self.t0 = time.monotonic()

    def link_time(self) -> float:
        """Seconds of link time since ``start`` (host seconds times the time scale)."""
        return (time.monotonic() - self.t0) * self.time_scale

    def phase(self) -> Phase:
        return self.schedule.at(self.link_time())

    def join(self, a: End, b: End) -> tuple[Line, Line]:
        """Carry bytes between ``a`` (the device's side) and ``b`` (the bridge's or broker's), each way on its own
        line; returns the lines a->b (up) and b->a (down)."""
        forward = _Route(a, b, self._line())
        backward = _Route(b, a, self._line(), forward)
        forward.peer = backward
        for route in (forward, backward):
            self._selector.register(route.source, selectors.EVENT_READ, route)
        return forward.line, backward.line

    def totals(self) -> dict[str, LineStats]:
        """Bytes per direction over every connection so far: ``up`` (device to bridge) and ``down``."""
        sums = {"up": LineStats(), "down": LineStats()}
        for i, line in enumerate(list(self.lines)):
            total = sums["up" if i % 2 == 0 else "down"]
            for name in vars(total):
                setattr(total, name, getattr(total, name) + getattr(line.stats, name))
        return sums

    def _line(self) -> Line:
        line = Line(self.schedule, self.lossless, random.Random(self.rng.random()), self.queue_bytes)
        self.lines.append(line)
        return line

    def watch(self, fileobj: socket.socket, on_ready: Callable[[], None]) -> None:
        """Call ``on_ready`` on the emulator's thread when ``fileobj`` is readable (a listening socket)."""
        self._selector.register(fileobj, selectors.EVENT_READ, on_ready)

    def start(self) -> LinkEmulator:
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def restart(self) -> None:
        """Start the schedule again from now (e.g. once a handshake is done); call it with no bytes in flight."""
        self.t0 = time.monotonic()
        for line in self.lines:
            line.free_at = line.last_arrival = 0.0

    def close(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        for key in list(self._selector.get_map().values()):
            if isinstance(key.data, _Route):
                key.data.source.close()
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> LinkEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = max(0.0, self._due[0][0] - time.monotonic()) if self._due else None
            for key, _ in self._selector.select(wait):
                if isinstance(key.data, _Route):
                    self._take(key.data)
                elif key.data is not None:
                    key.data()
            self._deliver(time.monotonic())

    def _take(self, route: _Route) -> None:
        data = route.source.read()
        if data is None:
            return
        if not data:  # the sender left: close the connection once what it sent has arrived
            self._hang_up(route)
            return
        host_now = time.monotonic()
        for chunk in self._frames(route, data):
            if self.spare is not None and self.spare(chunk):  # never ahead of what is in flight: order holds
                when = max(host_now, self.t0 + route.line.last_arrival / self.time_scale)
                route.line.add(len(chunk))
                heapq.heappush(self._due, (when, next(self._order), route, chunk))
                continue
            for arrival, packet in route.line.plan(chunk, (host_now - self.t0) * self.time_scale, self.packet_bytes):
                heapq.heappush(self._due, (self.t0 + arrival / self.time_scale, next(self._order), route, packet))
        if route.line.lossless and route.line.full:  # stop reading: the sender's socket buffer fills, TCP pushes back
            self._selector.unregister(route.source)
            route.paused = True

    def _frames(self, route: _Route, data: bytes) -> list[bytes]:
        """``data`` as it goes on the line: as read, or with ``spare`` whole frames (each with its delimiter)."""
        if self.spare is None:
            return [data]
        *frames, route.partial = (route.partial + data).split(b"\0")
        if len(route.partial) > route.line.queue_bytes:  # no frame is this long: a sender without delimiters
            route.line.stats.sent += len(route.partial)
            route.line.stats.dropped += len(route.partial)
            route.line.stats.overflow += len(route.partial)
            route.partial = b""
        return [frame + b"\0" for frame in frames]

    def _hang_up(self, route: _Route) -> None:
        for each in (route, route.peer):
            if each is not None and each.source.fileno() in self._selector.get_map():
                self._selector.unregister(each.source)
            if each is not None:
                each.paused = False  # closing: never read again
        when = self.t0 + route.line.last_arrival / self.time_scale
        heapq.heappush(self._due, (max(when, time.monotonic()), next(self._order), route, None))

    def _deliver(self, host_now: float) -> None:
        while self._due and self._due[0][0] <= host_now:
            _, _, route, packet = heapq.heappop(self._due)
            if packet is None:
                route.source.close()
                route.target.close()
                continue
            route.target.write(packet)
            route.line.stats.delivered += len(packet)
            route.line.queued -= len(packet)
            if route.paused and route.line.queued <= route.line.queue_bytes // 2:
                route.paused = False
                self._selector.register(route.source, selectors.EVENT_READ, route)


class PtyLink:
    """The serial link through the emulator: the bridge opens ``bridge_path`` (a pty, a serial port to pyserial);
    the device opens ``device_path``, another pty, unless its own port is given as ``device`` (a real board's).
    The emulator holds the masters; the slaves stay open here too, so either side may close and reopen its port."""

    def __init__(self, emulator: LinkEmulator, device: End | None = None):
        self.emulator, self.fds, self.device_path = emulator, [], None
        if device is None:
            device, self.device_path = self._pty()
        bridge, self.bridge_path = self._pty()
        self.uplink, self.downlink = emulator.join(device, bridge)

    def _pty(self) -> tuple[End, str]:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        self.fds += [master, slave]
        return End(master), os.ttyname(slave)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


def open_serial(url: str, baud: int) -> serial.Serial:
    """A device's serial port, for the emulator to read and write by its fd; LinkError naming it and the fix."""
    try:
        port = serial.serial_for_url(url, baudrate=baud, timeout=0, exclusive=True)
    except (serial.SerialException, OSError, ValueError) as exc:
        if "busy" in str(exc).lower() or "lock" in str(exc).lower():
            raise LinkError(f"serial port {url} is in use by another program (a monitor or a bridge?); close it "
                            "and retry") from None
        raise LinkError(port_problem(url, exc)) from None
    try:
        port.fileno()
    except (AttributeError, OSError, NotImplementedError):
        port.close()
        raise LinkError(f"serial port {url} has no file descriptor to forward; give a device path such as "
                        "/dev/ttyUSB0") from None
    return port


def listen(host: str, port: int, what: str) -> socket.socket:
    """A listening socket on ``host:port``; LinkError naming the port and the fix if it is taken."""
    try:
        return socket.create_server((host, port))
    except OSError as exc:
        raise LinkError(f"cannot listen on {host}:{port} for {what}: {exc.strerror or exc}; "
                        "pick another port with --listen (0: any free port)") from None


class TcpProxy:
    """Clients connect to ``address``; each connection is carried to ``upstream`` (the broker) through the
    emulator, one line each way per connection."""

    def __init__(self, emulator: LinkEmulator, upstream: tuple[str, int], host: str = "127.0.0.1", port: int = 0):
        self.emulator, self.upstream = emulator, upstream
        self.server = listen(host, port, f"the proxy to {upstream[0]}:{upstream[1]}")
        self.server.setblocking(False)
        self.address: tuple[str, int] = self.server.getsockname()[:2]
        self.connections = 0
        emulator.watch(self.server, self._accept)

    def _accept(self) -> None:
        try:
            client, _ = self.server.accept()
        except BlockingIOError:
            return
        try:
            broker = socket.create_connection(self.upstream, timeout=SEND_TIMEOUT_S)
        except OSError:
            client.close()  # the client sees the broker as unreachable, as it would be
            return
        self.connections += 1
        self.emulator.join(SocketEnd(client), SocketEnd(broker))

    def close(self) -> None:
        self.server.close()


def between(emulator: LinkEmulator, device: End) -> tuple[socket.socket, tuple[Line, Line]]:
    """A loopback TCP socket whose far end is joined to ``device`` through the emulator: the host side of a
    board's line (a QEMU UART's socket, a serial port), to read and write in place of ``device``."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        near = socket.create_connection(server.getsockname()[:2])
        far, _ = server.accept()
    return near, emulator.join(device, SocketEnd(far))


@contextlib.contextmanager
def emulated_pty(schedule: LinkSchedule, time_scale: float = 1.0, seed: int = 0, device: End | None = None,
                 packet_bytes: int = PACKET_BYTES, queue_bytes: int = QUEUE_BYTES) -> Iterator[PtyLink]:
    """A serial link through ``schedule``, running: the bridge opens ``bridge_path``; the device opens
    ``device_path``, or is already on ``device`` (see ``PtyLink``)."""
    emulator = LinkEmulator(schedule, "serial", time_scale, packet_bytes, seed, queue_bytes=queue_bytes)
    link = PtyLink(emulator, device)
    try:
        with emulator:
            yield link
    finally:
        link.close()


@contextlib.contextmanager
def tcp_proxy(schedule: LinkSchedule, upstream: tuple[str, int], time_scale: float = 1.0, host: str = "127.0.0.1",
              port: int = 0, seed: int = 0, packet_bytes: int = PACKET_BYTES,
              queue_bytes: int = QUEUE_BYTES) -> Iterator[TcpProxy]:
    """A running TCP proxy to ``upstream`` through ``schedule``; clients connect to its ``address``."""
    emulator = LinkEmulator(schedule, "tcp", time_scale, packet_bytes, seed, queue_bytes=queue_bytes)
    proxy = TcpProxy(emulator, upstream, host, port)
    try:
        with emulator:
            yield proxy
    finally:
        proxy.close()
