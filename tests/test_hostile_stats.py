"""Issue 19, "Honest monitoring": each case measured on the bridge before becomes a test against the real
DriftAlarm, Metrics and RequestHandler.

Measured before: one STATS(10^9, 10^9) switched the alarm on; STATS at the calibrated rate every 320
inferences kept a drifted fleet's alarm off; more relays than inferences gave a remote fraction of 4.42;
120 relays with wrong labels from one device switched the disagreement alarm on; 5,000 device ids made
50,053 series (a 3.4 MB scrape, 2 s); 91,312 boot ids held 45 MB for good; a 60,000-character id cost
600 KB per scrape. The fleets here report exact rates, so that anything that moves the alarm is the liar.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bisup.converters.artefacts import LocalThreshold, RemoteThreshold, Thresholds
from bisup.firmware_bridge import protocol as p
from bisup.firmware_bridge.drift import DriftAlarm, Signal
from bisup.firmware_bridge.events import Fanout
from bisup.firmware_bridge.handler import RequestHandler
from bisup.firmware_bridge.metrics import TOP_DEVICES, Metrics
from bisup.firmware_bridge.protocol import Source
from bisup.firmware_bridge.relay import Answer, InferRequest
from bisup.firmware_bridge.serial_bridge import SerialBridge
from bisup.firmware_bridge.stats_ledger import GRACE_S, MAX_DEVICES, MAX_RATE, RETIRED_BOOTS, StatsLedger

FLEET = [f"d{i:02}" for i in range(20)]


def _thresholds(fraction: float = 0.3, disagreement: float | None = 0.1, samples: int = 359) -> Thresholds:
    achieved = {"remote_fraction": fraction} | ({} if disagreement is None else {"relayed_disagreement": disagreement})
    return Thresholds(LocalThreshold("max-softmax", 10, 0.5, 0.00390625, -128), RemoteThreshold("max-softmax", 0.5),
                      {"mode": "budget"}, None, achieved, validation={"samples": samples})


class Clock:
    """Time that moves only when told, for the rate bound and the idle expiry."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Fleet:
    """Devices that send cumulative STATS of exactly ``relayed`` relays in every ``chunk`` inferences."""

    def __init__(self, send, chunk: int = 10, relayed: int = 3, devices: list[str] = FLEET):
        self.send, self.chunk, self.relayed, self.devices = send, chunk, relayed, devices
        self.counts = {device: (0, 0, 0) for device in devices}

    def round(self) -> None:
        for device in self.devices:
            inferences, local, relayed = self.counts[device]
            self.counts[device] = (inferences + self.chunk, local + self.chunk - self.relayed, relayed + self.relayed)
            self.send(device, 1, *self.counts[device])


def _stats_body(boot: int, inferences: int, local: int, relayed: int, seq: int = 1) -> bytes:
    return p.encode(p.Stats(seq, inferences, local, relayed, boot=boot))


def _bridge(clock: Clock | None = None, **alarm_options) -> tuple[RequestHandler, DriftAlarm, Metrics, list[str]]:
    """A handler (STATS need neither a relay nor a bundle) with the drift alarm and the metrics behind it."""
    logged: list[str] = []
    alarm = DriftAlarm.from_thresholds(_thresholds(**alarm_options), logged.append)
    metrics = Metrics()
    metrics.watch_drift(alarm)
    handler = RequestHandler(None, None, events=Fanout(alarm, metrics), warn=logged.append)  # type: ignore[arg-type]
    if clock is not None:
        handler.ledger.clock = alarm.ledger.clock = metrics.ledger.clock = clock
    return handler, alarm, metrics, logged


def _send_to(handler: RequestHandler):
    return lambda device, boot, *counts: handler.handle(device, _stats_body(boot, *counts))


