"""The device side of SPINN's run-time schedule: measure the link from its own relays and pings, look the
condition up in the calibrated table (``schedule_table``), and run that entry's policy on the next input.

The estimator fits ``time = round trip + bytes * 8 / bandwidth`` to the device's recent exchanges by
exponentially weighted least squares: PINGs (a few bytes each way) and relays (the input or an activation
plus the answer), with the bridge's estimated time (its load hint) taken off the relay's. Two message sizes
separate the round trip from the bandwidth. With one size only (PINGs alone, while the device answers
locally) all of the time is put down to the round trip: the optimistic reading, and the only one that
lets a device that went local ever relay again (put down to bandwidth, a PING's few bytes would make
every relay look slow for ever). The round trip alone still keeps a device local on a slow link; where it
does not, the device tries a relay, whose size separates the two. A recent exchange outweighs older ones
(``decay``), so a link that changes is followed within a few exchanges. An attempt that goes unanswered
feeds the loss rate and counts as an exchange that took its timeout (a lower bound: a relay the link is
too slow for is seen as slow, not only as lost); a relay whose every attempt times out, or a PING that
does, means an outage until an exchange gets through. The load level is the last one the bridge sent.

Everything here is arithmetic on a handful of floats and one table lookup, so a microcontroller does the
same (the C device: ``bisup_exits.h``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bisup.converters.artefacts import Policy
from bisup.firmware_bridge.schedule_table import (
    ANSWER_BYTES,
    PING_BYTES,
    REQUEST_OVERHEAD,
    Condition,
    ScheduleTable,
)

MAX_BPS = 1e9  # a bandwidth the fit cannot tell from infinite
SPREAD = 0.1  # sizes closer than this (relative) cannot separate round trip from bandwidth


class LinkEstimator:
    """Round trip, bandwidth, loss and load from what the device saw (see the module docstring)."""

    def __init__(self, decay: float = 0.5, loss_decay: float = 0.9):
        self.decay, self.loss_decay = decay, loss_decay
        self._w = self._x = self._xx = self._t = self._xt = 0.0
        self._seconds_per_byte: float | None = None
        self._rtt = 0.0
        self.failing = 0.0  # EWMA of unanswered attempts
        self.load = 0
        self.outage = False

    def exchange(self, wire_bytes: int, seconds: float) -> None:
        """A request and its answer: ``wire_bytes`` both ways together, ``seconds`` on the link."""
        d, x = self.decay, float(wire_bytes)
        self._w, self._x, self._xx = d * self._w + 1, d * self._x + x, d * self._xx + x * x
        self._t, self._xt = d * self._t + seconds, d * self._xt + x * seconds
        self.outage = False
        self._fit()

    def attempts(self, lost: int, answered: bool) -> None:
        """``lost`` unanswered attempts, then one answered (or not: every attempt lost, an outage)."""
        for outcome in [1.0] * lost + ([0.0] if answered else []):
            self.failing = self.loss_decay * self.failing + (1 - self.loss_decay) * outcome
        self.outage = self.outage or not answered

    def _fit(self) -> None:
        mean_x, mean_t = self._x / self._w, self._t / self._w
        var = self._xx / self._w - mean_x**2
        slope = (self._xt / self._w - mean_x * mean_t) / var if var > (SPREAD * mean_x) ** 2 else 0.0
        self._seconds_per_byte = max(slope, 8 / MAX_BPS)
        self._rtt = max(mean_t - self._seconds_per_byte * mean_x, 0.0)

    def condition(self) -> Condition | None:
        """What the link is like now; None in an outage or before anything was measured."""
        if self.outage or self._seconds_per_byte is None:
            return None
        loss = 1 - (1 - min(self.failing, 0.999)) ** 0.5  # an attempt fails when either message is lost
        return Condition(8 / self._seconds_per_byte, self._rtt, loss, self.load)


@dataclass
class ScheduleStats:
    """What the scheduler decided: inputs, and those outside the calibrated range (given the safe entry)."""

    decisions: int = 0
    out_of_range: int = 0


class Scheduler:
    """Picks the table entry for each input from the estimator's condition; says when it is off the grid."""

    def __init__(self, table: ScheduleTable, base: Policy, cumulative_macs: list[int],
                 estimator: LinkEstimator | None = None):
        self.table, self.estimator = table, estimator or LinkEstimator()
        self.macs = cumulative_macs
        self.policies = [replace(base, depth=e.depth, thresholds=list(e.thresholds), relay=e.relay, split=e.split)
                         for e in table.entries]
        self.stats = ScheduleStats()
        self.current, self.in_range = table.safe, False

    @classmethod
    def of(cls, policy: Policy, cumulative_macs: list[int]) -> Scheduler | None:
        """The scheduler of a policy that carries a table; None for a static policy."""
        if not policy.schedule:
            return None
        return cls(ScheduleTable.from_json(policy.schedule), policy, cumulative_macs)

    def choose(self) -> Policy:
        """The policy for the next input."""
        self.current, self.in_range = self.table.lookup(self.estimator.condition())
        self.stats.decisions += 1
        self.stats.out_of_range += not self.in_range
        return self.policies[self.current]

    def tail_macs(self, split: int) -> int:
        return self.macs[-1] - (self.macs[split - 1] if split else 0)

    def relay_bytes(self, payload: int) -> int:
        return payload + REQUEST_OVERHEAD + ANSWER_BYTES

    def timeout_s(self, policy: Policy, payload: int) -> float:
        """How long to wait for one attempt of ``policy``'s relay at the measured condition."""
        condition = self.estimator.condition()
        if condition is None:
            return self.table.model.min_timeout_s
        return self.table.model.timeout_s(self.table.model.attempt_s(condition, payload, self.tail_macs(policy.split)))

    def relayed(self, split: int, payload: int, seconds: float | None, lost: int, timeout_s: float,
                load: int) -> None:
        """A relay's outcome: the answered attempt's time (None: none was), the attempts lost before it (each
        after ``timeout_s``), the bridge's load hint."""
        server = self.table.model.server_s(self.tail_macs(split), self.estimator.load)
        for _ in range(lost):
            self.estimator.exchange(self.relay_bytes(payload), max(timeout_s - server, 0.0))
        self.estimator.attempts(lost, seconds is not None)
        if seconds is not None:
            self.estimator.load = load
            self.estimator.exchange(self.relay_bytes(payload), max(seconds - server, 0.0))

    def pinged(self, seconds: float | None) -> None:
        """A PING's round trip (None: it timed out)."""
        if seconds is not None:
            self.estimator.exchange(2 * PING_BYTES, seconds)
        self.estimator.attempts(0, seconds is not None)
