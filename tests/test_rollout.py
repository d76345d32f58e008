"""A model rollout on one real mosquitto: deployments v1 and v2 (two bundles of the digits CNN whose confidence
heads differ, so their model hashes do) served by two bridges at once, with devices of each version.

Before the deployment level in the topics, both bridges took every request: one device's 28 requests made
28 + 28 remote calls, and the wrong bundle's answer could come first. Here every answer must be the one its own
bundle gives offline (its thresholds: v2's remote supervisor rejects answers v1's accepts), and each bridge's
remote must be asked exactly once per request of its own devices. The remotes are the real digits CNN behind a
counter, plugged in through the remote registry as a `bisup bridge --remote` would be.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import urllib.parse

import numpy as np
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bisup.converters.artefacts import dumps
from bisup.firmware_bridge import protocol as p
from bisup.firmware_bridge import remote_registry
from bisup.firmware_bridge.bundle import Bundle
from bisup.firmware_bridge.mqtt_bridge import Routing, start_workers
from bisup.firmware_bridge.mqtt_link import (
    TOPIC_ROOT,
    Broker,
    DeviceLink,
    connect,
    deployment_name,
    make_client,
    request_topic,
    response_topic,
)
from bisup.firmware_bridge.relay import InferRequest, Relay
from bisup.firmware_bridge.remotes import open_remote
from bisup.firmware_bridge.virtual_device import DeviceTimeout, VirtualDevice

pytestmark = pytest.mark.slow
VERSIONS = ("v1", "v2")
REMOTE_THRESHOLD = {"v1": 0.0, "v2": 0.995}  # v1 accepts every remote answer, v2 rejects the less sure ones
SAMPLES = 90  # per device; two devices per version


def _bundle(out, model: bytes, report: bytes, thresholds_from, x, remote_threshold: float) -> Bundle:
    """A bundle folder whose local threshold relays about half of ``x`` and whose remote threshold is given."""
    out.mkdir()
    (out / "model.tflite").write_bytes(model)
    (out / "report.json").write_bytes(report)
    (out / "thresholds.json").write_bytes(thresholds_from.read_bytes())
    bundle = Bundle.load(out)
    conf = bundle.local_model().run(x)[2].astype(int)
    local = dataclasses.replace(bundle.thresholds.local, threshold_int8=int(np.median(conf)) + 1)
    remote = dataclasses.replace(bundle.thresholds.remote, threshold=remote_threshold)
    (out / "thresholds.json").write_text(dumps(dataclasses.replace(bundle.thresholds, local=local, remote=remote)))
    return Bundle.load(out)


@pytest.fixture(scope="module")
def rollout(bundle_dir, converted, digits_example, tmp_path_factory) -> dict[str, Bundle]:
    """v1: the session's export; v2: the same CNN converted again with another supervisor temperature (a new
    confidence head: a new model hash, the same input). No training."""
    from bisup.boards import load_board
    from bisup.export.single import convert, write

    x = np.load(digits_example["test"])["x"][: 2 * SAMPLES]
    root = tmp_path_factory.mktemp("rollout")
    again = convert(digits_example["model"], digits_example["calib"], "max-softmax",
                    temperature_value=2 * converted.temperature)
    write(again, load_board("nrf52840"), root / "export-v2")
    sources = {"v1": bundle_dir, "v2": root / "export-v2"}
    bundles = {v: _bundle(root / v, (sources[v] / "model.tflite").read_bytes(),
                          (sources[v] / "report.json").read_bytes(), bundle_dir / "thresholds.json", x,
                          REMOTE_THRESHOLD[v]) for v in VERSIONS}
    assert bundles["v1"].model_hash != bundles["v2"].model_hash, "v2 must be another model"
    return bundles


class CountingRemote:
    """The real remote model, counting the inputs it is asked about (a batch of n counts n)."""

    def __init__(self, inner, name: str):
        self.inner, self.name, self.inputs, self._lock = inner, name, 0, threading.Lock()

    def predict(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            self.inputs += len(x)
        return self.inner.predict(x)


@pytest.fixture
def counting(digits_example, monkeypatch) -> dict[str, CountingRemote]:
    """``count://v1`` and ``count://v2`` open these, through the registry (on a copy of its table)."""
    model = open_remote(digits_example["model"])
    remotes = {v: CountingRemote(model, f"count-{v}") for v in VERSIONS}
    monkeypatch.setattr(remote_registry, "_TABLE", dict(remote_registry._TABLE))
    remote_registry.register_remote("count", lambda spec, timeout_s: remotes[urllib.parse.urlsplit(spec).netloc])
    return remotes


