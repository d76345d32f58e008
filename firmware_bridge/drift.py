"""The drift alarm: are live rates still those the thresholds were calibrated on?

Two signals, each compared with its rate on the validation set (``thresholds.json``):

- the remote fraction, relayed / inferences, from the devices' STATS (the bridge cannot see local
  answers any other way);
- the disagreement on relayed inputs, how often the remote's label differs from the device's own.

Each is tested over a sliding window of the most recent observations with a two-proportion z-test
against the validation rate, whose own sampling error counts too. Outside ``z`` standard errors
(3.29 by default: a 0.1% false alarm rate per check on an i.i.d. stream) the alarm goes on; it
clears once the rate is back within 2 standard errors, so a rate on the edge does not flap. Each
change is logged once, and ``Signal.view`` gives what the metrics export.

No device outweighs the fleet. A device holds at most ``MAX_SHARE`` (10%) of a window once ten or more
devices report, and 1/n of it while n < 10 do (a lone device is the fleet): its newest trials push out its
own oldest, never another device's, and while the window fills, a device holding more than its share of
what is there weighs only that share. However large or frequent its reports, one device then moves the
live rate by at most its share (at the calibrated 0.3 and a window of 500, 0.07 against a band of +-0.10).
A device silent for ``IDLE_S`` leaves the windows, so that its old counts do not keep its place for ever.
Rates stay within [0, 1] whatever a report says, and STATS pass a ``StatsLedger`` first.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from bisup.converters.artefacts import Thresholds
from bisup.firmware_bridge.events import Events
from bisup.firmware_bridge.protocol import bounded_id
from bisup.firmware_bridge.relay import Answer, InferRequest
from bisup.firmware_bridge.stats_ledger import StatsLedger

Z_ALARM = 3.29  # two-sided 0.1%
Z_CLEAR = 2.0  # back within this many standard errors to clear: without the gap, a rate on the edge flaps
MIN_SAMPLES = 100  # observations in the window before a signal is tested at all
MAX_SHARE = 0.1  # of a window one device may hold once 1/MAX_SHARE devices report (fewer: each holds 1/n)
IDLE_S = 3600.0  # a device silent this long leaves the windows (longer than any STATS interval we ship)


@dataclass(frozen=True)
class View:
    """A signal's state, as exported: the live rate, the calibrated one and the band around it."""

    live: float
    expected: float
    lower: float
    upper: float
    samples: int
    alarm: bool


@dataclass(slots=True)
class _Chunk:
    source: str
    hits: int
    trials: int


