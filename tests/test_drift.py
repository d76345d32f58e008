"""The drift alarm's statistics and the metrics it and the handler export, without a transport
(the MQTT tests scrape a running bridge). Lying devices: test_hostile_stats."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bisup.converters.artefacts import LocalThreshold, RemoteThreshold, Thresholds
from bisup.firmware_bridge.drift import IDLE_S, MIN_SAMPLES, DriftAlarm, Signal
from bisup.firmware_bridge.metrics import Metrics, MetricsError
from bisup.firmware_bridge.protocol import Source
from bisup.firmware_bridge.relay import Answer, InferRequest


def _stream(signal: Signal, rate: float, inferences: int, rng, chunk: int = 32) -> list[bool]:
    """Feeds Bernoulli(rate) outcomes in STATS-sized chunks; returns the alarm state after each chunk."""
    states = []
    for _ in range(inferences // chunk):
        signal.add(int(rng.binomial(chunk, rate)), chunk)
        states.append(signal.alarm)
    return states


def test_an_iid_stream_stays_quiet_and_a_shifted_one_fires():
    rng = np.random.default_rng(0)
    quiet = Signal("remote fraction", 0.30, 359, window=500)
    assert not any(_stream(quiet, 0.30, 50_000, rng))  # 1,562 checks at a 0.1% false alarm rate each
    loud = Signal("remote fraction", 0.30, 359, window=500)
    states = _stream(loud, 0.55, 2_000, rng)
    assert states[-1] and loud.fired == 1
    assert not any(states[: MIN_SAMPLES // 32])  # not before the window holds enough to test


def test_the_alarm_clears_when_the_stream_comes_back():
    rng = np.random.default_rng(1)
    signal = Signal("remote fraction", 0.30, 359, window=500)
    _stream(signal, 0.60, 1_000, rng)
    assert signal.alarm
    _stream(signal, 0.30, 2_000, rng)
    assert not signal.alarm and signal.fired == 1


def _thresholds(fraction: float, disagreement: float | None, samples: int = 359) -> Thresholds:
    achieved = {"remote_fraction": fraction} | ({} if disagreement is None else {"relayed_disagreement": disagreement})
    return Thresholds(LocalThreshold("max-softmax", 10, 0.5, 0.00390625, -128), RemoteThreshold("max-softmax", 0.5),
                      {"mode": "budget"}, None, achieved, validation={"samples": samples})


def test_a_rate_on_the_edge_of_the_band_does_not_flap():
    """Hysteresis: on beyond 3.29 standard errors, off only within 2, so alternating 49/48% of 100 relays
    against 19.6% (the demo's flapping case before) goes on once and stays on."""
    signal = Signal("relayed disagreement", 0.196, 46, window=100)
    for i in range(2000):
        signal.add(1 if (i % 100) < (49 if (i // 100) % 2 else 48) else 0, 1)
    assert signal.fired == 1


def test_cumulative_stats_count_once_per_device_and_boot():
    logged = []
    alarm = DriftAlarm.from_thresholds(_thresholds(0.3, 0.2), logged.append)
    alarm.device_stats("d1", 7, 100, 70, 30)
    alarm.device_stats("d1", 7, 100, 70, 30)  # repeated: nothing new
    alarm.device_stats("d1", 7, 90, 60, 30)  # late: older than what we have
    alarm.device_stats("d1", 8, 50, 35, 15)  # rebooted: counts restart
    view = alarm.remote_fraction.view()
    assert view.samples == 150 and view.live == pytest.approx(45 / 150)
    assert not logged


def test_disagreement_on_relays_fires_and_is_logged():
    logged = []
    alarm = DriftAlarm.from_thresholds(_thresholds(0.3, 0.1), logged.append)
    request = InferRequest("d1", 1, np.zeros(64, np.int8), 3, -20)
    for i in range(200):  # half the relays disagree, against 10% calibrated
        alarm.relayed("d1", request, Answer(1, 3, 0.9, Source.REMOTE, remote_label=3 if i % 2 else 4))
    assert alarm.disagreement.alarm and any("relayed disagreement" in line and "drift alarm:" in line
                                            for line in logged)


def test_an_old_calibration_watches_the_remote_fraction_only():
    logged = []
    alarm = DriftAlarm.from_thresholds(_thresholds(0.3, None), logged.append)
    assert alarm.disagreement is None and "calibrate again" in logged[0]


FLEET = [f"d{i:02}" for i in range(20)]


def test_no_device_holds_more_than_its_share_of_the_window():
    """A tenth of the window at most, from ten devices on, however large its reports; rates stay in [0, 1]."""
    rng = np.random.default_rng(3)
    signal = Signal("remote fraction", 0.3, 359, window=500)
    for step in range(3000):
        device = "big" if step % 3 == 0 else FLEET[int(rng.integers(len(FLEET)))]
        size = 10**6 if device == "big" else int(rng.integers(1, 40))
        signal.add(int(rng.integers(0, 2 * size)), size, device)  # hits beyond trials too
        if sum(signal.held(d) > 0 for d in [*FLEET, "big"]) >= 10:
            assert signal.held("big") <= 50, step
        assert 0 <= signal.view().live <= 1


def test_while_the_window_fills_a_device_weighs_no_more_than_its_share_of_what_is_there():
    """Twenty devices' first STATS (200 inferences in all), then one of 10^6: its 50 would be a fifth."""
    signal = Signal("remote fraction", 0.3, 359, window=500)
    for device in FLEET:
        signal.add(3, 10, device)
    signal.add(10**6, 10**6, "big")
    view = signal.view()
    assert signal.held("big") == 50 and not signal.alarm and view.lower <= view.live <= view.upper
    assert view.samples == 225  # the fleet's 200 and a tenth of 250


def test_a_small_fleet_weighs_its_devices_alike_and_a_lone_device_is_the_fleet():
    signal = Signal("remote fraction", 0.3, 359, window=500)
    signal.add(300, 1000, "solo")
    assert signal.held("solo") == 500  # as before: one device fills the window
    for _ in range(50):
        signal.add(3, 10, "a")
        signal.add(3, 10, "b")
    assert all(signal.held(d) <= 167 for d in ("solo", "a", "b")) and signal.view().samples >= 498  # rounding


def test_a_device_silent_for_an_hour_leaves_the_windows():
    """Otherwise its last counts would hold a third of a three-device window for good."""
    now = [1000.0]
    alarm = DriftAlarm.from_thresholds(_thresholds(0.3, 0.2), lambda line: None)
    alarm.clock = alarm.ledger.clock = lambda: now[0]
    for n in range(1, 61):  # STATS of 10 inferences a second each; "gone" stops after 30
        if n == 31:
            assert alarm.remote_fraction.held("gone") == 167  # a third of 500
            now[0] += IDLE_S + 1
        for device in ("a", "b", "gone") if n <= 30 else ("a", "b"):
            alarm.device_stats(device, 1, 10 * n, 7 * n, 3 * n)
        now[0] += 1
    assert alarm.remote_fraction.held("gone") == 0 and alarm.remote_fraction.view().samples == 500


def _samples(metrics: Metrics) -> dict:
    text = generate_latest(metrics.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_follow_events_and_read_drift_and_breakers_when_scraped():
    metrics = Metrics()
    alarm = DriftAlarm.from_thresholds(_thresholds(0.3, 0.1), lambda line: None)
    state = {"now": "closed"}
    metrics.watch_breakers({"remote": lambda: state["now"]})
    metrics.watch_drift(alarm)
    metrics.request("d1", "infer")
    metrics.outcome("d1", "remote", 0.004)
    metrics.answered("d1", 0.005)
    metrics.outcome("d1", "duplicate")
    metrics.error("d2", "BAD_TENSOR")
    metrics.device_stats("d1", 1, 64, 40, 24)
    metrics.device_stats("d1", 1, 64, 40, 24)
    alarm.device_stats("d1", 1, 400, 100, 300)
    state["now"] = "open"
    got = _samples(metrics)
    assert got[("bisup_requests_total", (("device", "d1"), ("kind", "infer")))] == 1
    assert got[("bisup_outcomes_total", (("device", "d1"), ("outcome", "duplicate")))] == 1
    assert got[("bisup_remote_calls_total", (("device", "d1"),))] == 1
    assert got[("bisup_errors_total", (("code", "BAD_TENSOR"),))] == 1
    assert got[("bisup_device_inferences_total", (("device", "d1"),))] == 64
    assert got[("bisup_device_local_answers_total", (("device", "d1"),))] == 40
    assert got[("bisup_request_seconds_count", ())] == 1
    assert got[("bisup_remote_seconds_bucket", (("le", "0.005"),))] == 1
    assert got[("bisup_breaker_state", (("remote", "remote"),))] == 2
    assert got[("bisup_drift_alarm", (("signal", "remote_fraction"),))] == 1
    assert got[("bisup_drift_live", (("signal", "remote_fraction"),))] == pytest.approx(0.75)
    assert got[("bisup_drift_expected", (("signal", "relayed_disagreement"),))] == pytest.approx(0.1)


def test_a_metrics_port_in_use_is_one_clear_error():
    first = Metrics().serve(0)
    try:
        with pytest.raises(MetricsError, match=f"metrics port {first.server_port} .* is in use"):
            Metrics().serve(first.server_port)
    finally:
        first.shutdown()
        first.server_close()
