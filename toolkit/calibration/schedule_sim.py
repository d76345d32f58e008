"""A multi-exit device on a changing link, in simulated time: what the run-time schedule is judged by.

Inputs arrive at a steady rate; the device handles one at a time (an input waits while the device is busy,
and that wait counts in its latency). Each input's outcome at every exit and split is the real one
(``ExitOutcomes`` of a labelled set, applied with ``bisup.calibration.exits.apply``), and the link is the
``LinkSchedule`` in force when each attempt starts: its transfer time, its loss (each message lost with
that probability, drawn from a seeded generator) and its outages. The bridge takes the latency model's
server time at a fixed load level, which its answers report. The adaptive device is
``bisup.firmware_bridge.scheduler.Scheduler`` itself, estimator included: it sees only the times of its own
relays and PINGs (sent every ``probe_s`` on the link, beside the inference) and the load hints, never the
schedule. The static device runs the calibration-time policy, with the timeout that policy's calibrated
link implies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bisup.calibration.exits import ExitOutcomes, Result, apply
from bisup.converters.artefacts import Policy
from bisup.firmware_bridge.link_schedule import LinkSchedule, Phase
from bisup.firmware_bridge.schedule_table import ANSWER_BYTES, PING_BYTES, REQUEST_OVERHEAD, LatencyModel
from bisup.firmware_bridge.scheduler import Scheduler

PING_TIMEOUT_S = 2.0


@dataclass
class Trace:
    """Per input: arrival time, latency, right or not, relayed or not, and the decisions off the grid."""

    arrival: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    right: list[bool] = field(default_factory=list)
    relayed: list[bool] = field(default_factory=list)
    out_of_range: list[bool] = field(default_factory=list)

    def figures(self, start: float, stop: float) -> dict:
        """p95 latency (ms), accuracy, remote fraction and off-grid fraction of the inputs arriving in [start, stop)."""
        at = (np.asarray(self.arrival) >= start) & (np.asarray(self.arrival) < stop)
        if not at.any():
            return {"inputs": 0}
        return {"inputs": int(at.sum()), "p95_ms": float(np.quantile(np.asarray(self.latency)[at], 0.95) * 1e3),
                "accuracy": float(np.asarray(self.right)[at].mean()),
                "remote_fraction": float(np.asarray(self.relayed)[at].mean()),
                "out_of_range": float(np.asarray(self.out_of_range)[at].mean())}


class _Link:
    """The schedule as the device meets it: loss draws, and PINGs in flight beside the inference."""

    def __init__(self, schedule: LinkSchedule, seed: int):
        self.schedule, self.rng = schedule, np.random.default_rng(seed)
        self.free = 0.0  # when the PING on the link is done

    def exchange(self, start: float, wire_bytes: int, server_s: float, timeout_s: float) -> float | None:
        """Seconds one request/answer takes from ``start``; None when it is lost or slower than ``timeout_s``."""
        phase: Phase = self.schedule.at(start)
        if phase.outage or (self.rng.random(2) < phase.loss).any():
            return None
        seconds = phase.transfer_s(wire_bytes) + server_s
        return seconds if seconds <= timeout_s else None

    def sending_s(self, start: float, sent_bytes: int) -> float:
        """How long ``sent_bytes`` hold the link from ``start``: their serialisation (the round trip is the way
        there and back, which other messages share)."""
        phase = self.schedule.at(start)
        return 0.0 if phase.outage else sent_bytes * 8 / phase.bandwidth_bps


@dataclass
class Device:
    """One simulated device: a fixed policy, or a ``Scheduler`` that picks one per input."""

    o: ExitOutcomes
    model: LatencyModel
    policy: Policy
    scheduler: Scheduler | None = None
    static_timeout_s: float = 0.1
    probe_s: float = 1.0
    load: int = 0  # the bridge's load level throughout: its time grows with it, and its answers say so
    _results: dict = field(default_factory=dict)

    def result(self, policy: Policy) -> Result:
        key = (policy.depth, tuple(policy.thresholds), policy.relay, policy.split)
        if key not in self._results:
            self._results[key] = apply(policy, self.o)
        return self._results[key]

    def tail_macs(self, split: int) -> int:
        macs = self.o.cumulative_macs
        return macs[-1] - (macs[split - 1] if split else 0)


class _Probes:
    """PINGs every ``probe_s`` on the link, beside the inference; each answer reaches the scheduler when it comes."""

    def __init__(self, scheduler: Scheduler, link: _Link, probe_s: float):
        self.scheduler, self.link, self.probe_s = scheduler, link, probe_s
        self.due, self.in_flight, self.answer, self.answer_at = 0.0, False, None, 0.0

    def until(self, now: float) -> None:
        """Every PING sent and answered (or timed out) by ``now``. A PING holds the link while it is sent; the
        device learns of its answer a round trip later, or of its loss at its timeout."""
        while True:
            if self.in_flight:
                if self.answer_at > now:
                    return
                self.scheduler.pinged(self.answer)
                self.in_flight = False
            if self.due > now:
                return
            start = max(self.due, self.link.free)
            self.answer = self.link.exchange(start, 2 * PING_BYTES, 0.0, PING_TIMEOUT_S)
            self.answer_at = start + (PING_TIMEOUT_S if self.answer is None else self.answer)
            self.link.free = start + self.link.sending_s(start, PING_BYTES)
            self.in_flight, self.due = True, start + self.probe_s


def _relay(device: Device, link: _Link, policy: Policy, start: float, sample: int) -> tuple[float, bool]:
    """Seconds from the relay point to an answer, and whether a remote answer came (else the device finished)."""
    payload = device.o.sent_bytes[policy.split]
    tail = device.tail_macs(policy.split)
    server = device.model.server_s(tail, device.load)
    timeout = device.scheduler.timeout_s(policy, payload) if device.scheduler else device.static_timeout_s
    t = max(start, link.free) - start  # a PING in flight holds the link
    for lost in range(device.model.retries + 1):
        seconds = link.exchange(start + t, payload + REQUEST_OVERHEAD + ANSWER_BYTES, server, timeout)
        if seconds is not None:
            if device.scheduler:
                device.scheduler.relayed(policy.split, payload, seconds, lost, timeout, device.load)
            link.free = start + t + seconds
            return t + seconds, True
        t += timeout
    if device.scheduler:
        device.scheduler.relayed(policy.split, payload, None, device.model.retries + 1, timeout, device.load)
    link.free = start + t
    return t, False


def run(device: Device, schedule: LinkSchedule, period_s: float, seed: int = 0) -> Trace:
    """Inputs every ``period_s`` until the schedule ends, cycling through the outcomes' samples."""
    o, model, link, trace = device.o, device.model, _Link(schedule, seed), Trace()
    busy_until, n, last = 0.0, len(o.y), o.exits - 1
    probes = _Probes(device.scheduler, link, device.probe_s) if device.scheduler else None
    finish_s = model.device_s(o.cumulative_macs[last])
    for i, arrival in enumerate(np.arange(0.0, schedule.end_s, period_s)):
        start, sample = max(arrival, busy_until), i % n
        if device.scheduler:
            probes.until(start)
            policy = device.scheduler.choose()
            off_grid = not device.scheduler.in_range
        else:
            policy, off_grid = device.policy, False
        r = device.result(policy)
        right = bool(r.labels[sample] == o.y[sample])
        if r.relayed[sample]:
            relay_at = model.device_s(o.cumulative_macs[policy.depth - 1])
            seconds, answered = _relay(device, link, policy, start + relay_at, sample)
            done = start + relay_at + seconds
            if not answered or r.rejected[sample]:
                done += finish_s - relay_at
                right = right if answered else bool(o.labels[last, sample] == o.y[sample])
        else:
            done = start + model.device_s(r.device_macs[sample])
        busy_until = done
        for name, value in (("arrival", arrival), ("latency", done - arrival), ("right", right),
                            ("relayed", bool(r.relayed[sample])), ("out_of_range", off_grid)):
            getattr(trace, name).append(value)
    return trace
