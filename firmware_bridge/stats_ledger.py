"""What a device's STATS may claim, checked before anything uses it; one bounded record per device.

STATS carry cumulative counts since boot (inferences, local answers, relays) that the bridge cannot see
for itself, so nothing but their consistency can be checked: with each other, with the clock and with
the relays the bridge received. Unchecked, one STATS(10^9, 10^9) outweighed a whole fleet in the drift
alarm and one with more relays than inferences gave a remote fraction of 4.42. A STATS is refused when

- it counts more relays or more local answers than inferences, in all or since the last STATS;
- its counts do not move together within a boot (each only grows, and a repeat repeats them all);
- it claims more inferences since the device's last accepted STATS than ``MAX_RATE`` per second could
  make in the time between, plus what is left of an allowance of ``GRACE_S`` at that rate: for clock
  steps, STATS that queued and arrive together, and ``bisup device``, which runs its model over the whole
  set before it replays the decisions, so that its STATS arrive far faster than it inferred. What a STATS
  uses of the allowance is gone until time gives it back, so many small STATS in quick succession cannot
  claim more than one large one.

A refused STATS changes nothing; the next true one carries its counts (they are cumulative). A late or
repeated STATS (no more inferences than the last) is no lie and is ignored, as before. The first STATS
of a device the ledger does not know (a bridge that just started, a device whose record expired) has
counts of unknown age: beyond what ``GRACE_S`` at ``MAX_RATE`` can make, they become the starting point
and are not counted, since no one knows over what time they were made.

The ledger also counts the INFER and SPLIT requests the bridge received from each boot; a STATS that
claims fewer relays than that, beyond ``RELAY_SLACK`` in flight, understates what its device relays.

Memory is bounded: one record per device with its latest boot (and the last ``RETIRED_BOOTS`` boot ids,
so that their late STATS are not counted a second time), at most ``MAX_DEVICES`` records, the device
heard from least recently dropped first. A dropped device that comes back is a new one.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from bisup.firmware_bridge.protocol import bounded_id

MAX_RATE = 10_000  # inferences per second and device: far above an MCU running an int8 model (ms each)
GRACE_S = 60.0  # seconds at MAX_RATE a device may claim at once beyond the time elapsed (600,000 inferences)
MAX_DEVICES = 10_000  # records kept; the least recently heard device goes first
RETIRED_BOOTS = 4  # earlier boot ids kept per device, so their late STATS count no second time
RELAY_SLACK = 32  # relays the bridge may have received that a STATS does not count yet: MQTT workers
# answer requests on a pool, so an INFER sent after a STATS may be handled before it

REASONS = {
    "relayed_above_inferences": "more relays than inferences",
    "local_above_inferences": "more local answers than inferences",
    "not_monotone": "counts that do not move together (within a boot each only grows)",
    "too_fast": f"more inferences since its last STATS than {MAX_RATE:,} per second make",
    "off_grid_above_inferences": "more inputs decided off its link grid than inferences",
}

Counts = tuple[int, int, int, int]  # inferences, local answers, relays, inputs off the link grid (scheduled devices)


@dataclass(frozen=True)
class Verdict:
    """What to do with one STATS."""

    new: Counts | None = None  # what is new since the last accepted STATS, to count; None: nothing
    refused: str | None = None  # why it cannot be true (a key of REASONS); it changed nothing
    short: tuple[int, int] | None = None  # (claimed, received): it claims fewer relays than the bridge received
    first: bool = False  # the device's first problem of this kind while the ledger holds it: name it once


@dataclass(slots=True)
class _Device:
    boot: int
    counts: Counts | None = None  # this boot's last accepted STATS
    stats_at: float | None = None  # when the device's last accepted STATS (of any boot) arrived
    allowance: float = 0.0  # inferences it may claim beyond what the time since stats_at allows (GRACE_S worth)
    retired: tuple[int, ...] = ()  # earlier boots, newest last
    relays: int = 0  # INFER/SPLIT the bridge received from this boot
    named: tuple[str, ...] = ()  # problems already named in the log ("refused", "short")


def _inconsistent(last: Counts | None, now: Counts) -> str | None:
    """The REASONS key when ``now`` contradicts itself or the boot's last accepted counts."""
    inferences, local, relayed, off_grid = now
    if relayed > inferences:
        return "relayed_above_inferences"
    if local > inferences:
        return "local_above_inferences"
    if off_grid > inferences:
        return "off_grid_above_inferences"
    if last is None:
        return None
    grew = [b - a for a, b in zip(last, now, strict=True)]
    if grew[0] <= 0:  # late or repeated: nothing may have grown, and a repeat repeats everything
        return "not_monotone" if max(grew[1:]) > 0 or (grew[0] == 0 and any(grew[1:])) else None
    if min(grew[1:]) < 0:
        return "not_monotone"
    if grew[2] > grew[0]:
        return "relayed_above_inferences"
    if grew[3] > grew[0]:
        return "off_grid_above_inferences"
    return "local_above_inferences" if grew[1] > grew[0] else None


