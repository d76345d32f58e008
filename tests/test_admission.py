"""Fair service on the MQTT bridge (issue 19, item 2): per-device queues served in turn, rate and size limits,
BUSY answers, the log named once per interval; and on a real mosquitto, a flooding device that degrades only
itself while an honest device beside it is answered, and a virtual device that honours BUSY's hold."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from bisup.firmware_bridge import protocol as p
from bisup.firmware_bridge.admission import BUSY_ANSWERS_PER_S, QUEUE_HOLD_MS, FairQueue, Limits, Notices
from bisup.firmware_bridge.handler import RequestHandler
from bisup.firmware_bridge.metrics import Metrics
from bisup.firmware_bridge.mqtt_bridge import start_workers
from bisup.firmware_bridge.mqtt_link import (
    Broker,
    DeviceLink,
    connect,
    deployment_name,
    make_client,
    request_topic,
    response_topic,
)
from bisup.firmware_bridge.relay import InputQuantization, Relay, RemoteSupervisor
from bisup.firmware_bridge.virtual_device import VirtualDevice

ELEMENTS = 16


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_devices_are_served_in_turn_and_one_device_at_most_in_flight_at_once():
    queue: FairQueue[int] = FairQueue(Limits(rate=0, queue=8, in_flight=1))
    for n in range(5):
        assert queue.offer("flood", n, 10) is None
    assert queue.offer("a", 100, 10) is None and queue.offer("b", 200, 10) is None
    first = [queue.take() for _ in range(3)]
    assert first == [("flood", 0), ("a", 100), ("b", 200)]  # a and b do not wait behind the flood's backlog
    assert queue.offer("a", 101, 10) is None
    queue.done("flood")
    queue.done("a")
    assert [queue.take(), queue.take()] == [("flood", 1), ("a", 101)]  # in turn again, the oldest first
    assert queue.queued == 3


def test_a_device_past_its_queue_or_rate_and_the_bridge_past_its_bound_are_refused():
    clock = Clock()
    queue: FairQueue[int] = FairQueue(Limits(rate=2, queue=3, in_flight=1, max_queued=4, max_queued_bytes=1000),
                                      clock)
    assert queue.offer("d", 0, 10) is None and queue.offer("d", 1, 10) is None  # a burst of a second's worth
    refused = queue.offer("d", 2, 10)
    assert refused.reason == "rate" and refused.hold_ms == 500 and refused.answer  # one token every 500 ms
    clock.now += 0.5
    assert queue.offer("d", 2, 10) is None
    clock.now += 10
    assert queue.offer("d", 3, 10).reason == "queue"  # three waiting
    assert queue.offer("e", 0, 10) is None
    assert queue.offer("f", 0, 10).reason == "full"  # four waiting in all
    assert queue.offer("g", 0, 10).hold_ms == QUEUE_HOLD_MS
    queue.take()
    assert queue.offer("h", 0, 991).reason == "full"  # 30 bytes wait: 991 more would pass 1,000
    assert queue.offer("h", 0, 970) is None


def test_busy_answers_have_a_budget_per_device():
    clock = Clock()
    queue: FairQueue[int] = FairQueue(Limits(rate=1), clock)
    queue.offer("flood", 0, 1)
    answers = [queue.offer("flood", n, 1).answer for n in range(1, 50)]
    assert answers == [True] * int(BUSY_ANSWERS_PER_S) + [False] * (49 - int(BUSY_ANSWERS_PER_S))
    assert queue.offer("other", 0, 1) is None and queue.offer("other", 1, 1).answer  # its own budget
    clock.now += 1
    assert queue.offer("flood", 99, 1) is None  # a token again


def test_threads_get_what_is_queued_then_none_after_close():
    queue: FairQueue[int] = FairQueue(Limits(rate=0))
    queue.offer("a", 1, 1)
    queue.close()
    assert queue.take() == ("a", 1)
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(queue.take()))
    waiter.start()
    queue.done("a")
    waiter.join(5)
    assert got == [None]


def test_a_device_is_named_once_per_interval_with_the_count_since():
    clock, lines = Clock(), []
    notices = Notices(lines.append, interval_s=10, clock=clock)
    for _ in range(500):
        notices.note("flood", "rate")
    notices.note("other", "full")
    clock.now += 10
    notices.note("flood", "queue")
    assert len(lines) == 3 and "device flood" in lines[0] and "--device-rate" in lines[0]
    assert "device other" in lines[1] and "--max-queued" in lines[1]
    assert "499 more refused" in lines[2] and "--device-queue" in lines[2]


def test_the_handler_answers_busy_with_the_request_seq_boot_and_hold():
    handler = RequestHandler(_relay(), SimpleNamespace(input_elements=ELEMENTS, model_hash=bytes(32)), warn=print)
    body = p.encode(p.Infer(77, 1, -5, bytes(ELEMENTS), boot=0xABCD))
    assert p.decode(handler.busy("d", body, "rate", 250, True)) == p.ErrorMsg(77, p.ErrorCode.BUSY, 250, boot=0xABCD)
    assert handler.busy("d", body, "rate", 250, False) is None  # over its BUSY budget: acked unanswered
    assert handler.counts["busy_rate"] == 2


# ------------------------------------------------------------------------------------------------ on mosquitto


class SlowRemote:
    """A RemoteModel taking 5 ms a call (a fixed linear layer and a softmax), so that a backlog costs time:
    2 threads serve at most 400 requests a second."""

    name = "slow-numpy"

    def __init__(self) -> None:
        self.weights = np.random.default_rng(0).normal(size=(ELEMENTS, 4))

    def predict(self, x: np.ndarray) -> np.ndarray:
        time.sleep(0.005)
        logits = np.asarray(x, dtype=np.float64).reshape(len(x), -1) @ self.weights
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def _relay() -> Relay:
    return Relay(SlowRemote(), RemoteSupervisor("max-softmax", 0.0), InputQuantization(1 / 64, 0, (ELEMENTS,)))


DEPLOYMENT = deployment_name(bytes(32))  # the default deployment of _handler's bundle (its model hash)


def _handler(events=None, warn=None) -> RequestHandler:
    """No bundle: only the two fields the handler reads of one."""
    return RequestHandler(_relay(), SimpleNamespace(input_elements=ELEMENTS, model_hash=bytes(32)), events=events,
                          warn=warn)


class Flooder:
    """A device publishing ``count`` QoS 0 INFERs on its own topic as fast as paho sends them, counting what comes
    back: remote ANSWERs and BUSY errors."""

    def __init__(self, broker: Broker, count: int):
        self.count, self.answers, self.busy = count, 0, 0
        self.client = make_client(broker, "bisup-device-flood")
        self.client.on_message = self._reply
        connect(self.client, broker)
        self.client.subscribe(response_topic("flood", DEPLOYMENT), qos=1)
        time.sleep(0.2)  # the SUBACK

    def _reply(self, client, userdata, message) -> None:
        reply = p.decode(message.payload)
        self.answers += isinstance(reply, p.AnswerMsg)
        self.busy += isinstance(reply, p.ErrorMsg) and reply.code is p.ErrorCode.BUSY

    def flood(self) -> None:
        topic = request_topic("flood", DEPLOYMENT)
        for seq in range(1, self.count + 1):
            self.client.publish(topic, p.encode(p.Infer(seq, 1, -5, bytes(ELEMENTS))), qos=0)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.slow
def test_a_flooding_device_gets_busy_and_slows_only_itself(mosquitto):
    """3,000 QoS 0 INFERs from one device take 2 threads 7.5 s in one FIFO; an honest device beside it waits
    its turn instead, and the flood is answered BUSY, counted, and named in the log once."""
    broker, metrics, lines = Broker.from_url(mosquitto.url), Metrics(), []
    handler = _handler(metrics, lines.append)
    worker = start_workers(broker, handler, threads=2, prefix="adm-")[0]
    flooder, link = Flooder(broker, 3000), DeviceLink(broker, "honest", DEPLOYMENT)
    honest = VirtualDevice(link, None, 0, "honest", timeout_s=2.0, retries=0)  # ask() needs no local model
    try:
        flooding = threading.Thread(target=flooder.flood)
        flooding.start()
        waits = []
        for n in range(10):
            start = time.monotonic()
            honest.ask(np.full(ELEMENTS, n, np.int8), 1, -5)
            waits.append(time.monotonic() - start)
        flooding.join(30)
        time.sleep(1)  # the flood's last replies
    finally:
        flooder.close()
        link.close()
        worker.stop()
    assert honest.stats.answered == 10 and honest.stats.busy == 0, honest.stats
    assert max(waits) < 1.0, waits
    refused = sum(handler.counts[f"busy_{reason}"] for reason in ("rate", "queue", "full"))
    assert refused > 2000 and flooder.answers + refused == 3000  # every request was served or refused
    assert 0 < flooder.busy <= refused and flooder.answers < 750, (flooder.answers, flooder.busy)  # FIFO: 3,000
    counted = sum(metrics.registry.get_sample_value("bisup_busy_total", {"device": "flood", "reason": reason}) or 0
                  for reason in ("rate", "queue", "full"))
    assert counted == refused and not metrics.registry.get_sample_value("bisup_busy_total", {"device": "honest",
                                                                                             "reason": "rate"})
    unanswered = metrics.registry.get_sample_value("bisup_busy_unanswered_total", {"device": "flood"})
    assert unanswered > 0 and flooder.busy <= refused - unanswered  # past its BUSY budget: acked without a reply
    assert len([line for line in lines if "device flood" in line]) == 1 and not any("honest" in x for x in lines)


@pytest.mark.slow
def test_the_virtual_device_answers_locally_while_a_busy_hold_lasts(mosquitto):
    broker = Broker.from_url(mosquitto.url)
    handler = _handler()
    worker = start_workers(broker, handler, prefix="adm2-", limits=Limits(rate=1))[0]  # one request a second
    link = DeviceLink(broker, "steady", DEPLOYMENT)
    device = VirtualDevice(link, None, 0, "steady", timeout_s=2.0, retries=3)
    x = np.zeros(ELEMENTS, np.int8)
    try:
        first, second = device.ask(x, 1, -5), device.ask(x, 2, -5)
        start = time.monotonic()
        held = device.ask(x, 3, -5)
        held_s = time.monotonic() - start
        time.sleep(max(0.0, device.hold_until - time.monotonic()))
        after = device.ask(x, 4, -5)
    finally:
        link.close()
        worker.stop()
    assert first.source is p.Source.REMOTE and after.source is p.Source.REMOTE
    assert second.source is p.Source.FALLBACK and second.label == 2  # BUSY: its own label at once
    assert held.source is p.Source.FALLBACK and held.label == 3 and held_s < 0.05  # not sent: no wait
    assert device.stats.busy == 1 and device.stats.held == 1 and device.stats.resends == 0
    assert device.stats.requests == 3 and handler.counts["busy_rate"] == 1  # the held input never left
    assert device.relayed == 3 and device.local_answers == 1  # STATS count the held input as local


def test_the_device_summary_names_busy_answers_only_when_there_were_some():
    from bisup.cli.tables import device_table

    summary = {"requests": 10, "answered": 10, "remote": 8, "fallback": 2, "rejected": 0, "resends": 0,
               "bad_frames": 0, "inputs": 30, "local": 13, "busy": 2, "held": 7}
    assert "  bridge busy             2 BUSY answers; 7 inputs answered locally during their holds" in (
        device_table(summary).splitlines())
    assert "bridge busy" not in device_table(summary | {"busy": 0, "held": 0})


@pytest.mark.slow
def test_the_answer_window_is_what_the_broker_allows(mosquitto, tmp_path):
    """paho's default window of 20 answers made requests hold the broker's in-flight slots longer (bench/fleet.py);
    a worker takes the broker's Receive Maximum, up to 100, and reconnects within a smaller one."""
    worker = start_workers(Broker.from_url(mosquitto.url), _handler(), threads=1, prefix="win-")[0]
    worker.stop()
    assert worker.client.max_inflight_messages == 100  # `bisup broker`'s max_inflight_messages
    port = _free_port()
    (tmp_path / "small.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 10\n")
    broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(tmp_path / "small.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # bisup broker's is fixed at 100
    try:
        small = Broker.from_url(f"mqtt://127.0.0.1:{port}")
        _wait_for(port)
        worker = start_workers(small, _handler(), threads=1, prefix="win-")[0]
        link = DeviceLink(small, "windowed", DEPLOYMENT)
        try:
            answer = VirtualDevice(link, None, 0, "windowed", timeout_s=2.0, retries=0).ask(np.zeros(ELEMENTS, np.int8),
                                                                                           1, -5)
        finally:
            link.close()
            worker.stop()
    finally:
        broker.terminate()
        broker.wait(10)
    assert worker.client.max_inflight_messages == 10 and answer.source is p.Source.REMOTE


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"mosquitto did not listen on {port}")
