"""``bisup bridge --mqtt``: bridge workers on a shared subscription, QoS 1 both ways, acks after answers.

Each worker is one MQTT v5 client with a fixed client id and a persistent session (clean_start
false, a session expiry), subscribed to ``$share/<group>/bisup/v1/<deployment>/+/req``. The broker spreads
requests over the group's workers, so throughput grows by adding workers, in this process or on
other machines (a clustered broker such as EMQX, HiveMQ or VerneMQ takes it past one broker).

Deployments: a worker takes only its deployment's requests (by default named after its bundle's model hash,
``mqtt_link.deployment_name``), so two deployments on one broker (a rollout's v1 and v2 bundles) each answer
their own devices, with one remote call per request. A shared subscription is one per (group, filter), so the
deployments may even share a group name. Legacy topics (``bisup/v1/<id>/req``, no deployment level) cannot be
routed and are served only with ``legacy_topics``, by the one deployment their devices belong to.

Delivery: paho acks nothing by itself (``manual_ack``); a request is acked only once its answer is
published, so a worker that dies loses nothing the broker will not deliver again. The network loop
only queues messages; the remote call runs on a worker thread.

Admission (``admission``): INFER and SPLIT wait in a bounded queue per device, and the worker's threads take
the devices in turn, at most a few requests of one device at a time, so one device's backlog never delays
another's. A request over its device's rate or queue, or past the bound on everything queued, is answered
BUSY (ERROR 9, at QoS 0: a lost BUSY costs the device only its wait) and acked at once, from the network
thread. So nothing piles up when paho delivers faster than the threads serve; before, QoS 0 requests, which
the broker's in-flight window does not hold back, made that pile unbounded. Dedup by (device, seq) is the
handler's TTL cache. Dispatch happens in ``on_message``: paho's ``message_callback_add`` does not
match ``$share/...`` filters.

Sessions and failover: the broker keeps routing a share of requests to a dead worker's session
until it returns (then they are answered) or its session expires (then the broker drops them).
Devices resend with the same seq, so as long as a device's retries outlast ``session_expiry_s``,
every request is answered even if a worker never comes back.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bisup.firmware_bridge import protocol as p
from bisup.firmware_bridge.admission import DEFAULT_LIMITS, FairQueue, Limits, Refusal
from bisup.firmware_bridge.handler import RequestHandler
from bisup.firmware_bridge.mqtt_link import (
    LEGACY_REQUESTS,
    Broker,
    MqttError,
    check_deployment,
    connect,
    deployment_name,
    device_of,
    make_client,
    reply_topic,
    requests_of,
)

log = logging.getLogger("bisup.mqtt")


@dataclass(frozen=True)
class Routing:
    """Which requests a bridge takes: its deployment's (None: named after the bundle's model hash), and the
    legacy topics too when ``legacy_topics``."""

    deployment: str | None = None
    legacy_topics: bool = False

REMOTE_TYPES = (bytes([p.MsgType.INFER]), bytes([p.MsgType.SPLIT]))  # the request types that wait for a model
# Answers a worker may have awaiting the broker's PUBACK, at most the Receive Maximum the broker states (100 in
# `bisup broker`'s config). paho's default of 20 made answers queue in paho; their requests, acked only after, held
# the broker's in-flight window to this worker longer, so a flood queued there drained slower. bench/fleet.py, 1
# worker, a 20,000-request QoS 1 flood: others answered within 2 s during it 20-44% with 20, 67-98% with 100.
ANSWER_WINDOW = 100


class MqttWorker:
    """One member of the bridge's shared subscription.

    Requests that need the remote (INFER, SPLIT) are admitted per device (``limits``) and run on ``threads``
    threads that take the devices in turn, so the network loop never waits for a model; everything else
    (PING, HELLO, malformed bodies) is answered on the network thread, which
    saves a thread hop. No thread waits for a PUBACK: a request is acked from ``on_publish`` when the
    broker has taken its answer.
    """

    def __init__(self, broker: Broker, handler: RequestHandler, name: str = "w1", group: str = "bisup",
                 threads: int = 16, session_expiry_s: int = 5, routing: Routing | None = None,
                 limits: Limits = DEFAULT_LIMITS):
        self.broker, self.handler, self.group, self.session_expiry_s = broker, handler, group, session_expiry_s
        self.routing = routing or Routing()
        self.deployment = check_deployment(self.routing.deployment or deployment_name(handler.bundle.model_hash))
        self.client_id = f"bisup-bridge-{group}-{name}"
        self.client = make_client(broker, self.client_id, manual_ack=True)
        self.client.max_inflight_messages_set(ANSWER_WINDOW)
        self._receive_maximum = ANSWER_WINDOW  # what the broker's CONNACK allows
        self.client.on_connect = self._subscribe
        self.client.on_message = self._dispatch
        self.client.on_publish = self._published
        self.client.on_subscribe = self._subscribed
        self._listening = threading.Event()  # the broker acknowledged the subscriptions (SUBACK)
        self.served = self._refused_ids = 0
        self._lock = threading.Lock()
        self._awaiting: dict[int, mqtt.MQTTMessage] = {}  # answer mid -> the request to ack on its PUBACK
        self._early: dict[int, ReasonCode] = {}  # PUBACKs that beat the registration of their answer
        self._quiet: set[int] = set()  # mids of BUSY replies (QoS 0): paho reports them written, nothing to ack
        self._queue: FairQueue[mqtt.MQTTMessage] = FairQueue(limits)
        handler.waiting.append(lambda: self._queue.queued)  # the load hint in ANSWER counts what waits here
        self._threads = [threading.Thread(target=self._work, name=f"bisup-{name}-{i}", daemon=True)
                         for i in range(threads)]
        for thread in self._threads:
            thread.start()

    @property
    def subscriptions(self) -> list[str]:
        """The deployment's requests, and the legacy ones when asked, each shared by the group."""
        filters = [requests_of(self.deployment), *([LEGACY_REQUESTS] if self.routing.legacy_topics else [])]
        return [f"$share/{self.group}/{topic}" for topic in filters]

    def start(self, timeout_s: float = 10.0) -> MqttWorker:
        """Connect; again with a smaller answer window if the broker allows fewer (paho cannot shrink an open one).
        Returns once the broker has acknowledged the subscriptions: a request published before that has no
        subscriber and the broker drops it, so "started" must mean "listening"."""
        for _ in range(2):
            self._listening.clear()
            connect(self.client, self.broker, clean_start=False, session_expiry_s=self.session_expiry_s,
                    timeout_s=timeout_s)
            if self._receive_maximum >= self.client.max_inflight_messages:
                break
            self.client.disconnect()
            self.client.loop_stop()
            self.client.max_inflight_messages_set(self._receive_maximum)
        if not self._listening.wait(timeout_s):
            self.client.disconnect()
            self.client.loop_stop()
            raise MqttError(f"the broker at {self.broker.host}:{self.broker.port} did not acknowledge the "
                              f"bridge's subscriptions within {timeout_s:g} s; check its ACLs for the bridge user")
        return self

    def _subscribed(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode],
                    properties: Properties | None) -> None:
        self._listening.set()

    def _subscribe(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags | None, reason_code: ReasonCode,
                   properties: Properties | None) -> None:
        with self._lock:  # answers in flight died with the old connection; their requests come again
            self._awaiting.clear()
            self._early.clear()
            self._quiet.clear()
        self._receive_maximum = getattr(properties, "ReceiveMaximum", 65535)  # MQTT 5: none stated means 65,535
        client.subscribe([(topic, 1) for topic in self.subscriptions])  # idempotent; restores a lost session

    def _dispatch(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        device = device_of(message.topic)
        if message.payload[1:2] not in REMOTE_TYPES or not device or len(device) > p.MAX_ID:
            self._serve(message)  # answered (or refused) at once, here
            return
        refusal = self._queue.offer(device, message, len(message.payload))
        if refusal is not None:
            self._busy(device, message, refusal)

    def _work(self) -> None:
        """One of the worker's threads: the devices' requests in turn, until ``stop``."""
        while (taken := self._queue.take()) is not None:
            device, message = taken
            try:
                self._serve(message)
            finally:
                self._queue.done(device)

    def _busy(self, device: str, message: mqtt.MQTTMessage, refusal: Refusal) -> None:
        """Answers a refused request BUSY at QoS 0 (unless the device is over its BUSY budget) and acks it now."""
        reply = self.handler.busy(device, message.payload, refusal.reason, refusal.hold_ms, refusal.answer)
        if reply is not None:
            topic, props = _reply_route(reply_topic(message.topic), getattr(message, "properties", None))
            info = self.client.publish(topic, reply, qos=0, properties=props)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                with self._lock:
                    if self._early.pop(info.mid, None) is None:
                        self._quiet.add(info.mid)
        self._ack(message)

    def _serve(self, message: mqtt.MQTTMessage) -> None:
        """Answer one request; it is acked once the broker has its answer, or at once if there is none.
        Every request is acked, whatever it held: one that can never be answered (a bug, an unusable
        ResponseTopic) must not stay unacked, or it would fill the broker's in-flight window for this
        worker and stop every device's requests. Only an answer lost with the connection leaves its
        request unacked, so that the broker delivers the request again."""
        device = device_of(message.topic)
        if device and len(device) > p.MAX_ID:
            self._refuse_id(device)
            device = None
        try:
            reply = self.handler.handle(device, message.payload) if device else None
            if reply is not None:
                self._publish(device, reply, message)
                return
        except Exception:  # a bug must neither kill the pool thread silently nor block the worker
            self.handler.count("internal_error")
            log.exception("worker %s failed on a request from %s; acking it", self.client_id, device)
        self._ack(message)

    def _refuse_id(self, device: str) -> None:
        """Refuses (acks, unanswered) a request whose topic names an id longer than HELLO allows: every id
        becomes state and a metric label, and a topic level may hold 65,535 characters. Logged at the 1st,
        2nd, 4th, 8th... refusal, so that a flood of them makes a few lines."""
        self.handler.count("refused_device_id")
        with self._lock:
            self._refused_ids += 1
            refused = self._refused_ids
        if refused & (refused - 1) == 0:
            log.warning("refused a request from device id %s... of %d characters: device ids are 1..%d characters "
                        "as in HELLO (%d refused by worker %s so far)", device[:40], len(device), p.MAX_ID, refused,
                        self.client_id)

    def _publish(self, device: str, reply: bytes, request: mqtt.MQTTMessage) -> None:
        topic, props = _reply_route(reply_topic(request.topic), getattr(request, "properties", None))
        info = self.client.publish(topic, reply, qos=1, properties=props)
        if info.rc == mqtt.MQTT_ERR_NO_CONN:
            log.warning("answer to %s not sent (no connection); the broker delivers the request again", device)
            return
        with self._lock:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._awaiting[info.mid] = request
        if early is not None:
            self._answered(request, early, device, topic)

    def _published(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: ReasonCode,
                   properties: Properties) -> None:
        """The broker took an answer (or refused it: an ACL, say): ack its request."""
        with self._lock:
            if mid in self._quiet:
                self._quiet.discard(mid)
                return
            request = self._awaiting.pop(mid, None)
            if request is None:
                self._early[mid] = reason_code
                return
        self._answered(request, reason_code, device_of(request.topic), "")

    def _answered(self, request: mqtt.MQTTMessage, reason_code: ReasonCode, device: str | None, topic: str) -> None:
        if reason_code.is_failure:  # redelivery would be refused again: ack, and the device falls back
            self.handler.count("answer_refused")
            log.error("the broker refused the answer to %s %s: %s", device, topic, reason_code)
        self._ack(request)

    def _ack(self, message: mqtt.MQTTMessage) -> None:
        self.client.ack(message.mid, message.qos)
        with self._lock:
            self.served += 1

    def stop(self) -> None:
        self._queue.close()  # let queued and running requests publish and be acked
        for thread in self._threads:
            thread.join()
        self.client.disconnect()
        self.client.loop_stop()


def _concrete_below(wanted: str | None, own: str) -> bool:
    """A ResponseTopic the bridge may publish to: the device's own resp topic or a concrete topic below
    it, with no wildcard, no empty level and no NUL (paho refuses to publish to those)."""
    if not wanted or not (wanted == own or wanted.startswith(own + "/")):
        return False
    levels = wanted.split("/")
    return all(levels) and not any(c in wanted for c in "+#\0") and len(wanted.encode()) <= 65535


def _reply_route(own: str, asked: Properties | None) -> tuple[str, Properties | None]:
    """Where an answer goes: the device's resp topic ``own`` (in the request's deployment), or a concrete MQTT 5
    ResponseTopic below it (never another device's topic, never a filter), with the request's CorrelationData
    when it has one."""
    wanted = getattr(asked, "ResponseTopic", None) if asked is not None else None
    correlation = getattr(asked, "CorrelationData", None) if asked is not None else None
    topic = wanted if _concrete_below(wanted, own) else own
    if correlation is None:
        return topic, None
    props = Properties(PacketTypes.PUBLISH)
    props.CorrelationData = correlation
    return topic, props


def start_workers(broker: Broker, handler: RequestHandler, count: int = 1, group: str = "bisup",
                  threads: int = 16, session_expiry_s: int = 5, prefix: str = "w",
                  routing: Routing | None = None, limits: Limits = DEFAULT_LIMITS) -> list[MqttWorker]:
    """``count`` workers in this process, sharing the handler (and so its dedup cache), taking their deployment's
    requests (``routing``); each admits requests with its own ``limits``, so a device's share of one bridge
    process grows with ``count``."""
    workers: list[MqttWorker] = []
    try:
        for i in range(count):
            workers.append(MqttWorker(broker, handler, f"{prefix}{i + 1}", group, threads, session_expiry_s,
                                      routing, limits).start())
    except Exception:
        for worker in workers:
            worker.stop()
        raise
    return workers