class Signal:
    """Successes out of trials over a window of at least ``window`` trials, tested against a rate
    ``expected`` measured on ``calibrated`` samples; no source (a device) weighs more than its share."""

    def __init__(self, name: str, expected: float, calibrated: int, window: int, z: float = Z_ALARM,
                 max_share: float = MAX_SHARE):
        self.name, self.expected, self.calibrated, self.window, self.z = name, expected, calibrated, window, z
        self.max_share = max_share
        self._chunks: deque[_Chunk] = deque()  # arrival order; one trimmed to nothing waits here until it is first
        self._by_source: dict[str, deque[_Chunk]] = {}  # the same chunks per source, oldest first
        self._held: dict[str, list[int]] = {}  # source -> [hits, trials] it holds
        self._hits = self._trials = self._empty = 0
        self.alarm, self.fired = False, 0

    def add(self, hits: int, trials: int, source: str = "") -> bool | None:
        """Adds observations from ``source``; returns the new alarm state when it changed, else None.
        Hits are held within [0, trials], so that no report makes a rate outside [0, 1]."""
        if trials <= 0:
            return None
        share = self._share()
        self._append(_Chunk(source, min(max(hits, 0), trials), trials))
        shrunk = self._share() < share  # a newcomer: every part shrinks
        for held in list(self._by_source) if shrunk else [source]:
            self._trim(held, math.ceil(self._share() * self.window))
        self._slide()
        hits, trials = self._weighed()
        alarm = trials >= MIN_SAMPLES and not self._within(hits, trials, Z_CLEAR if self.alarm else self.z)
        changed = alarm != self.alarm
        self.alarm = alarm
        self.fired += changed and alarm
        return alarm if changed else None

    def _append(self, chunk: _Chunk) -> None:
        self._chunks.append(chunk)
        self._by_source.setdefault(chunk.source, deque()).append(chunk)
        held = self._held.setdefault(chunk.source, [0, 0])
        held[0], held[1] = held[0] + chunk.hits, held[1] + chunk.trials
        self._hits, self._trials = self._hits + chunk.hits, self._trials + chunk.trials

    def forget(self, source: str) -> None:
        """Drops what ``source`` holds (a device gone silent)."""
        for chunk in list(self._by_source.get(source, ())):
            self._take(chunk, chunk.hits, chunk.trials)
        self._compact()

    def held(self, source: str) -> int:
        """Trials ``source`` holds in the window."""
        return self._held.get(source, [0, 0])[1]

    def _share(self) -> float:
        """What one source may hold: ``max_share``, or 1/n of n < 1/max_share sources (1 for none)."""
        return max(self.max_share, 1 / len(self._by_source)) if self._by_source else 1.0

    def _weighed(self) -> tuple[float, float]:
        """Hits and trials as tested. A full window holds no more than its share from any source (``add`` trims
        them); while it fills, a source holding more than its share of what is there weighs only that share."""
        if self._trials >= self.window:
            return self._hits, self._trials
        most = self._share() * self._trials
        hits, trials = float(self._hits), float(self._trials)
        for source_hits, source_trials in self._held.values():
            if source_trials > most:
                hits -= source_hits * (1 - most / source_trials)
                trials -= source_trials - most
        return hits, trials

    def _trim(self, source: str, limit: int) -> None:
        """Drops ``source``'s oldest trials beyond ``limit`` (hits in proportion, from a chunk cut in two)."""
        excess = self.held(source) - limit
        while excess > 0:
            oldest = self._by_source[source][0]
            cut = min(excess, oldest.trials)
            kept = oldest.trials - cut
            cut_hits = max(oldest.hits - kept, min(oldest.hits, round(oldest.hits * cut / oldest.trials)))
            self._take(oldest, cut_hits, cut)
            excess -= cut

    def _take(self, chunk: _Chunk, hits: int, trials: int) -> None:
        """Takes trials from a chunk that is its source's oldest; an emptied one leaves its source."""
        chunk.hits, chunk.trials = chunk.hits - hits, chunk.trials - trials
        self._hits, self._trials = self._hits - hits, self._trials - trials
        held = self._held[chunk.source]
        held[0], held[1] = held[0] - hits, held[1] - trials
        if chunk.trials == 0:
            self._empty += 1
            chunks = self._by_source[chunk.source]
            chunks.popleft()
            if not chunks:
                del self._by_source[chunk.source], self._held[chunk.source]

    def _slide(self) -> None:
        """Drops the oldest chunks while the rest still fill the window."""
        while self._chunks and (not self._chunks[0].trials or self._trials - self._chunks[0].trials >= self.window):
            front = self._chunks.popleft()
            if front.trials:
                self._take(front, front.hits, front.trials)
            self._empty -= 1
        self._compact()

    def _compact(self) -> None:
        if self._empty > len(self._chunks) // 2 + 16:
            self._chunks = deque(chunk for chunk in self._chunks if chunk.trials)
            self._empty = 0

    def _half_width(self, hits: float, trials: float, z: float) -> float:
        """z standard errors of live minus expected, pooling both (so a rate of 0 still has a band)."""
        n, n0 = max(trials, 1), max(self.calibrated, 1)
        pooled = (hits + self.expected * n0) / (n + n0)
        return z * math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / n + 1 / n0))

    def _within(self, hits: float, trials: float, z: float) -> bool:
        return abs(hits / trials - self.expected) <= self._half_width(hits, trials, z)

    def view(self) -> View:
        """The band shown is the alarm's (``z``); clearing needs the narrower one."""
        hits, trials = self._weighed()
        live = hits / trials if trials else 0.0
        half = self._half_width(hits, trials, self.z)
        return View(live, self.expected, max(0.0, self.expected - half), min(1.0, self.expected + half),
                    round(trials), self.alarm)

    def describe(self) -> str:
        v = self.view()
        return (f"{self.name} {v.live:.3f} over the last {v.samples} (calibrated {v.expected:.3f}, "
                f"band {v.lower:.3f}..{v.upper:.3f})")