def _samples(metrics: Metrics) -> dict:
    text = generate_latest(metrics.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# One liar against the remote fraction


@pytest.mark.parametrize("liar", [(10**9, 10**9, 0), (10**9, 0, 10**9)], ids=["all-local", "all-relayed"])
def test_one_huge_stats_cannot_switch_the_alarm_on(liar):
    """Measured: one STATS(10^9, 10^9) switched it on. The handler drops it (too many since the device's
    last STATS, a reboot ago); the window would hold at most 10% from that device anyway, which a Signal fed
    directly shows."""
    handler, alarm, metrics, logged = _bridge()
    fleet = Fleet(_send_to(handler))
    handler.handle("liar", _stats_body(6, 10, 7, 3))
    for _ in range(10):
        fleet.round()
    handler.handle("liar", _stats_body(7, *liar))
    fleet.round()
    assert not alarm.remote_fraction.alarm and alarm.remote_fraction.fired == 0, logged
    assert handler.counts["stats_implausible"] == 1
    assert _samples(metrics)[("bisup_implausible_stats_total", (("reason", "too_fast"),))] == 1
    signal = Signal("remote fraction", 0.3, 359, window=500)
    for device in FLEET * 3:
        signal.add(3, 10, device)
    assert signal.add(liar[2], liar[0], "liar") is None and not signal.alarm
    assert signal.held("liar") == 50 and signal.view().samples >= 500  # 10% of the window


def test_a_huge_first_stats_of_an_unknown_device_is_a_starting_point_not_a_count():
    """A bridge that just started meets devices mid-boot: counts of unknown age are where counting starts."""
    handler, alarm, _, logged = _bridge()
    fleet = Fleet(_send_to(handler))
    for _ in range(10):
        fleet.round()
    handler.handle("liar", _stats_body(7, 10**9, 10**9, 0))
    handler.handle("liar", _stats_body(7, 10**9 + 10, 10**9 + 7, 3, seq=2))
    assert alarm.remote_fraction.held("liar") == 10 and not alarm.remote_fraction.alarm
    assert handler.counts["stats_implausible"] == 0 and not logged


def test_a_liar_at_the_calibrated_rate_cannot_keep_a_drifted_fleets_alarm_off():
    """Measured: STATS at the calibrated 0.3 every 320 inferences kept the alarm off while the fleet
    relayed 55%: the large reports filled the window. Now they fill a tenth of it at most."""
    clock = Clock()
    handler, alarm, _, logged = _bridge(clock)
    send, fleet, liar = _send_to(handler), Fleet(None, chunk=20, relayed=11), [0, 0, 0]
    for _ in range(40):
        clock.now += 1  # a round a second: the liar claims 1,280 inferences a second, which passes the ledger
        for i, device in enumerate(FLEET):  # the liar reports (320 inferences) after every fifth device
            fleet.counts[device] = tuple(a + b for a, b in zip(fleet.counts[device], (20, 9, 11), strict=True))
            send(device, 1, *fleet.counts[device])
            if i % 5 == 4:
                liar = [liar[0] + 320, liar[1] + 224, liar[2] + 96]
                send("liar", 9, *liar)
    view = alarm.remote_fraction.view()
    assert alarm.remote_fraction.alarm and view.live > view.upper, logged
    assert alarm.remote_fraction.held("liar") == 50 and handler.counts["stats_implausible"] == 0
    assert any(line.startswith("drift alarm: remote fraction") for line in logged)


def test_more_relays_than_inferences_never_give_a_fraction_above_one():
    """Measured: STATS(100, 0, 442) showed a remote fraction of 4.42 in the log and the metrics."""
    handler, alarm, metrics, logged = _bridge()
    for seq in range(1, 6):
        handler.handle("bad", _stats_body(1, 100, 0, 442, seq))
    handler.handle("bad2", _stats_body(1, 100, 0, 0))
    handler.handle("bad2", _stats_body(1, 101, 0, 100, seq=2))  # 100 more relays in 1 more inference
    assert handler.counts["stats_implausible"] == 6
    assert sum("device bad:" in line for line in logged) == 1 and sum("device bad2:" in line for line in logged) == 1
    got = _samples(metrics)
    assert got[("bisup_implausible_stats_total", (("reason", "relayed_above_inferences"),))] == 6
    assert 0 <= got[("bisup_drift_live", (("signal", "remote_fraction"),))] <= 1
    direct = DriftAlarm.from_thresholds(_thresholds(), logged.append)
    direct.device_stats("bad", 1, 100, 0, 442)  # an observer fed directly checks its STATS too
    assert direct.remote_fraction.view().samples == 0
    signal = Signal("remote fraction", 0.3, 359, window=500)
    signal.add(442, 100)
    assert signal.view().live == 1.0 and "1.000 over the last 100" in signal.describe()


# One liar against the relayed disagreement


def test_wrong_labels_from_one_device_cannot_switch_the_disagreement_alarm_on():
    """Measured: 120 relays with wrong labels from one device switched it on. Its window (100 relays)
    now holds 10 of them at most."""
    logged: list[str] = []
    alarm = DriftAlarm.from_thresholds(_thresholds(0.3, 0.1), logged.append)
    request = InferRequest("x", 1, np.zeros(64, np.int8), 3, -20)

    def relay(device: str, wrong: bool) -> None:
        alarm.relayed(device, request, Answer(1, 3, 0.9, Source.REMOTE, remote_label=4 if wrong else 3))

    for i in range(200):  # each device's every 10th relay disagrees, two devices a round: the calibrated 10%
        for index, device in enumerate(FLEET):
            relay(device, (i + index) % 10 == 0)
    for _ in range(120):
        relay("liar", True)
    assert not alarm.disagreement.alarm and alarm.disagreement.fired == 0, logged
    assert alarm.disagreement.held("liar") == 10


def test_a_drifted_fleets_disagreement_alarm_goes_on_despite_a_device_that_always_agrees():
    logged: list[str] = []
    alarm = DriftAlarm.from_thresholds(_thresholds(0.3, 0.1), logged.append)
    request = InferRequest("x", 1, np.zeros(64, np.int8), 3, -20)
    for i in range(60):
        for device in FLEET:
            alarm.relayed(device, request, Answer(1, 3, 0.9, Source.REMOTE, remote_label=4 if i % 2 else 3))
        for _ in range(20):
            alarm.relayed("liar", request, Answer(1, 3, 0.9, Source.REMOTE, remote_label=3))
    assert alarm.disagreement.alarm, logged


# The ledger's rules


def test_stats_are_held_to_the_clock_and_to_each_other():
    clock = Clock()
    ledger = StatsLedger(clock=clock)
    assert ledger.check("d", 1, 10, 7, 3).new == (10, 7, 3, 0)
    clock.now += 0.5
    too_many = int(MAX_RATE * (0.5 + GRACE_S)) + 11
    first = ledger.check("d", 1, too_many, too_many - 3, 3)
    assert first.refused == "too_fast" and first.first
    clock.now += 5
    assert ledger.check("d", 1, too_many, too_many - 3, 3).new == (too_many - 10, too_many - 10, 0, 0)
    assert ledger.check("d", 1, too_many, too_many - 3, 3).new is None  # repeated
    assert ledger.check("d", 1, too_many - 5, too_many - 8, 3).new is None  # late
    assert ledger.check("d", 1, too_many, too_many - 4, 4).refused == "not_monotone"  # a repeat that differs
    assert ledger.check("d", 1, too_many + 10, too_many - 10, 20).refused == "not_monotone"  # local fell
    assert ledger.check("d", 1, too_many + 10, too_many - 3, 20).refused == "relayed_above_inferences"
    assert ledger.check("d", 1, too_many + 10, too_many + 11, 3).refused == "local_above_inferences"
    assert ledger.check("d", 2, 32, 30, 2).new == (32, 30, 2, 0)  # rebooted: from zero
    assert ledger.check("d", 1, too_many + 10, too_many + 7, 3).new is None  # late from the old boot: not again
    later = ledger.check("d", 3, 10**9, 10**9, 0)  # a new boot can have made no more than the time since
    assert later.refused == "too_fast" and not later.first  # the device is named once


def test_inputs_off_the_link_grid_are_held_to_the_inferences():
    """A scheduled device's ``out_of_range`` (inputs decided off its link grid) is checked like its other counts."""
    ledger = StatsLedger(clock=Clock())
    assert ledger.check("s", 1, 10, 7, 3, 4).new == (10, 7, 3, 4)
    assert ledger.check("s", 1, 20, 14, 6, 15).refused == "off_grid_above_inferences"  # 11 more off grid in 10
    assert ledger.check("s", 1, 20, 14, 6, 3).refused == "not_monotone"  # fell
    assert ledger.check("s", 1, 20, 14, 6, 9).new == (10, 7, 3, 5)
    assert ledger.check("t", 1, 10, 7, 3, 11).refused == "off_grid_above_inferences"


def test_the_bridge_counts_inputs_off_the_link_grid_per_device():
    """16-byte STATS (a scheduled device's, with ``out_of_range``) through the handler to the metrics; an
    impossible one is refused and counts nothing."""
    handler, _, metrics, _ = _bridge()
    for seq, counts in enumerate([(64, 40, 24, 9), (96, 60, 36, 12), (128, 80, 48, 50)], start=1):
        handler.handle("sched", p.encode(p.Stats(seq, *counts[:3], boot=1, out_of_range=counts[3])))
    handler.handle("plain", _stats_body(1, 64, 40, 24))
    got = _samples(metrics)
    assert got[("bisup_device_off_grid_total", (("device", "sched"),))] == 12
    assert got[("bisup_implausible_stats_total", (("reason", "off_grid_above_inferences"),))] == 1
    assert ("bisup_device_off_grid_total", (("device", "plain"),)) not in got  # unscheduled devices: no series


def test_many_small_stats_cannot_claim_more_than_one_large_one():
    clock = Clock()
    ledger = StatsLedger(clock=clock)
    step = int(MAX_RATE * GRACE_S) // 4  # a quarter of the allowance each, all within the same instant
    claimed = [ledger.check("d", 1, step * n, step * n, 0).new for n in range(1, 6)]
    assert claimed[:4] == [(step, step, 0, 0)] * 4 and claimed[4] is None
    clock.now += 2
    later = step * 4 + 2 * MAX_RATE  # what two seconds give back
    assert ledger.check("d", 1, later, later, 0).new == (2 * MAX_RATE, 2 * MAX_RATE, 0, 0)


def test_a_device_whose_stats_understate_what_it_relayed_is_named_once():
    handler, _, metrics, logged = _bridge()
    for _ in range(100):
        handler.ledger.relay("quiet", 5)  # what _infer notes for each first copy of an INFER
    handler.handle("quiet", _stats_body(5, 90, 90 - 68, 68))  # 32 short: may be in flight
    assert handler.counts["stats_relays_short"] == 0
    for _ in range(50):
        handler.ledger.relay("quiet", 5)
    handler.handle("quiet", _stats_body(5, 200, 200 - 68, 68, seq=2))
    handler.handle("quiet", _stats_body(5, 300, 300 - 70, 70, seq=3))
    assert handler.counts["stats_relays_short"] == 2 and handler.counts["stats_implausible"] == 0
    assert _samples(metrics)[("bisup_stats_relays_short_total", ())] == 2
    short = [line for line in logged if "the bridge received" in line]
    assert len(short) == 1 and "device quiet: its STATS claim 68 relays" in short[0], logged


def test_the_bridge_counts_the_requests_it_received_once_each(bundle_dir):
    """Through INFER bodies: a first copy counts, a retry answered from the cache does not."""
    from bisup.firmware_bridge.bundle import Bundle
    from bisup.firmware_bridge.relay import Relay

    class Uniform:
        name = "uniform"

        def predict(self, x: np.ndarray) -> np.ndarray:
            return np.full((len(x), 10), 0.1)

    bundle = Bundle.load(bundle_dir)
    logged: list[str] = []
    handler = RequestHandler(Relay(Uniform(), bundle.remote_supervisor, bundle.quantization), bundle,
                             warn=logged.append)
    data = bytes(bundle.input_elements)
    for seq in range(1, 41):
        for _ in range(2):  # each sent twice
            handler.handle("dev", p.encode(p.Infer(seq, 3, -20, data, boot=4)))
    assert handler.counts["duplicate"] == 40
    handler.handle("dev", _stats_body(4, 100, 60, 40, seq=99))
    assert handler.counts["stats_relays_short"] == 0 and not logged
    handler.handle("dev", _stats_body(4, 101, 101, 0, seq=100))  # local grew while relayed fell
    assert handler.counts["stats_implausible"] == 1 and "counts that do not move together" in logged[0]
    handler.handle("liar", _stats_body(4, 100, 100, 0, seq=1))
    for seq in range(1, 41):
        handler.handle("liar", p.encode(p.Infer(seq, 3, -20, data, boot=4)))
    handler.handle("liar", _stats_body(4, 110, 110, 0, seq=50))
    assert handler.counts["stats_relays_short"] == 1 and "claim 0 relays" in logged[-1]


# Bounded series and state


def test_5000_device_ids_give_bounded_series_and_a_quick_scrape():
    """Measured: 50,053 series, a 3.4 MB scrape in 2 s. Now the 100 busiest devices and "other"."""
    metrics = Metrics()
    metrics.watch_drift(DriftAlarm.from_thresholds(_thresholds(), lambda line: None))
    for i in range(5000):
        device = f"device-{i:05}"
        metrics.request(device, "infer")
        metrics.outcome(device, "remote", 0.003)
        metrics.answered(device, 0.004)
        metrics.device_stats(device, 1, 64, 40, 24)
    start = time.perf_counter()
    text = generate_latest(metrics.registry)
    seconds = time.perf_counter() - start
    series = [s for family in text_string_to_metric_families(text.decode()) for s in family.samples]
    devices = {s.labels["device"] for s in series if "device" in s.labels}
    print(f"\n5,000 device ids: {len(series)} series, {len(text):,} bytes, scraped in {seconds * 1000:.1f} ms")
    assert len(devices) == TOP_DEVICES + 1 and "other" in devices
    assert len(series) < 1300 and len(text) < 250_000
    assert seconds < 1.0  # 2 s before, a few ms now: this bound only catches a return of the blow-up


def test_the_busiest_devices_take_the_series():
    metrics = Metrics(top_devices=10)
    for i in range(10):
        metrics.request(f"early-{i}", "infer")
    for _ in range(3000):
        metrics.request("busy", "infer")
    labels = {s[1] for s in _samples(metrics) if s[0] == "bisup_requests_total"}
    assert (("device", "busy"), ("kind", "infer")) in labels and len(labels) == 11


def test_100000_boot_ids_keep_the_state_bounded():
    """Measured: 91,312 boot ids held 45 MB that were never released. Now each ledger keeps a device's latest
    boot and its last few, and at most MAX_DEVICES devices."""
    handler, alarm, metrics, _ = _bridge()
    for boot in range(100_000):
        handler.handle("rebooter", _stats_body(boot, 32, 22, 10))
    for ledger in (handler.ledger, alarm.ledger, metrics.ledger):
        assert len(ledger) == 1 and ledger.boots() == 1 + RETIRED_BOOTS
    for i in range(MAX_DEVICES + 2000):
        handler.handle(f"dev-{i}", _stats_body(i, 32, 22, 10))
    print(f"\n100,000 boots of one device, then {MAX_DEVICES + 2000:,} devices: ledgers hold "
          f"{len(handler.ledger)} devices and {handler.ledger.boots()} boot ids; the drift alarm remembers "
          f"{len(alarm._heard)} devices, its window {len(alarm.remote_fraction._by_source)}; "
          f"{len(metrics.devices)} devices have series")
    for ledger in (handler.ledger, alarm.ledger, metrics.ledger):
        assert len(ledger) == MAX_DEVICES and ledger.boots() <= MAX_DEVICES * (1 + RETIRED_BOOTS)
    assert len(alarm._heard) <= MAX_DEVICES and len(alarm.remote_fraction._by_source) <= 500
    assert len(metrics.devices) == TOP_DEVICES


def test_ids_longer_than_hello_allows_are_cut_where_they_enter(caplog):
    """Measured: a 60,000-character id cost 600 KB per scrape."""
    handler, _, metrics, _ = _bridge()
    long_id = "x" * 60_000
    handler.handle(long_id, _stats_body(1, 32, 22, 10))
    handler.handle(long_id, p.encode(p.Ping(1, boot=1)))
    assert all(len(device) <= p.MAX_ID for device in handler.ledger._devices)
    assert len(generate_latest(metrics.registry)) < 10_000
    assert p.bounded_id(long_id) != p.bounded_id("x" * 59_999) and len(p.bounded_id(long_id)) == p.MAX_ID
    with caplog.at_level("WARNING", logger="bisup.bridge"):
        bridge = SerialBridge("/dev/serial/by-id/usb-Espressif_USB_JTAG_serial_debug_unit_7C:DF:A1:00:11:22-if00",
                              handler)
    assert len(bridge.device) == p.MAX_ID and bridge.device in caplog.text
