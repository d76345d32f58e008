"""Per-device admission for the MQTT bridge's workers: one device's backlog never delays another's.

Issue 19, item 2, measured: INFER and SPLIT from every device shared one unbounded FIFO (a thread pool's
queue), and QoS 0 requests bypass the broker's in-flight window. A device flooding 10,000 QoS 0 INFERs on
its own topic left another device 3 answers of 400 within its 2 s wait, and 20,000 added 207 MB of RSS.

``FairQueue`` keeps a bounded queue per device and serves the devices in turn (deficit round robin with a
quantum of one request, since requests cost about the same), at most ``in_flight`` requests of one device at
a time. A request is refused, never buffered, when its device is over its rate (a token bucket), its own
queue is full, or the queues together hold ``max_queued`` requests or ``max_queued_bytes``; the worker then
answers BUSY (protocol ERROR 9) at once. So the bridge's memory is bounded whatever arrives, and what a
device gets is its turn, not its arrival rate. BUSY answers have a budget of their own per device
(``BUSY_ANSWERS_PER_S``): past it a refused request is acked without an answer, so a flood cannot make the
bridge publish as fast as it is flooded.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
BUSY_ANSWERS_PER_S = 10.0  # BUSY replies one device may get a second; the rest of its refusals go unanswered
QUEUE_HOLD_MS = 500  # what a BUSY for a full queue asks the device to wait before relaying again
SWEEP_EVERY = 4096  # offers between two sweeps of idle devices' state
NOTICE_INTERVAL_S = 10.0  # a device over its limits is named in the log at most once per interval
NOTICE_DEVICES = 4096  # devices the notices remember before forgetting those named longer ago than an interval


@dataclass(frozen=True)
class Limits:
    """Admission limits of one bridge worker (``bisup bridge --device-rate`` and the like)."""

    rate: float = 100.0  # requests a second one device may sustain, bursts of a second's worth (0: no limit)
    queue: int = 4  # requests of one device waiting for a thread
    in_flight: int = 2  # requests of one device being served at once
    max_queued: int = 1024  # requests waiting, all devices together
    max_queued_bytes: int = 32 * 2**20  # their bodies, all devices together


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Refusal:
    """Why a request was not admitted, and what to tell its device."""

    reason: str  # "rate" (over its rate), "queue" (its own queue is full) or "full" (every queue together)
    hold_ms: int  # how long the device should answer locally before it relays again (BUSY's detail)
    answer: bool  # False: the device is over its BUSY budget too; ack the request without an answer


class _Bucket:
    """A token bucket: ``rate`` tokens a second, at most ``burst`` saved."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float):
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def wait_ms(self) -> int:
        """Milliseconds until the next token."""
        return max(1, math.ceil(1000 * (1 - self.tokens) / self.rate))

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


class _Device(Generic[T]):
    __slots__ = ("busy", "in_flight", "queue", "rate", "ready")

    def __init__(self, limits: Limits, now: float):
        self.queue: deque[tuple[T, int]] = deque()
        self.in_flight = 0
        self.ready = False  # in the ring of devices with a request a thread may take
        self.rate = _Bucket(limits.rate, max(1.0, limits.rate), now) if limits.rate > 0 else None
        self.busy = _Bucket(BUSY_ANSWERS_PER_S, BUSY_ANSWERS_PER_S, now)

    def idle(self, now: float) -> bool:
        """Nothing queued or running and nothing to remember: its state may go."""
        return (not self.queue and not self.in_flight and self.busy.full(now)
                and (self.rate is None or self.rate.full(now)))


