"""The MQTT bridge on a real mosquitto: several virtual devices (TFLM) through bridge workers on a
shared subscription, exactly-once answers equal to the offline decisions, a worker killed and a
broker restarted mid-run, bad payloads, MQTT 5 response topics, and an unreachable broker."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from cli_errors import error_line
from click.testing import CliRunner
from links import StderrLines
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client.parser import text_string_to_metric_families

from bisup.cli import main
from bisup.converters.artefacts import dumps
from bisup.firmware_bridge import protocol as p
from bisup.firmware_bridge.bundle import Bundle
from bisup.firmware_bridge.handler import RequestHandler
from bisup.firmware_bridge.mqtt_bridge import Routing, start_workers
from bisup.firmware_bridge.mqtt_link import (
    Broker,
    DeviceLink,
    connect,
    deployment_name,
    make_client,
    request_topic,
    response_topic,
)
from bisup.firmware_bridge.relay import InferRequest, Relay
from bisup.firmware_bridge.remotes import RemoteError, open_remote
from bisup.firmware_bridge.resilience import resilient
from bisup.firmware_bridge.virtual_device import VirtualDevice

pytestmark = pytest.mark.slow
DEVICES = ("d1", "d2", "d3")


@pytest.fixture(scope="module")
def relay_bundle(bundle_dir, tmp_path_factory):
    """A copy of the test bundle; `setup` moves its threshold so that the bridge has work."""
    out = tmp_path_factory.mktemp("mqtt-bundle")
    for name in ("model.tflite", "report.json", "thresholds.json"):
        (out / name).write_bytes((bundle_dir / name).read_bytes())
    return out


@pytest.fixture(scope="module")
def setup(relay_bundle, digits_example):
    """Bundle (threshold at the 1/3 quantile of the test confidences), remote, test set, offline answers."""
    bundle = Bundle.load(relay_bundle)
    x, y = np.load(digits_example["test"]).values()
    local = bundle.local_model()
    x_q, labels, conf = local.run(x)
    threshold = int(np.quantile(conf.astype(int), 1 / 3)) + 1
    moved = dataclasses.replace(bundle.thresholds.local, threshold_int8=threshold)
    (relay_bundle / "thresholds.json").write_text(dumps(dataclasses.replace(bundle.thresholds, local=moved)))
    bundle = Bundle.load(relay_bundle)
    remote = open_remote(digits_example["model"])
    relay = Relay(remote, bundle.remote_supervisor, bundle.quantization)
    offline = [int(label) if c >= threshold else relay.handle(InferRequest("x", 0, q, int(label), int(c))).label
               for q, label, c in zip(x_q, labels, conf, strict=True)]
    assert 0.15 < np.mean(conf < threshold) < 0.6
    return bundle, remote, x, y, np.array(offline), local


@pytest.fixture(scope="module")
def route(setup) -> str:
    """The deployment the bridge serves by default, and devices of this bundle use: named after the model hash."""
    return deployment_name(setup[0].model_hash)


def _handler(setup) -> RequestHandler:
    bundle, remote = setup[0], setup[1]
    return RequestHandler(Relay(remote, bundle.remote_supervisor, bundle.quantization), bundle)


def _run_devices(broker: Broker, setup, timeout_s=0.5, retries=3, during=None, x=None) -> dict:
    """Each device runs its third of the test set (or of ``x``) in its own thread; returns answers and stats."""
    bundle, x = setup[0], setup[2] if x is None else x
    parts = np.array_split(np.arange(len(x)), len(DEVICES))
    results: dict[str, tuple] = {}
    units: dict[str, VirtualDevice] = {}

    def one(device_id, index):
        link = DeviceLink(broker, device_id, deployment_name(bundle.model_hash))
        try:  # one TFLM interpreter per device: an interpreter is not thread-safe
            unit = VirtualDevice(link, bundle.local_model(), bundle.threshold_int8, device_id, timeout_s, retries)
            units[device_id] = unit
            unit.hello(10)
            results[device_id] = (index, unit.run(x[index]), unit.stats)
        finally:
            link.close()

    threads = [threading.Thread(target=one, args=(d, i)) for d, i in zip(DEVICES, parts, strict=True)]
    for thread in threads:
        thread.start()
    if during is not None:
        during(units)
    for thread in threads:
        thread.join(timeout=180)
    assert sorted(results) == sorted(DEVICES), "a device did not finish"
    return results


def _check_exactly_once(results, offline) -> int:
    relayed = 0
    for index, answers, stats in results.values():
        wrong = [(int(i), a, int(o)) for i, a, o in zip(index, answers, offline[index], strict=True) if a.label != o]
        assert not wrong, f"{stats}: answers that differ from the offline decisions: {wrong[:3]}"
        assert stats.answered == stats.requests and stats.fallback == stats.rejected  # no timeout fallback
        relayed += stats.requests
    return relayed


def test_three_devices_two_workers_answer_exactly_once(mosquitto, setup):
    broker = Broker.from_url(mosquitto.url)
    handler = _handler(setup)
    workers = start_workers(broker, handler, count=2, prefix="t1-")
    try:
        results = _run_devices(broker, setup)
    finally:
        for worker in workers:
            worker.stop()
    relayed = _check_exactly_once(results, setup[4])
    assert sum(s.resends for _, _, s in results.values()) == 0
    assert handler.counts["remote"] + handler.counts["fallback-rejected"] == relayed  # one remote call each
    assert handler.counts["duplicate"] == 0
    assert all(worker.served > 0 for worker in workers), "the shared subscription should spread the load"


def _calibrated_copy(setup, digits_example, out) -> Path:
    """The relay bundle with the drift baseline of its moved threshold measured on the validation split, as
    `bisup calibrate` records it: the remote fraction and the disagreement on relayed inputs."""
    bundle, remote, local = setup[0], setup[1], setup[5]
    x, _ = np.load(digits_example["val"]).values()
    _, labels, conf = local.run(x)
    relayed = conf < bundle.threshold_int8
    remote_labels = remote.predict(x[relayed]).argmax(axis=1)
    achieved = bundle.thresholds.achieved | {"remote_fraction": float(relayed.mean()),
                                             "relayed_disagreement": float((remote_labels != labels[relayed]).mean())}
    out.mkdir()
    for name in ("model.tflite", "report.json"):
        (out / name).write_bytes((bundle.path / name).read_bytes())
    (out / "thresholds.json").write_text(dumps(dataclasses.replace(bundle.thresholds, achieved=achieved,
                                                                   validation={"samples": len(x)})))
    return out


def _scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _total(scraped: dict, name: str, **labels) -> float:
    return sum(v for (n, got), v in scraped.items() if n == name and set(labels.items()) <= set(got))


def test_metrics_are_scraped_and_the_drift_alarm_tells_a_shifted_stream_from_an_iid_one(mosquitto, setup,
                                                                                        digits_example, tmp_path):
    """`bisup bridge --metrics-port` as the CLI builds it: the i.i.d. test split leaves the alarm quiet and the
    counters equal the handler's; the same digits rotated and noised (bisup.examples.digits.shifted) set it off."""
    from bisup.examples.digits import shifted
    from bisup.service import bridge as serve

    logged: list[str] = []
    bundle = _calibrated_copy(setup, digits_example, tmp_path / "bundle")
    handler, closing = serve.make_handler(bundle, str(digits_example["model"]), serve.RemoteOptions(), None,
                                          logged.append, serve.Monitoring(metrics_port=0, drift_window=200))
    port = int(next(line for line in logged if "metrics on" in line).rsplit(":", 1)[1].split("/")[0])
    broker = Broker.from_url(mosquitto.url)
    workers = start_workers(broker, handler, count=2, prefix="m-")
    try:
        iid = _run_devices(broker, setup)
        quiet, counts = _scrape(port), dict(handler.counts)
        _run_devices(broker, setup, x=shifted(setup[2], seed=5))
        loud = _scrape(port)
    finally:
        for worker in workers:
            worker.stop()
        closing.close()
    relayed = sum(stats.requests for _, _, stats in iid.values())
    assert _total(quiet, "bisup_requests_total") == relayed
    assert _total(quiet, "bisup_outcomes_total") == relayed
    assert _total(quiet, "bisup_outcomes_total", outcome="remote") == counts["remote"]
    assert _total(quiet, "bisup_outcomes_total", outcome="fallback-rejected") == counts.get("fallback-rejected", 0)
    assert _total(quiet, "bisup_remote_calls_total") == relayed
    assert _total(quiet, "bisup_device_inferences_total") == len(setup[2])
    assert _total(quiet, "bisup_request_seconds_count") == relayed
    breakers = [v for (name, _), v in quiet.items() if name == "bisup_breaker_state"]
    assert breakers == [0]  # one remote, breaker closed
    for name in ("remote_fraction", "relayed_disagreement"):
        assert quiet[("bisup_drift_alarm", (("signal", name),))] == 0, (name, logged)
    assert loud[("bisup_drift_alarm", (("signal", "remote_fraction"),))] == 1, logged
    assert loud[("bisup_drift_live", (("signal", "remote_fraction"),))] > \
        loud[("bisup_drift_upper", (("signal", "remote_fraction"),))]
    assert any(line.startswith("drift alarm: remote fraction") for line in logged)


