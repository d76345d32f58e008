"""``bisup bridge``: build the request handler from a bundle and a remote, and serve a serial port or
MQTT until stopped. The CLI only parses options; the orchestration lives here.

The remote deadline is derived from how long devices wait in all (``device_wait_ms``: 500 ms x 4
attempts for `bisup device` and the firmware templates), so that a fallback always arrives while
the device still waits. A network remote that is down at start is served with fallbacks until it
answers, as the README promises for any remote failure.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bisup.converters.errors import BisupError
from bisup.firmware_bridge.admission import DEFAULT_LIMITS, Limits
from bisup.firmware_bridge.collect import Collector
from bisup.firmware_bridge.drift import DriftAlarm
from bisup.firmware_bridge.events import Fanout
from bisup.firmware_bridge.handler import RelayLog, RequestHandler
from bisup.firmware_bridge.metrics import Metrics
from bisup.firmware_bridge.mqtt_link import LEGACY_REQUESTS, Broker, requests_of
from bisup.firmware_bridge.remotes import DeferredRemote, RemoteError, RemoteModel, RemoteSpecError, open_remote
from bisup.firmware_bridge.resilience import CircuitBreaker, resilient

if TYPE_CHECKING:
    from types import FrameType
    from wsgiref.simple_server import WSGIServer

    from bisup.firmware_bridge.mqtt_bridge import Routing

Progress = Callable[[str], None]
RETURN_SHARE = 0.25  # of the devices' wait, left for the answer's way back


class OptionError(BisupError, ValueError):
    """Bridge options that contradict each other; the message names the option."""


@dataclass(frozen=True)
class RemoteOptions:
    """How the bridge guards the remote: batching, the deadline, the circuit breaker."""

    max_batch: int = 32
    max_delay_ms: float = 2.0
    device_wait_ms: float = 2000.0
    deadline_ms: float | None = None
    breaker_failures: int = 5
    breaker_cooldown_s: float = 10.0

    def deadline(self) -> float:
        """The remote deadline: given, or the devices' wait less the share for the way back."""
        if self.device_wait_ms <= 0:
            raise OptionError(f"--device-wait-ms {self.device_wait_ms:g} must be positive")
        if self.deadline_ms is None:
            return (1 - RETURN_SHARE) * self.device_wait_ms
        if self.deadline_ms >= self.device_wait_ms:
            raise OptionError(f"--deadline-ms {self.deadline_ms:g} ms is not shorter than the devices' wait of "
                              f"{self.device_wait_ms:g} ms, so a fallback would arrive after the device gave up; "
                              "lower it or leave it out")
        return self.deadline_ms


def open_bridge_remote(spec: str, progress: Progress) -> RemoteModel:
    """The remote; a model server that is down now is served with fallbacks until it answers."""
    if "://" not in spec:
        progress(f"loading the remote model {spec} (TensorFlow start-up and the model: often 10-40 s)")
    try:
        return open_remote(spec)
    except RemoteSpecError:
        raise  # no backend for this spec, or a broken plug-in: waiting for a server will not fix that
    except RemoteError as exc:
        if "://" not in spec:
            raise  # a file the user must fix
        progress(f"warning: {exc}; answering `fallback` until it responds")
        return DeferredRemote(spec)


@dataclass(frozen=True)
class Monitoring:
    """What the bridge exports while it runs: Prometheus metrics (when a port is given) and the drift alarm."""

    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    drift_window: int = 500  # device inferences in the remote-fraction window
    collect: Path | None = None  # the flywheel: keep relayed inputs with the remote's answers here
    collect_max_mb: float = 1024.0


def make_handler(bundle_path: str | Path, remote_spec: str, options: RemoteOptions, json_log: Path | None,
                 progress: Progress, monitoring: Monitoring = Monitoring()):
    """The handler every transport serves, and what to close when done (the guarded remotes, the collector, the
    metrics endpoint). What is served depends on the deployment (``bisup.deployment``): one remote for a single
    model, one tail per split for a multi-exit one (see ``tail_specs``)."""
    from bisup.deployment import open_deployment

    deployment = open_deployment(bundle_path)
    deadline = options.deadline()
    observers = deployment.observers(monitoring, progress)
    guarded = [resilient(open_bridge_remote(spec, progress), options.max_batch, options.max_delay_ms, deadline,
                         options.breaker_failures, options.breaker_cooldown_s)
               for spec in deployment.remote_specs(remote_spec)]
    events, closing = _monitor(monitoring, deployment.remote_names(guarded), observers, progress)
    handler = RequestHandler(deployment.relay(guarded), deployment.identity(), RelayLog(json_log), events=events,
                             warn=progress)
    return handler, _Closing([*guarded, *closing])


