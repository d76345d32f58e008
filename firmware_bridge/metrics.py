"""Prometheus metrics for a running bridge (``bisup bridge --metrics-port``).

Counters and histograms follow the handler's events (``bisup.firmware_bridge.events``); the breaker
state and the drift alarm are read when scraped, so they are never stale. Each exporter has its
own registry, so several bridges (or tests) in one process do not collide. Per-device rates are
PromQL's job: ``rate(bisup_requests_total[1m])`` by device.

Series are bounded: 5,000 device ids once made 50,053 series (a 3.4 MB scrape taking 2 s). Only the
``top_devices`` busiest devices (100 by default; see ``DeviceSeries``) have series of their own, the rest
share ``device="other"``, and ids longer than HELLO allows are cut (``protocol.bounded_id``).
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from bisup.converters.errors import BisupError
from bisup.firmware_bridge.drift import DriftAlarm, Signal
from bisup.firmware_bridge.events import Events
from bisup.firmware_bridge.protocol import bounded_id
from bisup.firmware_bridge.stats_ledger import StatsLedger

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}
TOP_DEVICES = 100  # devices with series of their own
OTHER = "other"  # the device label the rest share
RERANK_EVERY = 1_000  # device events between two rankings (each halves the counts, so recent traffic counts)
PROMOTE_AT = 16  # events (halved at each ranking) before a device takes another's series: a flat fleet never churns


class MetricsError(BisupError, OSError):
    """The metrics endpoint could not start; the message names the port and what to do."""


class DeviceSeries:
    """Which devices have series of their own: the ``limit`` busiest, by device events (requests, outcomes,
    STATS); the rest share ``device="other"``.

    Exact counts are kept for the devices with series only; the others are counted in a Misra-Gries table
    of ``4 * limit`` entries, which holds every device with more than 1/(4 limit + 1) of their events in
    bounded memory. Every ``RERANK_EVERY`` events the counts halve, and a device takes the place of the
    quietest one with a series when it is twice as busy and has ``PROMOTE_AT`` events (so that devices
    alike, or a fleet of many quiet ones, do not swap series at every ranking: each swap is a new series to
    Prometheus); the loser's series are removed (a PromQL ``rate`` copes; a plain ``sum`` over devices
    dips). Not thread-safe: ``Metrics`` calls it under its lock."""

    def __init__(self, limit: int, drop: Callable[[str], None]):
        self.limit, self._drop = limit, drop
        self._own: dict[str, int] = {}
        self._others: dict[str, int] = {}
        self._events = 0

    def __len__(self) -> int:
        """Devices with series of their own."""
        return len(self._own)

    def label(self, device: str) -> str:
        """The device label of one more event of ``device``."""
        self._events += 1
        if device in self._own:
            self._own[device] += 1
        elif len(self._own) < self.limit and device != OTHER:
            self._own[device] = 1
        else:
            self._count_other(device)
        if self._events % RERANK_EVERY == 0:
            self._rerank()
        return device if device in self._own else OTHER

    def _count_other(self, device: str) -> None:
        if device in self._others or len(self._others) < 4 * self.limit:
            self._others[device] = self._others.get(device, 0) + 1
            return
        for other in list(self._others):  # a full table: one event off each (amortized O(1) per event)
            self._others[other] -= 1
            if not self._others[other]:
                del self._others[other]

    def _rerank(self) -> None:
        for device, count in sorted(self._others.items(), key=lambda item: -item[1]):
            weakest = min(self._own, key=self._own.__getitem__, default=None)
            if weakest is None or device == OTHER or count < 2 * max(self._own[weakest], PROMOTE_AT // 2):
                break
            self._own[device] = self._others.pop(device)
            self._others[weakest] = self._own.pop(weakest)
            self._drop(weakest)
        self._own = {device: count // 2 for device, count in self._own.items()}
        self._others = {device: count // 2 for device, count in self._others.items() if count > 1}


class Metrics(Events):
    """The bridge's metrics in their own registry; per-device series for the ``top_devices`` busiest devices."""

    def __init__(self, top_devices: int = TOP_DEVICES) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("bisup_requests", "INFER and SPLIT requests received", ["device", "kind"], registry=r)
        self.outcomes = Counter("bisup_outcomes", "How requests were answered: remote, fallback-rejected (the remote "
                                "supervisor refused the answer), remote_unavailable, duplicate (a retry answered "
                                "from the cache)", ["device", "outcome"], registry=r)
        self.remote_calls = Counter("bisup_remote_calls", "Requests sent towards the remote model or a tail (an "
                                    "open breaker answers some at once)", ["device"],
                                    registry=r)
        self.errors = Counter("bisup_errors", "Requests refused with an ERROR reply, by code", ["code"], registry=r)
        self.busy_refused = Counter("bisup_busy", "Requests refused by the admission limits, by reason: rate (the "
                                    "device's --device-rate), queue (its --device-queue), full (--max-queued); "
                                    "answered BUSY or, past the device's BUSY budget, acked unanswered",
                                    ["device", "reason"], registry=r)
        self.busy_silent = Counter("bisup_busy_unanswered", "Refused requests acked without a BUSY reply (the device "
                                   "was over its budget of BUSY replies)", ["device"], registry=r)
        self.latency = Histogram("bisup_request_seconds", "Bridge latency of a request, arrival to reply",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.remote_latency = Histogram("bisup_remote_seconds", "Remote model latency (batching wait included)",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.inferences = Counter("bisup_device_inferences", "Inferences devices reported (STATS)", ["device"],
                                  registry=r)
        self.local = Counter("bisup_device_local_answers", "Answers devices gave locally (STATS)", ["device"],
                             registry=r)
        self.off_grid = Counter("bisup_device_off_grid", "Inputs scheduled multi-exit devices decided with their "
                                "safe entry because the measured link was off the schedule's grid (STATS)",
                                ["device"], registry=r)
        self.implausible = Counter("bisup_implausible_stats", "STATS refused as impossible, by reason (the log "
                                   "names each device once)", ["reason"], registry=r)
        self.relays_short_stats = Counter("bisup_stats_relays_short", "STATS claiming fewer relays than the bridge "
                                          "received from that boot (the log names each device once)", registry=r)
        self.ledger = StatsLedger()
        self.devices = DeviceSeries(top_devices, self._drop)
        self._series: dict[str, set[tuple[Counter, tuple[str, ...]]]] = {}  # what to remove when a device drops
        self._lock = threading.Lock()

    def _inc(self, metrics: list[tuple[Counter, tuple[str, ...], float]], device: str) -> None:
        """Counts ``(metric, other label values, amount)`` for one event of ``device``, under its label."""
        with self._lock:  # a label and its use in one step: a series dropped meanwhile is not made again
            label = self.devices.label(bounded_id(device))
            for metric, labels, amount in metrics:
                if label != OTHER:
                    self._series.setdefault(label, set()).add((metric, labels))
                metric.labels(label, *labels).inc(amount)

    def _drop(self, device: str) -> None:
        for metric, labels in self._series.pop(device, ()):
            metric.remove(device, *labels)

    def request(self, device: str, kind: str) -> None:
        self._inc([(self.requests, (kind,), 1)], device)

    def answered(self, device: str, seconds: float) -> None:
        self.latency.observe(seconds)

    def outcome(self, device: str, decision: str, remote_seconds: float | None = None) -> None:
        calls = [] if remote_seconds is None else [(self.remote_calls, (), 1)]
        self._inc([(self.outcomes, (decision,), 1), *calls], device)
        if remote_seconds is not None:
            self.remote_latency.observe(remote_seconds)

    def error(self, device: str, code: str) -> None:
        self.errors.labels(code=code).inc()

    def busy(self, device: str, reason: str, answered: bool) -> None:
        silent = [] if answered else [(self.busy_silent, (), 1)]
        self._inc([(self.busy_refused, (reason,), 1), *silent], device)

    def device_stats(self, device: str, boot: int, inferences: int, local: int, relayed: int,
                     off_grid: int = 0) -> None:
        new = self.ledger.check(bounded_id(device), boot, inferences, local, relayed, off_grid).new
        if new is not None:
            off = [(self.off_grid, (), new[3])] if new[3] else []  # only scheduled devices get the series
            self._inc([(self.inferences, (), new[0]), (self.local, (), new[1]), *off], device)

    def implausible_stats(self, device: str, reason: str) -> None:
        self.implausible.labels(reason=reason).inc()

    def relays_short(self, device: str, claimed: int, received: int) -> None:
        self.relays_short_stats.inc()

    def watch_breakers(self, breakers: dict[str, Callable[[], str]]) -> None:
        """Export each remote's circuit breaker state (0 closed, 1 half-open, 2 open), read at scrape time."""
        gauge = Gauge("bisup_breaker_state", "Circuit breaker of a remote: 0 closed, 1 half-open, 2 open",
                      ["remote"], registry=self.registry)
        for name, state in breakers.items():
            gauge.labels(remote=name).set_function(lambda state=state: BREAKER_STATES[state()])

    def watch_drift(self, alarm: DriftAlarm) -> None:
        """Export each drift signal: live and calibrated rate, the band, the window's size, the alarm."""
        fields = {"live": "live rate over the window", "expected": "rate on the validation set",
                  "lower": "lower edge of the band", "upper": "upper edge of the band",
                  "samples": "observations in the window", "alarm": "1 while the live rate is outside the band"}
        for field, doc in fields.items():
            gauge = Gauge(f"bisup_drift_{field}", f"Drift alarm: {doc}", ["signal"], registry=self.registry)
            for signal in alarm.signals():
                gauge.labels(signal=_metric_label(signal)).set_function(
                    lambda signal=signal, field=field: float(getattr(signal.view(), field)))
        fired = Gauge("bisup_drift_alarms", "Times the drift alarm went on", ["signal"], registry=self.registry)
        for signal in alarm.signals():
            fired.labels(signal=_metric_label(signal)).set_function(lambda signal=signal: signal.fired)

    def serve(self, port: int, addr: str = "127.0.0.1"):
        """Start the /metrics endpoint in a daemon thread; returns the HTTP server (``server_port``, ``shutdown``)."""
        try:
            server, _ = start_http_server(port, addr, registry=self.registry)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise MetricsError(f"metrics port {port} on {addr} is in use; choose another --metrics-port "
                                   "(0 picks a free one)") from exc
            raise MetricsError(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}") from exc
        return server


def _metric_label(signal: Signal) -> str:
    return signal.name.replace(" ", "_")