def _bridge_process(url: str, bundle, remote_path, name: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bisup.cli", "bridge", "--mqtt", url, "--remote",
                             str(remote_path), "--bundle", str(bundle.path), "--name", name, "--session-expiry", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _after_requests(units: dict, count: int, action) -> int:
    """Run ``action`` once the devices have sent ``count`` requests; return how many they had sent."""
    deadline = time.monotonic() + 60
    while sum(u.stats.requests for u in list(units.values())) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    sent = sum(u.stats.requests for u in list(units.values()))
    action()
    return sent


def test_killing_a_worker_mid_run_loses_nothing(mosquitto, setup, digits_example):
    """Two bridge processes; one is SIGKILLed mid-run. Its queued requests die with its session after
    1 s; the devices' resends (same seq) outlast that and reach the survivor."""
    broker = Broker.from_url(mosquitto.url)
    bridges = [_bridge_process(mosquitto.url, setup[0], digits_example["model"], n) for n in ("ka", "kb")]
    said = [StderrLines(process) for process in bridges]
    try:
        for lines in said:
            lines.wait_for("serving")
        at_kill = []
        results = _run_devices(broker, setup, timeout_s=0.5, retries=20, during=lambda units: at_kill.append(
            _after_requests(units, 15, lambda: os.killpg(bridges[0].pid, signal.SIGKILL))))
    finally:
        for process in bridges:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
            process.wait(timeout=20)
    relayed = _check_exactly_once(results, setup[4])
    assert relayed > at_kill[0] + 20, "the kill should land mid-run"
    counts = json.loads(said[1].text().strip().splitlines()[-1])
    assert counts.get("remote", 0) + counts.get("fallback-rejected", 0) > 0


def test_broker_restart_mid_run_loses_nothing(mosquitto, setup):
    broker = Broker.from_url(mosquitto.url)
    workers = start_workers(broker, _handler(setup), count=2, prefix="t3-")
    try:
        at_restart = []
        results = _run_devices(broker, setup, timeout_s=0.5, retries=12, during=lambda units: at_restart.append(
            _after_requests(units, 15, mosquitto.restart)))
    finally:
        for worker in workers:
            worker.stop()
    assert _check_exactly_once(results, setup[4]) > at_restart[0] + 20, "the restart should land mid-run"


class _Down:
    """A remote that is down (stands in for a network remote that refuses connections)."""

    name = "down"

    def predict(self, x):
        raise RemoteError("remote down refused the connection")


def _ask(broker: Broker, route: str, body: bytes, properties: Properties | None = None,
         topic=None) -> tuple[bytes, object]:
    got, done = {}, threading.Event()
    client = make_client(broker, "probe")
    client.on_message = lambda c, u, m: (got.update(payload=m.payload, props=m.properties), done.set())
    connect(client, broker)
    try:
        client.subscribe(topic or response_topic("probe", route), qos=1)
        time.sleep(0.2)
        client.publish(request_topic("probe", route), body, qos=1, properties=properties)
        assert done.wait(10), "no answer"
    finally:
        client.disconnect()
        client.loop_stop()
    return got["payload"], got["props"]


def _wait_served(worker, count: int, bound_s: float = 10.0) -> None:
    """Until ``worker`` has acked ``count`` requests (``served`` counts acks, after the handler's count), or
    ``bound_s`` has passed: a bound for a hang, not a speed test; the caller asserts the count."""
    deadline = time.monotonic() + bound_s
    while worker.served < count and time.monotonic() < deadline:
        time.sleep(0.05)


def test_bad_tensor_and_remote_outage_get_immediate_replies(mosquitto, setup, route):
    broker = Broker.from_url(mosquitto.url)
    bundle = setup[0]
    handler = RequestHandler(Relay(_Down(), bundle.remote_supervisor, bundle.quantization), bundle)
    workers = start_workers(broker, handler, prefix="t4-")
    try:
        reply, _ = _ask(broker, route, p.encode(p.Infer(7, 3, -100, b"\x00" * 5)))
        error = p.decode(reply)
        assert isinstance(error, p.ErrorMsg) and error.code is p.ErrorCode.BAD_TENSOR and error.seq == 7
        reply, _ = _ask(broker, route, p.encode(p.Infer(8, 3, -100, b"\x00" * bundle.input_elements)))
        answer = p.decode(reply)
        assert answer.source is p.Source.FALLBACK and answer.label == 3 and answer.seq == 8
    finally:
        workers[0].stop()
    assert handler.counts["error_bad_tensor"] == 1 and handler.counts["remote_unavailable"] == 1


@pytest.mark.parametrize("asked, answered_on", [  # {own}: the probe's resp topic in the bridge's deployment
    ("{own}/call-42", "{own}/call-42"),
    ("bisup/v1/{route}/other-device/resp", "{own}"),  # a device cannot route answers to another
    ("bisup/v1/elsewhere/probe/resp", "{own}"),  # nor to another deployment
    ("{own}/#", "{own}"),  # a filter is no topic: paho would refuse to publish
    ("{own}/+/x", "{own}"),
    ("{own}//x", "{own}"),
])
def test_mqtt5_response_topic_and_correlation_data(mosquitto, setup, route, asked, answered_on):
    broker = Broker.from_url(mosquitto.url)
    workers = start_workers(broker, _handler(setup), prefix="t5-")
    props = Properties(PacketTypes.PUBLISH)
    own = response_topic("probe", route)
    props.ResponseTopic, props.CorrelationData = asked.format(own=own, route=route), b"corr-42"
    try:
        reply, got = _ask(broker, route, p.encode(p.Ping(5)), props, topic=answered_on.format(own=own))
    finally:
        workers[0].stop()
    assert p.decode(reply) == p.Pong(5) and got.CorrelationData == b"corr-42"


def test_requests_a_worker_cannot_answer_are_still_acked(mosquitto, setup):
    """Unacked requests fill mosquitto's in-flight window (100 per client) and then the worker receives
    nothing more, for every device. 150 requests whose handling fails are acked all the same."""

    class Broken:
        counts = {}
        waiting = []  # the worker hands its admission queue to the handler's load hint

        def count(self, name):
            self.counts[name] = self.counts.get(name, 0) + 1

        def handle(self, device, body):
            raise RuntimeError("a bug in the handler")

    broker = Broker.from_url(mosquitto.url)
    broken = Broken()
    worker = start_workers(broker, broken, prefix="t6-", routing=Routing("t6"))[0]  # a name: Broken has no bundle
    sender = make_client(broker, "flooder")
    connect(sender, broker)
    try:
        for n in range(150):
            sender.publish(request_topic("flooder", "t6"), p.encode(p.Ping(n)), qos=1).wait_for_publish(5)
        _wait_served(worker, 150, bound_s=60)  # a loaded CI host took over 10 s
        assert broken.counts.get("internal_error", 0) == 150 and worker.served == 150
    finally:
        sender.disconnect()
        sender.loop_stop()
        worker.stop()


def test_a_started_worker_is_already_listening(mosquitto, setup, route):
    """A request published the moment ``start`` returns is served: start waits for the broker's SUBACK (a request
    with no subscriber yet is dropped by the broker, which once cost a test one of its six requests)."""
    broker = Broker.from_url(mosquitto.url)
    sender = make_client(broker, "eager")
    connect(sender, broker)  # before the worker, so that its first publish follows start() at once
    worker = start_workers(broker, _handler(setup), prefix="t8-")[0]
    try:
        for n in range(3):
            sender.publish(request_topic("eager", route), p.encode(p.Ping(n)), qos=1).wait_for_publish(5)
        _wait_served(worker, 3)
    finally:
        sender.disconnect()
        sender.loop_stop()
        worker.stop()
    assert worker.served == 3


def test_a_device_id_longer_than_hello_allows_is_refused_with_a_line(mosquitto, setup, route, caplog):
    """Every id becomes state and a metric label; a topic level may hold 65,535 characters (a 60,000-character
    id cost 600 KB per scrape). Refused requests are acked, and logged at the 1st, 2nd, 4th... refusal."""
    broker = Broker.from_url(mosquitto.url)
    handler = _handler(setup)
    worker = start_workers(broker, handler, prefix="t7-")[0]
    sender = make_client(broker, "long-id")
    connect(sender, broker)
    try:
        with caplog.at_level("WARNING", logger="bisup.mqtt"):
            for n in range(5):
                sender.publish(request_topic("x" * 1000, route), p.encode(p.Stats(n, 10, 7, 3)),
                               qos=1).wait_for_publish(5)
            reply, _ = _ask(broker, route, p.encode(p.Ping(9)))  # another device is served as before
        _wait_served(worker, 6)
    finally:
        sender.disconnect()
        sender.loop_stop()
        worker.stop()
    assert p.decode(reply) == p.Pong(9) and worker.served == 6
    assert handler.counts["refused_device_id"] == 5 and handler.counts.get("stats", 0) == 0
    lines = [r.getMessage() for r in caplog.records if "refused a request from device id" in r.getMessage()]
    assert len(lines) == 3 and "of 1000 characters: device ids are 1..32 characters" in lines[0], lines


class _Hanging:
    """A model server that accepted the request and never answers (stands in for a hung KServe pod)."""

    name = "hanging"

    def __init__(self):
        self.release = threading.Event()

    def predict(self, x):
        self.release.wait(30)  # released at the end of the test, so the batching thread can stop


def test_a_hung_remote_still_answers_before_the_device_gives_up(mosquitto, setup):
    """The bridge's default remote deadline is derived from the devices' wait (500 ms x 4 attempts), so
    the fallback ANSWER arrives while the device still waits: no request ends in the device's own
    timeout. Before, the deadline equalled the whole wait and the fallback came just too late."""
    from bisup.service.bridge import RemoteOptions

    bundle, x = setup[0], setup[2]
    options = RemoteOptions()  # the bridge's defaults
    hanging = _Hanging()
    guarded = resilient(hanging, options.max_batch, options.max_delay_ms, options.deadline(),
                        options.breaker_failures, options.breaker_cooldown_s)
    handler = RequestHandler(Relay(guarded, bundle.remote_supervisor, bundle.quantization), bundle)
    worker = start_workers(Broker.from_url(mosquitto.url), handler, prefix="t7-")[0]
    link = DeviceLink(Broker.from_url(mosquitto.url), "hung", deployment_name(bundle.model_hash))
    try:
        unit = VirtualDevice(link, bundle.local_model(), 128, "hung", timeout_s=0.5, retries=3)  # relay all
        unit.hello(10)
        answers = unit.run(x[:3])
    finally:
        hanging.release.set()
        link.close()
        worker.stop()
        guarded.close()
    assert unit.stats.requests == unit.stats.answered == 3  # every fallback came as an ANSWER, in time
    assert all(a.source is p.Source.FALLBACK for a in answers) and handler.counts["remote_unavailable"] == 3


def test_clients_set_tcp_nodelay(mosquitto):
    """paho leaves Nagle on (about 44 ms per QoS 1 round trip on loopback); ours must not."""
    client = make_client(Broker.from_url(mosquitto.url), "nodelay-probe")
    connect(client, Broker.from_url(mosquitto.url))
    try:
        assert client.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        client.disconnect()
        client.loop_stop()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_broker_is_one_line(relay_bundle, digits_example):
    url = f"mqtt://127.0.0.1:{_closed_port()}"
    for args in (["device", "--mqtt", url, "--bundle", str(relay_bundle), "--data", str(digits_example["test"])],
                 ["bridge", "--mqtt", url, "--bundle", str(relay_bundle), "--remote", str(digits_example["model"])]):
        line = error_line(CliRunner().invoke(main, args))
        assert f"cannot reach the MQTT broker at {url}" in line and "bisup broker" in line


def test_serial_and_mqtt_are_exclusive(relay_bundle, digits_example):
    result = CliRunner().invoke(main, ["device", "--bundle", str(relay_bundle), "--data", str(digits_example["test"])])
    assert result.exit_code == 2 and "exactly one of --serial and --mqtt" in result.stderr


def test_secure_broker_end_to_end(secure_mosquitto, setup):
    """TLS, passwords and ACLs: the bridge user serves device d1 through its hidden shared group."""
    bundle, _, x, _, offline, local = setup
    workers = start_workers(secure_mosquitto.endpoint("bisup-bridge"), _handler(setup),
                            group=secure_mosquitto.bridge_group, prefix="t6-")
    link = DeviceLink(secure_mosquitto.endpoint("d1"), "d1", deployment_name(bundle.model_hash))
    try:
        unit = VirtualDevice(link, local, bundle.threshold_int8, "d1", 2.0, 2)
        unit.hello(10)
        answers = unit.run(x[:40])
    finally:
        link.close()
        workers[0].stop()
    assert unit.stats.requests > 0 and unit.stats.answered == unit.stats.requests
    assert [a.label for a in answers] == offline[:40].tolist()


def test_two_bridges_on_one_host_never_share_a_client_id():
    """Without --name, each bridge process names its workers after the host and its own process id."""
    from bisup.service.bridge import default_worker_name

    other = subprocess.run([sys.executable, "-c", "from bisup.service.bridge import default_worker_name; "
                            "print(default_worker_name())"], capture_output=True, text=True, check=True)
    assert other.stdout.strip() != default_worker_name()
    assert other.stdout.strip().split("-")[0] == default_worker_name().split("-")[0]  # the same host

