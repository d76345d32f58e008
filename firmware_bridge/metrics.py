"""Prometheus metrics for a running bridge (``bisup bridge --metrics-port``).

Counters and histograms follow the handler's events (``bisup.firmware_bridge.events``); the breaker
state and the drift alarm are read when scraped, so they are never stale. Each exporter has its
own registry, so several bridges (or tests) in one process do not collide. Per-device rates are
PromQL's job: ``rate(bisup_requests_total[1m])`` by device.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from bisup.converters.errors import BisupError
from bisup.firmware_bridge.drift import DriftAlarm, Signal
from bisup.firmware_bridge.events import Events
from bisup.firmware_bridge.stats_ledger import StatsLedger

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}


class MetricsError(BisupError, OSError):
    """The metrics endpoint could not start; the message names the port and what to do."""


class Metrics(Events):
    """The bridge's metrics in their own registry."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("bisup_requests", "INFER and SPLIT requests received", ["device", "kind"], registry=r)
        self.outcomes = Counter("bisup_outcomes", "How requests were answered: remote, fallback-rejected (the remote "
                                "supervisor refused the answer), remote_unavailable, duplicate (a retry answered "
                                "from the cache)", ["device", "outcome"], registry=r)
        self.remote_calls = Counter("bisup_remote_calls", "Requests sent towards the remote model or a tail (an "
                                    "open breaker answers some at once)", ["device"],
                                    registry=r)
        self.errors = Counter("bisup_errors", "Requests refused with an ERROR reply, by code", ["code"], registry=r)
        self.latency = Histogram("bisup_request_seconds", "Bridge latency of a request, arrival to reply",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.remote_latency = Histogram("bisup_remote_seconds", "Remote model latency (batching wait included)",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.inferences = Counter("bisup_device_inferences", "Inferences devices reported (STATS)", ["device"],
                                  registry=r)
        self.local = Counter("bisup_device_local_answers", "Answers devices gave locally (STATS)", ["device"],
                             registry=r)
        self.implausible = Counter("bisup_implausible_stats", "STATS refused as impossible, by reason (the log "
                                   "names each device once)", ["reason"], registry=r)
        self.relays_short_stats = Counter("bisup_stats_relays_short", "STATS claiming fewer relays than the bridge "
                                          "received from that boot (the log names each device once)", registry=r)
        self.ledger = StatsLedger()

    def request(self, device: str, kind: str) -> None:
        self.requests.labels(device=device, kind=kind).inc()

    def answered(self, device: str, seconds: float) -> None:
        self.latency.observe(seconds)

    def outcome(self, device: str, decision: str, remote_seconds: float | None = None) -> None:
        self.outcomes.labels(device=device, outcome=decision).inc()
        if remote_seconds is not None:
            self.remote_calls.labels(device=device).inc()
            self.remote_latency.observe(remote_seconds)

    def error(self, device: str, code: str) -> None:
        self.errors.labels(code=code).inc()

    def device_stats(self, device: str, boot: int, inferences: int, local: int, relayed: int) -> None:
        new = self.ledger.check(device, boot, inferences, local, relayed).new
        if new is not None:
            self.inferences.labels(device=device).inc(new[0])
            self.local.labels(device=device).inc(new[1])

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