def _monitor(monitoring: Monitoring, remotes: dict, observers: list, progress: Progress):
    """The handler's observers and what of them to close (the collector, the metrics endpoint)."""
    closing = [o for o in observers if isinstance(o, Collector)]
    drift = next((o for o in observers if isinstance(o, DriftAlarm)), None)
    if monitoring.metrics_port is None:
        return Fanout(*observers), closing
    metrics = Metrics()
    metrics.watch_breakers({name: (lambda r=r: r.state) for name, r in remotes.items()
                            if isinstance(r, CircuitBreaker)})
    if drift:
        metrics.watch_drift(drift)
    server = metrics.serve(monitoring.metrics_port, monitoring.metrics_addr)
    progress(f"metrics on http://{monitoring.metrics_addr}:{server.server_port}/metrics")
    return Fanout(*observers, metrics), [*closing, _HttpServer(server)]


class _HttpServer:
    def __init__(self, server: WSGIServer):
        self.server = server

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def tail_specs(remote_spec: str, splits: int) -> list[str]:
    """Where the tails are: the folder `bisup exits` wrote (tail0.keras ...), or a URL with ``{split}`` in it
    (e.g. ``oip+http://host:8080/v2/models/tail{split}``)."""
    if "{split}" in remote_spec:
        return [remote_spec.format(split=s) for s in range(splits)]
    folder = Path(remote_spec)
    if not folder.is_dir():
        raise RemoteError(f"a multi-exit bundle needs its remote tails: give --remote the folder `bisup exits` "
                          f"wrote, or a URL with {{split}} in it; {remote_spec} is neither")
    return [str(folder / f"tail{s}.keras") for s in range(splits)]


class _Closing:
    """Closes every guarded remote (and the metrics endpoint) at once."""

    def __init__(self, closables: list):
        self.closables = closables

    def close(self) -> None:
        for closable in self.closables:
            closable.close()


PTY = "pty"  # --serial pty: a pseudo-terminal for trying the bridge without a board


def serve_serial(url: str, handler: RequestHandler, baud: int, wait: bool, progress: Progress) -> None:
    """Serve one port until Ctrl-C or SIGTERM. ``url`` "pty" makes a pseudo-terminal and prints the path
    a device (`bisup device --serial PATH`) opens, so no board and no socat are needed."""
    from bisup.firmware_bridge.ptylink import PtyServer
    from bisup.firmware_bridge.serial_bridge import SerialBridge

    stop = _stop_on_signals()
    pty = PtyServer() if url == PTY else None
    bridge = SerialBridge(url, handler, baud, opener=pty.open) if pty else SerialBridge(url, handler, baud)
    if pty:
        progress(f"device end of the pty: {pty.device_path} (bisup device --serial {pty.device_path} ...)")
    progress(f"serving {pty.device_path if pty else url} (Ctrl-C to stop)")
    try:
        bridge.run(stop, wait_for_port=wait)
    except KeyboardInterrupt:
        stop.set()
    finally:
        if pty:
            pty.close()


def default_worker_name() -> str:
    """The host and this process: two bridges on one host never share a client id (and so never take each
    other's sessions). A restarted bridge then starts a new session; ``--name`` keeps one across restarts."""
    return f"{socket.gethostname()}-{os.getpid()}"


def serve_mqtt(broker: Broker, handler: RequestHandler, workers: int, threads: int, group: str, name: str | None,
               session_expiry_s: int, progress: Progress, routing: Routing | None = None,
               limits: Limits = DEFAULT_LIMITS) -> None:
    """Run ``workers`` shared-subscription workers until Ctrl-C or SIGTERM, taking only the requests of their
    deployment (``routing``; by default the one named after the bundle's model hash), each admitting requests per
    device within ``limits`` (what goes past them is answered BUSY)."""
    from bisup.firmware_bridge.mqtt_bridge import start_workers

    prefix = f"{name or default_worker_name()}-w"
    running = start_workers(broker, handler, workers, group, threads, session_expiry_s, prefix, routing, limits)
    progress(f"{workers} worker(s) serving {broker.url} as group {group!r}: "
             f"{', '.join(w.client_id for w in running)} (Ctrl-C to stop)")
    progress(f"deployment {running[0].deployment!r}: devices publish to {requests_of(running[0].deployment)}"
             + (f" (and legacy {LEGACY_REQUESTS})" if running[0].routing.legacy_topics else ""))
    stop = _stop_on_signals()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for worker in running:
            worker.stop()


def _stop_on_signals() -> threading.Event:
    """An event that SIGTERM and Ctrl-C (SIGINT) set, so the bridge stops between requests and closes its
    remotes, collector and metrics cleanly. A KeyboardInterrupt raised wherever the main thread happens to be
    (inside a relay, holding a lock) could leave it unable to finish; a second Ctrl-C still interrupts at once.
    The SIGINT handler is installed even where SIGINT arrives ignored (a shell's background job), where Python
    would install none and `kill -INT` would do nothing."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop
