"""``bisup hil``: drive a labelled set through a board (or QEMU) and the bridge, and report.

The host feeds each test input to the device (FEED). The device runs it as in the field:
inference, the int8 threshold, and for unsure inputs INFER/ANSWER with the bridge, which this
runner serves with the same ``RequestHandler`` as ``bisup bridge``. The device then reports its
final answer, its own outputs and its latency (REPORT). The report compares the run with the host
TFLM oracle and with the offline decisions the thresholds promise on the same data.

With ``--emulate BOARD`` (a board profile with an ``[emulation]`` table: ``mps2-an386`` Cortex-M4,
``mps2-an500`` Cortex-M7, ``mps2-an505`` Cortex-M33, ...), the profile's firmware folder
(``boards/mps2``) is compiled with ``arm-none-eabi-gcc`` for the profile's core and memory map,
together with the bundle's model as generated C (``bisup.converters.engine``), and run in
``qemu-system-arm`` on the profile's machine with ``-icount shift=0``, so that device time counts
instructions. The board runs the model for real:
the report's agreement with the host TFLM oracle is a measurement.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from bisup.calibration import single as calibrate
from bisup.calibration.thresholds import Outcomes, answers, figures
from bisup.converters import engine
from bisup.firmware_bridge import protocol as p
from bisup.firmware_bridge.bundle import Bundle
from bisup.firmware_bridge.handler import RequestHandler
from bisup.firmware_bridge.link_schedule import LinkSchedule
from bisup.firmware_bridge.relay import Relay
from bisup.firmware_bridge.remotes import RemoteModel
from bisup.hil import cycles
from bisup.hil import link as hil_link
from bisup.hil.target import (
    BOARD_RETRIES,
    EMULATED_REQUEST_TIMEOUT_MS,
    HilSession,
    Machine,
    boot,
    build_firmware,
    emulated,
    emulated_waits,
    serial_link,
)

Progress = Callable[[str], None]
def _rate(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def _device_cost(got: list, machine: Machine | None, macs: int) -> dict:
    """Cycles of the inference alone; on an emulated board (-icount shift=0) also instructions, the
    latency they imply at the board's clock, and instructions per multiply-accumulate."""
    cycles = np.array([r.infer_cycles for r in got], dtype=np.float64)
    if not len(cycles):
        return {"cycles_p50": None}
    cost = {"cycles_p50": float(np.median(cycles)), "cycles_max": float(cycles.max()), "macs": macs}
    if machine is not None:
        instructions = float(np.median(cycles)) * machine.nanoseconds_per_cycle
        cost |= {"instructions_p50": instructions, "instructions_per_mac": instructions / macs if macs else None,
                 "latency_us_at_board_clock": instructions / (machine.cpu_hz / 1e6),
                 "cycle_resolution_instructions": machine.nanoseconds_per_cycle}
    return cost


def _layers(generated: engine.Generated, profiles: dict[int, tuple[int, ...]], machine: Machine | None) -> list[dict]:
    """The generated model's layers with what the board measured for each (median over the inputs):
    cycles, and on an emulated board instructions and instructions per MAC."""
    entries = engine.layers(generated)
    cycles = np.array([c for c in profiles.values() if len(c) == len(entries)], dtype=np.float64)
    for k, entry in enumerate(entries if len(cycles) else []):
        entry["cycles_p50"] = float(np.median(cycles[:, k]))
        if machine is not None:
            entry["instructions_p50"] = entry["cycles_p50"] * machine.nanoseconds_per_cycle
            entry["instructions_per_mac"] = entry["instructions_p50"] / entry["macs"] if entry["macs"] else None
    return entries