class DriftAlarm(Events):
    """Watches the remote fraction (from STATS) and the relayed disagreement (from the relays)."""

    def __init__(self, remote_fraction: Signal, disagreement: Signal | None, log: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic, idle_s: float = IDLE_S):
        self.remote_fraction, self.disagreement, self.log = remote_fraction, disagreement, log
        self.clock, self.idle_s = clock, idle_s
        self._lock = threading.Lock()
        self.ledger = StatsLedger(clock=clock)  # the handler checks STATS too; this one keeps direct callers honest
        self._heard: OrderedDict[str, float] = OrderedDict()  # device -> when it last added to a window

    @classmethod
    def from_thresholds(cls, t: Thresholds, log: Callable[[str], None], window: int = 500) -> DriftAlarm:
        """From the calibrated rates; without ``relayed_disagreement`` (older calibrations) that signal is off."""
        samples = int(t.validation.get("samples", 0))
        fraction = float(t.achieved["remote_fraction"])
        disagreement = t.achieved.get("relayed_disagreement")
        relayed = round(fraction * samples)
        if relayed == 0:
            log("drift alarm: the validation set relayed nothing, so there is no disagreement rate to hold relays "
                "to; watching the remote fraction only")
        elif disagreement is None:
            log("drift alarm: thresholds.json has no relayed disagreement (calibrate again to get it); "
                "watching the remote fraction only")
        return cls(Signal("remote fraction", fraction, samples, window),
                   None if disagreement is None or relayed == 0 else
                   Signal("relayed disagreement", float(disagreement), relayed, max(window // 5, MIN_SAMPLES)), log)

    def signals(self) -> list[Signal]:
        return [s for s in (self.remote_fraction, self.disagreement) if s is not None]

    def device_stats(self, device: str, boot: int, inferences: int, local: int, relayed: int,
                     off_grid: int = 0) -> None:
        device = bounded_id(device)
        new = self.ledger.check(device, boot, inferences, local, relayed, off_grid).new
        if new is not None:
            with self._lock:
                self._update(self.remote_fraction, new[2], new[0], device)

    def relayed(self, device: str, request: InferRequest, answer: Answer) -> None:
        if self.disagreement is None or answer.remote_label is None:
            return
        with self._lock:
            self._update(self.disagreement, int(request.local_label != answer.remote_label), 1, bounded_id(device))

    def _heard_from(self, device: str) -> None:
        """Notes ``device``; devices silent for ``idle_s`` (or beyond the ledger's cap) leave the windows."""
        now = self.clock()
        self._heard[device] = now
        self._heard.move_to_end(device)
        while self._heard:
            oldest, at = next(iter(self._heard.items()))
            if now - at <= self.idle_s and len(self._heard) <= self.ledger.max_devices:
                break
            del self._heard[oldest]
            for signal in self.signals():
                signal.forget(oldest)

    def _update(self, signal: Signal, hits: int, trials: int, device: str) -> None:
        self._heard_from(device)
        changed = signal.add(hits, trials, device)
        if changed is True:
            self.log(f"drift alarm: {signal.describe()}; the deployment stream no longer looks like the "
                     "validation set (collect and retrain, or calibrate again)")
        elif changed is False:
            self.log(f"drift alarm cleared: {signal.describe()}")