def _offline(bundle: Bundle, remote, x: np.ndarray) -> list[tuple[int, p.Source, bool]]:
    """What a device of ``bundle`` ends up with for each input: (label, source, rejected)."""
    x_q, labels, conf = bundle.local_model().run(x)
    relay = Relay(remote, bundle.remote_supervisor, bundle.quantization)
    out = []
    for q, label, c in zip(x_q, labels, conf, strict=True):
        if c >= bundle.threshold_int8:
            out.append((int(label), p.Source.LOCAL, False))
        else:
            answer = relay.handle(InferRequest("x", 0, q, int(label), int(c)))
            out.append((answer.label, answer.source, answer.rejected))
    return out


def _bridges(broker: Broker, rollout, groups: dict[str, str]):
    """One bridge per version, built as `bisup bridge --bundle vN --remote count://vN` builds it."""
    from bisup.service.bridge import RemoteOptions, make_handler

    built = {}
    for v in VERSIONS:
        handler, closing = make_handler(rollout[v].path, f"count://{v}", RemoteOptions(), None, lambda line: None)
        built[v] = (handler, closing, start_workers(broker, handler, group=groups[v], prefix=f"rollout-{v}-"))
    return built


def _stop(built) -> None:
    for _, closing, workers in built.values():
        for worker in workers:
            worker.stop()
        closing.close()


def _device(broker: Broker, bundle: Bundle, device_id: str, x: np.ndarray, results: dict) -> None:
    link = DeviceLink(broker, device_id, deployment_name(bundle.model_hash))
    try:
        unit = VirtualDevice(link, bundle.local_model(), bundle.threshold_int8, device_id, timeout_s=3.0)
        hello = unit.hello(10)
        results[device_id] = (hello, unit.run(x), unit.stats)
    finally:
        link.close()


@pytest.mark.parametrize("groups", [{"v1": "bisup", "v2": "bisup"}, {"v1": "fleet-v1", "v2": "fleet-v2"}],
                         ids=["one-group", "two-groups"])