def summarize(reports: list, bundle: Bundle, o: Outcomes, machine: Machine | None = None,
              profiles: dict[int, tuple[int, ...]] | None = None) -> dict:
    """The HIL report: strategies, latency, device cost, oracle agreement, and the offline comparison."""
    got = [r for r in reports if isinstance(r, p.Report)]
    final = np.array([r.label if isinstance(r, p.Report) else -1 for r in reports])
    relayed = np.array([isinstance(r, p.Report) and r.source is not p.Source.LOCAL for r in reports])
    rejected = np.array([isinstance(r, p.Report) and r.rejected for r in reports])
    offline = answers(o, bundle.threshold_int8, bundle.remote_supervisor.threshold)
    device_outputs = np.array([isinstance(r, p.Report) and r.local_label == o.local_pred[i] and
                               r.local_confidence == o.confidence_int8[i] for i, r in enumerate(reports)])
    latency = np.array([r.latency_us for r in got], dtype=np.float64)
    system = figures(final, o.y, relayed, rejected)
    generated = engine.generate(bundle.model) if machine or profiles else None  # once: it parses the model
    return {
        "samples": len(o),
        "reported": len(got),
        "accuracy": {"local_only": float((o.local_pred == o.y).mean()),
                     "remote_only": float((o.remote_pred == o.y).mean()),
                     "system": system["accuracy"], "accepted": system["accepted_accuracy"]},
        "remote_fraction": system["remote_fraction"],
        "rejected_fraction": system["rejected_fraction"],
        "cost_saved": system["cost_saved"],
        "device_latency_us": {"p50": float(np.percentile(latency, 50)) if len(latency) else None,
                              "p95": float(np.percentile(latency, 95)) if len(latency) else None},
        "device_inference": _device_cost(got, machine, sum(s.macs for s in generated.steps) if machine else 0),
        "device_layers": _layers(generated, profiles, machine) if profiles else [],
        "device_outputs_equal_oracle": _rate(device_outputs),
        "offline_agreement": _rate((final == offline[0]) & (relayed == offline[1]) & (rejected == offline[2])),
        "calibrated": bundle.thresholds.achieved,
        "complete": len(got) == len(o),
    }


def bridge_handler(bundle: Bundle, remote: RemoteModel) -> RequestHandler:
    """The bridge role a HIL run serves: the bundle's remote supervisor over ``remote``."""
    return RequestHandler(Relay(remote, bundle.remote_supervisor, bundle.quantization), bundle)


@dataclass(frozen=True)
class HilReport(Mapping[str, Any]):
    """A HIL run's result: the JSON report (``--json``, ``--report``) and the checks that decide pass or fail
    (``--junit`` writes one test case per check). ``kind`` says which table presents it. It reads as the
    report's mapping too (``report["offline_agreement"]``), as the pytest plugin's users index it."""

    kind: str  # "single" or "exits", as the deployment that ran
    data: dict
    checks: list[tuple[str, bool, str]]  # (name, passed, detail)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.checks)

    def to_json(self) -> dict:
        return self.data

    def junit(self) -> str:
        """JUnit XML with one test case per check, for CI systems."""
        return junit_xml(self.checks)


def junit_xml(checks: list[tuple[str, bool, str]]) -> str:
    failures = sum(not ok for _, ok, _ in checks)
    cases = "".join(
        f'  <testcase classname="bisup.hil" name={quoteattr(name)}>'
        + ("" if ok else f"<failure message={quoteattr(detail)}>{escape(detail)}</failure>")
        + "</testcase>\n"
        for name, ok, detail in checks
    )
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name="bisup-hil" tests="{len(checks)}" '
            f'failures="{failures}">\n{cases}</testsuite>\n')


def checks(report: dict) -> list[tuple[str, bool, str]]:
    """A single-model run passes when every input reported, the board's outputs equal the host's TFLM, and its
    answers equal the decisions made offline."""
    return [
        ("all_inputs_reported", report["complete"], f"{report['reported']} of {report['samples']} reported"),
        ("device_outputs_equal_host_tflm", report["device_outputs_equal_oracle"] == 1.0,
         f"{100 * report['device_outputs_equal_oracle']:.2f} % equal"),
        ("answers_equal_offline_decisions", report["offline_agreement"] == 1.0,
         f"{100 * report['offline_agreement']:.2f} % equal"),
    ]


