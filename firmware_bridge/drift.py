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
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from bisup.converters.artefacts import Thresholds
from bisup.firmware_bridge.events import Events
from bisup.firmware_bridge.relay import Answer, InferRequest
from bisup.firmware_bridge.stats_ledger import StatsLedger

Z_ALARM = 3.29  # two-sided 0.1%
Z_CLEAR = 2.0  # back within this many standard errors to clear: without the gap, a rate on the edge flaps
MIN_SAMPLES = 100  # observations in the window before a signal is tested at all


@dataclass(frozen=True)
class View:
    """A signal's state, as exported: the live rate, the calibrated one and the band around it."""

    live: float
    expected: float
    lower: float
    upper: float
    samples: int
    alarm: bool


class Signal:
    """Successes out of trials over a window of at least ``window`` trials, tested against a rate
    ``expected`` measured on ``calibrated`` samples."""

    def __init__(self, name: str, expected: float, calibrated: int, window: int, z: float = Z_ALARM):
        self.name, self.expected, self.calibrated, self.window, self.z = name, expected, calibrated, window, z
        self._chunks: deque[tuple[int, int]] = deque()  # (hits, trials)
        self._hits = self._trials = 0
        self.alarm, self.fired = False, 0

    def add(self, hits: int, trials: int) -> bool | None:
        """Adds observations; returns the new alarm state when it changed, else None."""
        if trials <= 0:
            return None
        self._chunks.append((hits, trials))
        self._hits, self._trials = self._hits + hits, self._trials + trials
        while self._chunks and self._trials - self._chunks[0][1] >= self.window:
            old_hits, old_trials = self._chunks.popleft()
            self._hits, self._trials = self._hits - old_hits, self._trials - old_trials
        alarm = self._trials >= MIN_SAMPLES and not self._within(Z_CLEAR if self.alarm else self.z)
        changed = alarm != self.alarm
        self.alarm = alarm
        self.fired += changed and alarm
        return alarm if changed else None

    def _half_width(self, z: float) -> float:
        """z standard errors of live minus expected, pooling both (so a rate of 0 still has a band)."""
        n, n0 = max(self._trials, 1), max(self.calibrated, 1)
        pooled = (self._hits + self.expected * n0) / (n + n0)
        return z * math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / n + 1 / n0))

    def _within(self, z: float) -> bool:
        return abs(self._hits / self._trials - self.expected) <= self._half_width(z)

    def view(self) -> View:
        """The band shown is the alarm's (``z``); clearing needs the narrower one."""
        live = self._hits / self._trials if self._trials else 0.0
        half = self._half_width(self.z)
        return View(live, self.expected, max(0.0, self.expected - half), min(1.0, self.expected + half),
                    self._trials, self.alarm)

    def describe(self) -> str:
        v = self.view()
        return (f"{self.name} {v.live:.3f} over the last {v.samples} (calibrated {v.expected:.3f}, "
                f"band {v.lower:.3f}..{v.upper:.3f})")


class DriftAlarm(Events):
    """Watches the remote fraction (from STATS) and the relayed disagreement (from the relays)."""

    def __init__(self, remote_fraction: Signal, disagreement: Signal | None, log: Callable[[str], None]):
        self.remote_fraction, self.disagreement, self.log = remote_fraction, disagreement, log
        self._lock = threading.Lock()
        self.ledger = StatsLedger()  # the handler checks STATS too; this one keeps direct callers honest

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

    def device_stats(self, device: str, boot: int, inferences: int, local: int, relayed: int) -> None:
        new = self.ledger.check(device, boot, inferences, local, relayed).new
        if new is not None:
            with self._lock:
                self._update(self.remote_fraction, new[2], new[0])

    def relayed(self, device: str, request: InferRequest, answer: Answer) -> None:
        if self.disagreement is None or answer.remote_label is None:
            return
        with self._lock:
            self._update(self.disagreement, int(request.local_label != answer.remote_label), 1)

    def _update(self, signal: Signal, hits: int, trials: int) -> None:
        changed = signal.add(hits, trials)
        if changed is True:
            self.log(f"drift alarm: {signal.describe()}; the deployment stream no longer looks like the "
                     "validation set (collect and retrain, or calibrate again)")
        elif changed is False:
            self.log(f"drift alarm cleared: {signal.describe()}")