def test_each_device_is_answered_by_its_own_deployment_once(mosquitto, rollout, counting, digits_example, groups):
    broker = Broker.from_url(mosquitto.url)
    x = np.load(digits_example["test"])["x"][: 2 * SAMPLES]
    parts = {f"{v}-{k}": (v, x[k * SAMPLES:(k + 1) * SAMPLES]) for v in VERSIONS for k in range(2)}
    built = _bridges(broker, rollout, groups)
    results: dict = {}
    try:
        threads = [threading.Thread(target=_device, args=(broker, rollout[v], d, xs, results))
                   for d, (v, xs) in parts.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
    finally:
        _stop(built)
    assert sorted(results) == sorted(parts), "a device did not finish"
    requests = dict.fromkeys(VERSIONS, 0)
    for device, (version, xs) in parts.items():
        hello, answers, stats = results[device]
        assert hello.model_hash == rollout[version].model_hash, f"{device} greeted by another deployment"
        expected = _offline(rollout[version], counting[version].inner, xs)
        got = [(a.label, a.source, a.rejected) for a in answers]
        assert got == expected, f"{device}: {sum(g != e for g, e in zip(got, expected, strict=True))} answers differ"
        assert stats.answered == stats.requests  # every request answered, none by the device's own timeout
        requests[version] += stats.requests
    rejected = {v: sum(a.rejected for d, (ver, _) in parts.items() if ver == v for a in results[d][1])
                for v in VERSIONS}
    assert rejected["v1"] == 0 < rejected["v2"], rejected  # the thresholds tell the deployments apart
    for v in VERSIONS:
        handler = built[v][0]
        assert counting[v].inputs == requests[v] > 0, (v, counting[v].inputs, requests[v])
        assert handler.counts.get("remote", 0) + handler.counts.get("fallback-rejected", 0) == requests[v]
    print(f"rollout {groups}: requests {requests}, remote inputs "
          f"{ {v: counting[v].inputs for v in VERSIONS} }, rejected {rejected}")


def test_bisup_device_finds_its_deployment_and_names_a_missing_one(mosquitto, rollout, counting, digits_example,
                                                                   tmp_path):
    """`bisup device`'s own path: by default its bundle's deployment; a deployment no bridge serves is one line
    naming the topic and the fix, after the HELLO timeout."""
    from bisup.service import device as virtual

    broker = Broker.from_url(mosquitto.url)
    data = np.load(digits_example["test"])
    np.savez(tmp_path / "few.npz", x=data["x"][:40], y=data["y"][:40])
    built = _bridges(broker, rollout, {"v1": "bisup", "v2": "bisup"})
    try:
        summary = virtual.run(rollout["v2"].path, tmp_path / "few.npz", None, broker, "cli-v2", 2000, 3, 10.0, print)
        with pytest.raises(DeviceTimeout) as missing:
            virtual.run(rollout["v2"].path, tmp_path / "few.npz", None, broker, "cli-v3", 2000, 3, 1.0, print, "v3")
    finally:
        _stop(built)
    assert summary["requests"] == summary["answered"] == counting["v2"].inputs > 0 and counting["v1"].inputs == 0
    line = str(missing.value)
    assert "\n" not in line and "no bridge serves deployment 'v3'" in line and request_topic("cli-v3", "v3") in line
    assert "--deployment" in line


def _ping(broker: Broker, topic: str, answer_topic: str, seq: int) -> bytes | None:
    """PING on ``topic``; the reply on ``answer_topic``, or None after 2 s."""
    got, done = {}, threading.Event()
    client = make_client(broker, f"legacy-probe-{seq}")
    client.on_message = lambda c, u, m: (got.update(payload=m.payload), done.set())
    connect(client, broker)
    try:
        client.subscribe(answer_topic, qos=1)
        time.sleep(0.2)
        client.publish(topic, p.encode(p.Ping(seq)), qos=1, properties=Properties(PacketTypes.PUBLISH))
        return got["payload"] if done.wait(2) else None
    finally:
        client.disconnect()
        client.loop_stop()


def test_legacy_topics_are_served_only_when_asked(mosquitto, rollout):
    """A device on the topics without a deployment level is answered on its legacy resp topic by the bridge given
    --legacy-topics (one deployment per broker), and by no other."""
    from bisup.firmware_bridge.handler import RequestHandler

    broker = Broker.from_url(mosquitto.url)
    legacy, legacy_answer = f"{TOPIC_ROOT}/old/req", f"{TOPIC_ROOT}/old/resp"
    plain = start_workers(broker, RequestHandler(None, rollout["v2"]), prefix="plain-")
    try:
        assert _ping(broker, legacy, legacy_answer, 1) is None
        routed = _ping(broker, request_topic("new", deployment_name(rollout["v2"].model_hash)),
                       response_topic("new", deployment_name(rollout["v2"].model_hash)), 2)
        assert p.decode(routed) == p.Pong(2)
        serving = start_workers(broker, RequestHandler(None, rollout["v1"]), group="old", prefix="legacy-",
                                routing=Routing(legacy_topics=True))
        try:
            assert p.decode(_ping(broker, legacy, legacy_answer, 3)) == p.Pong(3)
        finally:
            serving[0].stop()
    finally:
        plain[0].stop()
    assert plain[0].served == 1
