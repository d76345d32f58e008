"""``bisup demo --exits --link SCHEDULE``: the test inputs through the deployed path over an emulated serial link.

The multi-exit virtual device and the serial bridge talk over two ptys joined by the link emulator, which plays the
schedule (compressed by ``time_scale``). The inputs arrive evenly spread over the schedule (it must ``end``), one
at a time: an input that finds the device busy waits for it. For each input the device's action is recorded with
the link's phase at the moment it started, the bytes the link carried for it (frames, resends and answers) and its
latency, so a run-time scheduler (SPINN's) can later be judged on the same record.

Time: the link and the device's resend timeout run in link time (``DEVICE_TIMEOUT_S`` of link time each, so an
outage costs the same share of the schedule at any scale); the bridge's compute is added to the device's wait, as
it is to the latency, unscaled. An input's latency is the time its relay spent waiting
on the link, scaled back to link time, plus the compute on both sides unscaled (the device's stages, and the
bridge's remote tail, which runs inside the wait and is timed apart). It runs from when the device starts the
input; ``queued_ms`` is how long the input waited for a device still busy with earlier ones.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bisup.converters.artefacts import Policy
from bisup.firmware_bridge import protocol as p
from bisup.firmware_bridge.exits_device import StagedAnswer, StagedDevice
from bisup.firmware_bridge.exits_model import StagedIdentity, StagedModel, relay_for
from bisup.firmware_bridge.handler import RequestHandler
from bisup.firmware_bridge.link_emulator import PtyLink, emulated_pty
from bisup.firmware_bridge.link_schedule import LinkSchedule, ScheduleError
from bisup.firmware_bridge.ptylink import PtyPort
from bisup.firmware_bridge.relay import Answer, Relay
from bisup.firmware_bridge.serial_bridge import SerialBridge
from bisup.firmware_bridge.virtual_device import SerialLink

ADAPTIVE = "per-exit thresholds, split, with a run-time schedule"  # the same policy, its table for the objective
ADAPTIVE_PLOT, ADAPTIVE_RECORDS = "link-adaptive.png", "link-adaptive.json"
if TYPE_CHECKING:
    from bisup.calibration.exits import ExitOutcomes

POLICY = "per-exit thresholds, split"  # the demo policy sent over the link: it answers early, relays and splits
DEVICE_TIMEOUT_S = 1.0  # link seconds the device waits for an answer before it resends (3 resends, then local)
PLOT = "link.png"
Progress = Callable[[str], None]
RECORDS = "link.json"


@dataclass(frozen=True)
class LinkRun:
    """What ``--link`` asks for: the schedule, how much faster than real time to play it, and a latency objective."""

    schedule: LinkSchedule
    time_scale: float = 10.0
    objective_ms: float | None = None
    seed: int = 0

    @classmethod
    def read(cls, path: Path, time_scale: float = 10.0, objective_ms: float | None = None) -> LinkRun:
        """The schedule at ``path``; it must end, since the demo spreads its inputs over it."""
        schedule = LinkSchedule.read(path)
        if schedule.end_s == float("inf"):
            raise ScheduleError(f"{path}: the demo spreads its inputs over the schedule, so it needs an end; add a "
                                "last line such as '120s end'")
        if time_scale <= 0:
            raise ScheduleError(f"--time-scale {time_scale:g} must be positive (1: real time, 10: ten times faster)")
        return cls(schedule, time_scale, objective_ms)


@dataclass(frozen=True)
class Step:
    """One input over the link: when it started (link seconds), the phase then, what the device did, the bytes the
    link carried for it both ways, and its latency (ms of link time)."""

    index: int
    t_s: float
    phase: int
    bandwidth_bps: float
    rtt_ms: float
    loss: float
    action: str
    exit: int
    label: int
    wire_bytes: int
    latency_ms: float
    queued_ms: float
    objective_ms: float | None


class TimedHandler(RequestHandler):
    """The bridge's request handler, keeping the host time it spends answering (the remote tail): compute, not link."""

    def __init__(self, *args: object):
        super().__init__(*args)
        self._done_s, self._since = 0.0, None

    def busy_s(self) -> float:
        """Host seconds spent answering so far, counting an answer in progress."""
        since = self._since
        return self._done_s + (time.monotonic() - since if since is not None else 0.0)

    def handle(self, device: str, body: bytes) -> bytes | None:
        self._since = time.monotonic()
        try:
            return super().handle(device, body)
        finally:
            self._done_s, self._since = self._done_s + time.monotonic() - self._since, None