class StatsLedger:
    """Checks STATS per device and turns the cumulative counts of the accepted ones into what is new."""

    def __init__(self, max_rate: float = MAX_RATE, max_devices: int = MAX_DEVICES,
                 clock: Callable[[], float] = time.monotonic):
        self.max_rate, self.max_devices, self.clock = max_rate, max_devices, clock
        self._devices: OrderedDict[str, _Device] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._devices)

    def boots(self) -> int:
        """Boot ids held, latest and retired: at most ``(1 + RETIRED_BOOTS) * max_devices``."""
        with self._lock:
            return sum(1 + len(record.retired) for record in self._devices.values())

    def relay(self, device: str, boot: int) -> None:
        """The bridge received an INFER or SPLIT (not a retry) from this boot."""
        with self._lock:
            record = self._touch(bounded_id(device), boot)
            if record.boot != boot and boot not in record.retired:
                self._reboot(record, boot)
            if record.boot == boot:
                record.relays += 1

    def check(self, device: str, boot: int, inferences: int, local: int, relayed: int,
              off_grid: int = 0) -> Verdict:
        """``off_grid``: a scheduled multi-exit device's inputs decided off its calibrated link grid (STATS'
        ``out_of_range``; 0 for the others)."""
        with self._lock:
            record = self._touch(bounded_id(device), boot)
            if boot in record.retired:
                return Verdict()  # a late STATS from before a reboot
            last = record.counts if record.boot == boot else None
            now = self.clock()
            refused = _inconsistent(last, (inferences, local, relayed, off_grid)) or self._too_fast(record, last, now,
                                                                                      inferences)
            if refused:
                return Verdict(refused=refused, first=_first(record, "refused"))
            if last is not None and inferences <= last[0]:
                return Verdict()  # late or repeated
            return self._accept(record, boot, now, (inferences, local, relayed, off_grid))

    def _touch(self, device: str, boot: int) -> _Device:
        """The device's record, made most recent (a new one for a device not held)."""
        record = self._devices.get(device)
        if record is None:
            record = self._devices[device] = _Device(boot)
            while len(self._devices) > self.max_devices:
                self._devices.popitem(last=False)
        else:
            self._devices.move_to_end(device)
        return record

    def _possible(self, record: _Device, now: float) -> float | None:
        """The most inferences the device can have made since its last accepted STATS (None: there is none)."""
        if record.stats_at is None:
            return None
        return record.allowance + self.max_rate * max(now - record.stats_at, 0.0)

    def _too_fast(self, record: _Device, last: Counts | None, now: float, inferences: int) -> str | None:
        possible = self._possible(record, now)
        return "too_fast" if possible is not None and inferences - (last[0] if last else 0) > possible else None

    def _accept(self, record: _Device, boot: int, now: float, counts: Counts) -> Verdict:
        possible, grace = self._possible(record, now), self.max_rate * GRACE_S
        if record.boot != boot:
            self._reboot(record, boot)
        last = record.counts or (0, 0, 0, 0)
        unknown_age = possible is None and counts[0] > grace  # kept as the starting point, not counted
        used = 0 if unknown_age else counts[0] - last[0]
        record.allowance = min(grace, (grace if possible is None else possible) - used)
        record.counts, record.stats_at = counts, now
        new = None if unknown_age else tuple(b - a for a, b in zip(last, counts, strict=True))
        if counts[2] + RELAY_SLACK >= record.relays:
            return Verdict(new=new)
        return Verdict(new=new, short=(counts[2], record.relays), first=_first(record, "short"))

    @staticmethod
    def _reboot(record: _Device, boot: int) -> None:
        record.retired = (*record.retired, record.boot)[-RETIRED_BOOTS:]
        record.boot, record.counts, record.relays = boot, None, 0


def _first(record: _Device, problem: str) -> bool:
    if problem in record.named:
        return False
    record.named = (*record.named, problem)
    return True
