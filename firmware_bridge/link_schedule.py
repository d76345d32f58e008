"""A link's conditions over time: bandwidth, round trip, loss and outages, read from a small text file.

A microcontroller's link swings by orders of magnitude (Wi-Fi, BLE, LoRa-class links, outages). The
schedule says what the link is like from each moment on, one phase per line; the link emulator
applies it to real bytes, and the run-time scheduler's evaluation applies it in simulated time, so
both read the same file::

    # start  bandwidth  round-trip  loss
    0s       2Mbps      20ms        0%
    30s      20kbps     150ms       1%
    60s      outage
    75s      2kbps      600ms       5%
    120s     end

Times take ``ms``, ``s`` or ``min``; bandwidths ``bps``, ``kbps`` or ``Mbps`` (bits per second);
loss a percentage. A phase lasts until the next line starts; ``end`` closes the last one (without
it, the last phase lasts for ever). A line that cannot be read is refused with its number and what
it should look like.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import Path

from bisup.converters.errors import BisupError

FORMAT_HINT = "START BANDWIDTH RTT LOSS (e.g. '30s 20kbps 150ms 1%'), 'START outage' or 'START end'"
_TIME = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|min)$")
_RATE = re.compile(r"^(\d+(?:\.\d+)?)(bps|kbps|Mbps)$")
_LOSS = re.compile(r"^(\d+(?:\.\d+)?)(%)$")
_UNITS = {"ms": 1e-3, "s": 1.0, "min": 60.0, "bps": 1.0, "kbps": 1e3, "Mbps": 1e6, "%": 0.01}


class ScheduleError(BisupError, ValueError):
    """A link schedule that cannot be read; the message names the line."""


@dataclass(frozen=True)
class Phase:
    """The link from ``start_s`` on. An outage carries nothing: every byte sent in it is lost."""

    start_s: float
    bandwidth_bps: float = 0.0
    rtt_s: float = 0.0
    loss: float = 0.0

    @property
    def outage(self) -> bool:
        return self.bandwidth_bps <= 0.0

    def transfer_s(self, sent_bytes: int, answer_bytes: int = 0) -> float:
        """One request and its answer on this link without loss: a round trip plus both payloads' serialisation
        (``inf`` in an outage)."""
        if self.outage:
            return float("inf")
        return self.rtt_s + (sent_bytes + answer_bytes) * 8 / self.bandwidth_bps

    def describe(self) -> str:
        if self.outage:
            return "outage"
        return f"{_rate_text(self.bandwidth_bps)}, rtt {self.rtt_s * 1e3:g} ms, loss {self.loss:.0%}"


@dataclass(frozen=True)
class LinkSchedule:
    """Phases in time order; ``end_s`` is when the schedule stops (``inf``: the last phase lasts for ever)."""

    phases: tuple[Phase, ...]
    end_s: float = float("inf")

    @classmethod
    def constant(cls, bandwidth_bps: float, rtt_s: float = 0.0, loss: float = 0.0) -> LinkSchedule:
        return cls((Phase(0.0, bandwidth_bps, rtt_s, loss),))

    @classmethod
    def read(cls, path: str | Path) -> LinkSchedule:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise ScheduleError(f"cannot read the link schedule {path}: {error}") from None
        return cls.parse(text, str(path))

    @classmethod
    def parse(cls, text: str, source: str = "link schedule") -> LinkSchedule:
        phases: list[Phase] = []
        end_s = float("inf")
        for number, raw in enumerate(text.splitlines(), 1):
            words = raw.split("#", 1)[0].split()
            if not words:
                continue
            where = f"{source}, line {number} ({raw.strip()!r})"
            if end_s != float("inf"):
                raise ScheduleError(f"{where}: nothing may follow 'end'")
            start = _number(_TIME, words[0], where, "a start time such as 30s")
            if phases and start <= phases[-1].start_s:
                raise ScheduleError(f"{where}: starts at {start:g} s, not after the previous line "
                                    f"({phases[-1].start_s:g} s); list phases in time order")
            if not phases and start != 0.0:
                raise ScheduleError(f"{where}: the first phase must start at 0s")
            if words[1:] == ["end"]:
                end_s = start
            else:
                phases.append(_phase(start, words[1:], where))
        if not phases:
            raise ScheduleError(f"{source}: no phase; write one line per phase: {FORMAT_HINT}")
        return cls(tuple(phases), end_s)

    def at(self, t_s: float) -> Phase:
        """The phase in force at ``t_s`` seconds after the start (the last one after ``end``)."""
        index = bisect.bisect_right([p.start_s for p in self.phases], t_s) - 1
        return self.phases[max(index, 0)]

    def spans(self) -> list[tuple[float, float, Phase]]:
        """``(start, stop, phase)`` for each phase; the last one stops at ``end_s``."""
        stops = [p.start_s for p in self.phases[1:]] + [self.end_s]
        return [(p.start_s, stop, p) for p, stop in zip(self.phases, stops, strict=True)]


def _number(pattern: re.Pattern, word: str, where: str, wanted: str) -> float:
    """``word`` read by ``pattern`` (a value and a unit) in base units: seconds, bits per second, a fraction."""
    match = pattern.match(word)
    if match is None:
        raise ScheduleError(f"{where}: {word!r} is not {wanted}; write {FORMAT_HINT}")
    value, unit = match.groups()
    return float(value) * _UNITS[unit]


def _phase(start: float, words: list[str], where: str) -> Phase:
    if words == ["outage"]:
        return Phase(start)
    if len(words) != 3:
        raise ScheduleError(f"{where}: expected bandwidth, round trip and loss after the start; write {FORMAT_HINT}")
    bandwidth = _number(_RATE, words[0], where, "a bandwidth such as 20kbps")
    rtt = _number(_TIME, words[1], where, "a round trip such as 150ms")
    loss = _number(_LOSS, words[2], where, "a loss such as 1%")
    if bandwidth <= 0:
        raise ScheduleError(f"{where}: a bandwidth of 0 is an outage; write 'outage' instead")
    if loss >= 1.0:
        raise ScheduleError(f"{where}: a loss of {loss:.0%} delivers nothing; write 'outage' instead")
    return Phase(start, bandwidth, rtt, loss)


def _rate_text(bps: float) -> str:
    for unit, scale in (("Mbps", 1e6), ("kbps", 1e3)):
        if bps >= scale:
            return f"{bps / scale:g} {unit}"
    return f"{bps:g} bps"