class TimedDevice(StagedDevice):
    """A staged device whose resend timeout runs in link time: the time the bridge spends computing is added to
    each wait (a remote tail on a loaded host may take longer than a scaled timeout); it keeps the host time its
    relays spent waiting (see the module docstring)."""

    waited_s = 0.0
    bridge_s = 0.0  # the bridge's compute during the last relay
    bridge: TimedHandler

    def ask(self, x_int8: np.ndarray, label: int, confidence: int, stage: int = 0) -> Answer:
        start, busy = time.monotonic(), self.bridge.busy_s()
        try:
            return super().ask(x_int8, label, confidence, stage)
        finally:
            self.waited_s += time.monotonic() - start
            self.bridge_s = self.bridge.busy_s() - busy

    def choose(self) -> Policy:
        """The schedule's entry without a PING: the recorder probes between inputs, so no PING's wait (a round trip of
        the slow phase) lands inside an input's latency."""
        return self.policy if self.scheduler is None else self.scheduler.choose()

    def exchange_seconds(self, host_s: float) -> float:
        """The relay's time on the (compressed) link scaled back to link time, plus the bridge's compute unscaled:
        what the scheduler would have measured on the real link."""
        return self.link_seconds(max(host_s - self.bridge_s, 0.0)) + self.bridge_s

    def _await(self, seq: int, kinds: tuple[type, ...], deadline: float) -> p.Message | None:
        counted = self.bridge.busy_s()
        while True:
            reply = super()._await(seq, kinds, deadline)
            computing = self.bridge.busy_s() - counted
            if reply is not None or computing <= 0:
                return reply
            deadline, counted = max(deadline, time.monotonic()) + computing, counted + computing


def action(answer: StagedAnswer, split: int) -> str:
    """The device's action in the run-time scheduler's words."""
    if answer.exit_taken < 0:
        return "relay input" if split == 0 else f"relay cut {split}"
    if answer.answer.source is p.Source.LOCAL:
        return f"exit {answer.exit_taken}"
    return "local after relay"  # the relay timed out, was held by a BUSY or rejected: the device continued


class _Recorder:
    """Runs inputs one at a time at their arrival times and records each one's ``Step``."""

    def __init__(self, run: LinkRun, link: PtyLink, device: TimedDevice, handler: TimedHandler):
        self.run, self.link, self.device, self.handler = run, link, device, handler
        self.phases = [ph.start_s for ph in run.schedule.phases]

    def _carried(self) -> int:
        return self.link.uplink.stats.sent + self.link.downlink.stats.sent

    def step(self, index: int, x_q: np.ndarray, arrival_s: float) -> Step:
        emulator, scale = self.link.emulator, self.run.time_scale
        time.sleep(max(0.0, (arrival_s - emulator.link_time()) / scale))
        self.device.probe()  # between inputs, as a device loop would: a PING's wait is no input's latency
        t, carried, waited, busy = emulator.link_time(), self._carried(), self.device.waited_s, self.handler.busy_s()
        start = time.monotonic()
        answer = self.device.infer_one(x_q)
        total_s, wait_s = time.monotonic() - start, self.device.waited_s - waited
        link_s = max(0.0, wait_s - (self.handler.busy_s() - busy))
        time.sleep(0.002)  # the answer's last bytes reach the counters
        phase = self.run.schedule.at(t)
        return Step(index, round(t, 4), int(np.searchsorted(self.phases, t, side="right")) - 1, phase.bandwidth_bps,
                    phase.rtt_s * 1e3, phase.loss, action(answer, self.device.last_policy.split), answer.exit_taken,
                    answer.answer.label,
                    self._carried() - carried, round((link_s * scale + total_s - link_s) * 1e3, 3),
                    round(max(0.0, t - arrival_s) * 1e3, 3), self.run.objective_ms)


def through_the_link(run: LinkRun, model: StagedModel, relay: Relay, chosen: Policy, x: np.ndarray,
                     progress: Progress = lambda message: None, name: str = POLICY) -> list[Step]:
    """Every input through the device, the emulated link and the serial bridge; the record per input. The device's
    clock runs in link time, so a policy with a run-time schedule measures the link as it would uncompressed."""
    x_q = model.quantize(x)
    period = run.schedule.end_s / len(x_q)
    stop = threading.Event()
    with emulated_pty(run.schedule, run.time_scale, run.seed) as link:
        handler = TimedHandler(relay, StagedIdentity.of(model))
        bridge = SerialBridge(link.bridge_path, handler)
        thread = threading.Thread(target=bridge.run, args=(stop,), name="bisup-demo-bridge", daemon=True)
        thread.start()
        port = PtyPort(os.open(link.device_path, os.O_RDWR | os.O_NOCTTY), timeout=0.01)
        try:
            device = TimedDevice(SerialLink(port), model, chosen, "demo-link", DEVICE_TIMEOUT_S / run.time_scale)
            device.bridge, device.clock_scale = handler, run.time_scale
            device.hello(timeout_s=60.0, interval_s=max(DEVICE_TIMEOUT_S / run.time_scale, 0.05))
            link.emulator.restart()  # the schedule starts with the first input, not with the handshake
            progress(f"{name}: {len(x_q)} test inputs over the link, {run.schedule.end_s:g} s of schedule at "
                     f"{run.time_scale:g}x")
            recorder = _Recorder(run, link, device, handler)
            return [recorder.step(i, sample, i * period) for i, sample in enumerate(x_q)]
        finally:
            stop.set()
            thread.join(timeout=5)
            port.close()


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def by_phase(run: LinkRun, steps: list[Step], y: np.ndarray | None = None) -> list[dict]:
    """Per phase of the schedule: inputs, latency p50/p95 (ms), actions taken, share meeting the objective, and
    with labels ``y`` the accuracy."""
    rows = []
    for index, (start, stop, phase) in enumerate(run.schedule.spans()):
        mine = [s for s in steps if s.phase == index]
        latencies = [s.latency_ms for s in mine]
        actions = {a: sum(s.action == a for s in mine) for a in sorted({s.action for s in mine})}
        row = {"phase": index, "start_s": start, "stop_s": stop, "link": phase.describe(), "inputs": len(mine),
               "latency_p50_ms": _percentile(latencies, 50), "latency_p95_ms": _percentile(latencies, 95),
               "actions": actions}
        if run.objective_ms is not None:
            row["met_objective"] = float(np.mean([v <= run.objective_ms for v in latencies])) if mine else None
        if y is not None:
            row["accuracy"] = float(np.mean([s.label == y[s.index] for s in mine])) if mine else None
        rows.append(row)
    return rows