class FairQueue(Generic[T]):
    """Bounded per-device queues served in turn; ``offer`` from the network thread, ``take``/``done`` from the
    worker's threads. Thread-safe."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS, clock: Callable[[], float] = time.monotonic):
        self.limits, self._clock = limits, clock
        self._devices: dict[str, _Device[T]] = {}
        self._ring: deque[str] = deque()  # devices with a request waiting and room in flight, in turn
        self._queued = self._bytes = self._offers = 0
        self._closed = False
        self._cv = threading.Condition()

    @property
    def queued(self) -> int:
        """Requests waiting, all devices together."""
        return self._queued

    def offer(self, device: str, item: T, size: int) -> Refusal | None:
        """Queue ``item`` (``size`` bytes) of ``device``; None when admitted, else why not."""
        with self._cv:
            now = self._clock()
            self._offers += 1
            if self._offers % SWEEP_EVERY == 0:
                self._sweep(now)
            state = self._devices.get(device)
            if state is None:
                state = self._devices[device] = _Device(self.limits, now)
            refusal = self._refusal(state, size, now)
            if refusal is not None:
                return Refusal(refusal[0], refusal[1], state.busy.take(now))
            state.queue.append((item, size))
            self._queued += 1
            self._bytes += size
            self._make_ready(device, state)
            return None

    def _refusal(self, state: _Device[T], size: int, now: float) -> tuple[str, int] | None:
        if state.rate is not None and not state.rate.take(now):
            return "rate", state.rate.wait_ms()
        if len(state.queue) >= self.limits.queue:
            return "queue", QUEUE_HOLD_MS
        if self._queued >= self.limits.max_queued or self._bytes + size > self.limits.max_queued_bytes:
            return "full", QUEUE_HOLD_MS
        return None

    def _make_ready(self, device: str, state: _Device[T]) -> None:
        if not state.ready and state.queue and state.in_flight < self.limits.in_flight:
            state.ready = True
            self._ring.append(device)
            self._cv.notify()

    def take(self) -> tuple[str, T] | None:
        """The next device's oldest request (blocks); None once closed with nothing left to serve."""
        with self._cv:
            while not self._ring:
                if self._closed and not self._queued:
                    return None
                self._cv.wait()
            device = self._ring.popleft()
            state = self._devices[device]
            item, size = state.queue.popleft()
            self._queued -= 1
            self._bytes -= size
            state.in_flight += 1
            state.ready = False
            self._make_ready(device, state)  # to the back of the ring: the others go first
            return device, item

    def done(self, device: str) -> None:
        """A request of ``device`` that ``take`` gave out is finished."""
        with self._cv:
            state = self._devices[device]
            state.in_flight -= 1
            self._make_ready(device, state)
            if self._closed:
                self._cv.notify_all()

    def close(self) -> None:
        """Threads get what is queued, then None."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _sweep(self, now: float) -> None:
        """Forgets devices with nothing queued, running or owed (lock held), so that many ids cost no memory."""
        for device in [d for d, state in self._devices.items() if state.idle(now)]:
            del self._devices[device]


class Notices:
    """Names a device in the log at most once per ``interval_s``, with how many refusals came since its last
    line, instead of once per message, which a flood would turn into a flood of lines."""

    def __init__(self, warn: Callable[[str], None], interval_s: float = NOTICE_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.warn, self.interval_s, self._clock = warn, interval_s, clock
        self._named: dict[str, tuple[float, int]] = {}  # device -> (when last named, refusals since)
        self._lock = threading.Lock()

    def note(self, device: str, reason: str) -> None:
        with self._lock:
            now = self._clock()
            named, since = self._named.get(device, (-math.inf, 0))
            if now - named < self.interval_s:
                self._named[device] = (named, since + 1)
                return
            if len(self._named) >= NOTICE_DEVICES:
                self._named = {d: e for d, e in self._named.items() if now - e[0] < self.interval_s}
            self._named[device] = (now, 0)
        more = f"; {since:,} more refused since it was last named" if since else ""
        self.warn(f"device {device} is over the bridge's admission limits ({REASONS[reason]}): its requests are "
                  f"answered BUSY{more}. Counted in bisup_busy_total; named at most once per "
                  f"{self.interval_s:g} s")


REASONS = {"rate": "its request rate, --device-rate", "queue": "its own queue, --device-queue",
           "full": "all queues together, --max-queued"}