PORT_TIMEOUT_S = 10.0  # a real board's waits, in host seconds


def waits(bundle: Bundle, emulate: str | None, timeout_s: float | None) -> tuple[float, float]:
    """How long the board may stay silent before its HELLO and while an input is in flight: ``timeout_s`` for
    both when given; else on an emulated board derived from the model's MACs and input frame, in its own time
    (``target.emulated_waits``), and on a real board ``PORT_TIMEOUT_S``."""
    if timeout_s is not None:
        return timeout_s, timeout_s
    if not emulate:
        return PORT_TIMEOUT_S, PORT_TIMEOUT_S
    macs = sum(step.macs for step in engine.generate(bundle.model).steps)
    return emulated_waits(macs, p.HEADER.size + p.FEED_FIXED.size + bundle.input_elements)


def cycle_estimate(emulate: str, bundle: Bundle, x_q: np.ndarray, wait_s: tuple[float, float],
                   handler: RequestHandler) -> dict:
    """Estimated core cycles of one inference of ``x_q``, per layer, from its traced instruction mix (see
    ``bisup.hil.cycles``): QEMU counts instructions, and a load or a taken branch costs a core more than one."""
    layers = len(engine.layers(engine.generate(bundle.model)))
    with tempfile.TemporaryDirectory(prefix="bisup-cycles-") as workdir:
        found = cycles.estimate(emulate, bundle, x_q, layers, Path(workdir), wait_s, handler)
    return cycles.summary(found, emulated(emulate).cpu)


def run(bundle: Bundle, x: np.ndarray, y: np.ndarray, handler: RequestHandler, port_url: str | None = None,
        emulate: str | None = None, timeout_s: float | None = None, progress: Progress = lambda m: None,
        estimate_cycles: bool = False, link_schedule: LinkSchedule | None = None) -> HilReport:
    """Run the set through the board (``port_url``) or QEMU (``emulate``); return the report. ``timeout_s``:
    see ``waits``; ``estimate_cycles``: also trace the first input's inference on the emulated board
    (``cycle_estimate``); ``link_schedule``: the bridge's traffic over an emulated link (``bisup.hil.link``)."""
    board = emulated(emulate) if emulate else None  # a bad profile is named before the host's TFLM run
    o, x_q = calibrate.outcomes(bundle.local_model(), handler.relay.remote, bundle.remote_supervisor.kind, x, y)
    with tempfile.TemporaryDirectory(prefix="bisup-hil-") as workdir, contextlib.ExitStack() as stack:
        if emulate:
            progress(f"building the {emulate} firmware with the model as generated C")
            elf = build_firmware(emulate, bundle, Path(workdir))
            link = stack.enter_context(boot(emulate, elf))
        else:
            link = stack.enter_context(serial_link(port_url))
        link = stack.enter_context(hil_link.through(link, link_schedule, progress))
        session, (hello_s, report_s) = HilSession(link, handler), waits(bundle, emulate, timeout_s)
        if link_schedule is not None and emulate and timeout_s is None:
            report_s = hil_link.lossy_wait(report_s, EMULATED_REQUEST_TIMEOUT_MS / 1000, BOARD_RETRIES)
        session.handshake(bundle.model_hash, hello_s)
        progress(f"board answered HELLO on {emulate or port_url}; feeding {len(x)} inputs")
        reports = session.feed_all(x_q, report_s, progress)
    report = summarize(reports, bundle, o, board, session.profiles)
    report["board"] = emulate or port_url
    if estimate_cycles and emulate:
        progress("tracing one inference for the cycle estimate (slow: QEMU logs every block it runs)")
        report["device_cycle_estimate"] = cycle_estimate(emulate, bundle, x_q[0], waits(bundle, emulate, timeout_s),
                                                         handler)
    return HilReport("single", report, checks(report))