def run(link: LinkRun, model: StagedModel, tails: dict, policies: dict[str, Policy], x: np.ndarray, out: Path,
        progress: Progress = lambda message: None, y: np.ndarray | None = None,
        calibration: ExitOutcomes | None = None, board: str | None = None) -> dict:
    """The demo's ``link`` part, with its ``POLICY`` of ``policies`` and the remote ``tails``: records, per-phase
    figures, ``link.json`` and ``link.png`` in ``out``. Given the objective, the ``calibration`` outcomes and the
    ``board``, the same policy with a run-time schedule for that objective goes over the same schedule too
    (``"adaptive"``: ``link-adaptive.json``, ``link-adaptive.png``)."""
    from bisup.calibration.exits import outcomes

    chosen = policies[POLICY]
    outcomes(model, tails, x[:1], np.zeros(1, dtype=int))  # a tail's first call builds its graph: not the link's time
    result = _over_link(link, model, tails, chosen, x, y, out / PLOT, out / RECORDS, POLICY, progress)
    if link.objective_ms is not None and calibration is not None and board is not None:
        adaptive = scheduled(chosen, calibration, link.objective_ms, board)
        result["adaptive"] = _over_link(link, model, tails, adaptive, x, y, out / ADAPTIVE_PLOT,
                                        out / ADAPTIVE_RECORDS, ADAPTIVE, progress)
    return result


def scheduled(chosen: Policy, calibration: ExitOutcomes, objective_ms: float, board: str) -> Policy:
    """``chosen`` with the run-time schedule `bisup calibrate --latency-slo-ms` would give it on ``board``."""
    from bisup.calibration import schedule
    from bisup.calibration.exits import DEFAULT_LINK

    model = schedule.board_model(board, None, DEFAULT_LINK.cloud_macs_per_s)
    return replace(chosen, schedule=schedule.build(calibration, chosen, objective_ms, model).to_json())


def _over_link(link: LinkRun, model: StagedModel, tails: dict, chosen: Policy, x: np.ndarray, y: np.ndarray | None,
               plot_path: Path, records: Path, name: str, progress: Progress) -> dict:
    from bisup.examples.link_plot import plot

    steps = through_the_link(link, model, relay_for(model, tails, chosen), chosen, x, progress, name)
    result = {"policy": name, "time_scale": link.time_scale, "objective_ms": link.objective_ms,
              "phases": by_phase(link, steps, y), "plot": str(plot_path), "records": str(records)}
    records.write_text(json.dumps({**result, "inputs": [asdict(s) for s in steps]}, indent=1) + "\n")
    plot(link.schedule, steps, link.objective_ms, plot_path)
    return result


def phase_table(result: dict) -> str:
    """The per-phase figures as the CLI prints them."""
    objective = result["objective_ms"]
    accuracy = any("accuracy" in row for row in result["phases"])
    head = (f"{'phase':<40} {'inputs':>6} {'p50 ms':>9} {'p95 ms':>9}" + (" met " if objective is not None else "")
            + (" accuracy" if accuracy else ""))
    lines = [head]
    for row in result["phases"]:
        span = f"{row['start_s']:g}-{row['stop_s']:g}s {row['link']}"
        cells = [f"{span[:40]:<40}", f"{row['inputs']:>6}"]
        cells += [f"{v:>9.1f}" if v is not None else f"{'-':>9}" for v in (row["latency_p50_ms"],
                                                                           row["latency_p95_ms"])]
        if objective is not None:
            cells.append(f"{row['met_objective']:>4.0%}" if row["met_objective"] is not None else f"{'-':>4}")
        if accuracy:
            cells.append(f"{row['accuracy']:>8.1%}" if row.get("accuracy") is not None else f"{'-':>8}")
        lines.append(" ".join(cells) + "  " + ", ".join(f"{k} {v}" for k, v in row["actions"].items()))
    return "\n".join(lines)
