"""MQTT plumbing shared by the bridge workers and the virtual device: broker URLs, paho 2.x clients
(MQTT v5) with TCP_NODELAY, and the bisup topics.

Topics: a device publishes request bodies to ``bisup/v1/<deployment>/<device_id>/req`` and receives answers
on ``bisup/v1/<deployment>/<device_id>/resp``. The deployment level routes a request to the bridges that serve
the device's bundle (by default ``m`` and the first 16 hex digits of its model hash, see ``deployment_name``), so
that two deployments on one broker (a rollout's v1 and v2) never both answer one request. The payload is the
protocol body exactly as on serial (without COBS and CRC, which TCP and MQTT make redundant); the sequence number
inside it is the correlation id, so MQTT 3.1.1 devices work. MQTT 5 CorrelationData is echoed, and a ResponseTopic
is honoured when it lies below the device's own resp topic (never another device's: a device must not route
answers).

paho does not set TCP_NODELAY; with Nagle's algorithm and delayed ACKs a QoS 1 round trip on
loopback costs about 44 ms instead of about 1.3 ms. Every client made here sets it on each socket.
"""

from __future__ import annotations

import queue
import re
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bisup.converters.errors import BisupError
from bisup.firmware_bridge import protocol as p

TOPIC_ROOT = "bisup/v1"
DEPLOYMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # one plain topic level: no / + # or NUL
HASH_DIGITS = 16  # of the model hash in a default deployment name: 64 bits, 17 bytes more per message


class MqttError(BisupError, RuntimeError):
    """A broker that cannot be reached or refuses us; the message names the broker and the fix."""


def deployment_name(model_hash: bytes) -> str:
    """The default deployment of a bundle: its model hash (which devices also send in HELLO), cut to a topic level
    short enough to send with every request. Two bundles of one model need ``--deployment`` to be told apart."""
    return f"m{model_hash.hex()[:HASH_DIGITS]}"


def check_deployment(name: str) -> str:
    """``name`` if it can be one topic level of every request; MqttError naming the fix otherwise."""
    if not DEPLOYMENT_NAME.fullmatch(name):
        raise MqttError(f"deployment name {name[:80]!r} is not 1..64 letters, digits, '_', '.' or '-' (starting "
                        "with a letter or digit): give --deployment such a name, the same to its bridges and devices")
    return name


def request_topic(device_id: str, deployment: str) -> str:
    return f"{TOPIC_ROOT}/{deployment}/{device_id}/req"


def response_topic(device_id: str, deployment: str) -> str:
    return f"{TOPIC_ROOT}/{deployment}/{device_id}/resp"


def requests_of(deployment: str) -> str:
    """The filter of every request to one deployment (what its bridge group shares)."""
    return f"{TOPIC_ROOT}/{deployment}/+/req"


LEGACY_REQUESTS = f"{TOPIC_ROOT}/+/req"  # before deployments: served only by a bridge given --legacy-topics


def device_client_id(device_id: str) -> str:
    """The client id a device connects with; `bisup broker --secure` binds it to the device's user."""
    return f"bisup-device-{device_id}"


def device_of(topic: str) -> str | None:
    """The device id in a request topic (``bisup/v1/<deployment>/<id>/req`` or the legacy ``bisup/v1/<id>/req``),
    or None for a topic that is not one."""
    parts = topic.split("/")
    if len(parts) not in (4, 5) or "/".join(parts[:2]) != TOPIC_ROOT or parts[-1] != "req":
        return None
    return parts[-2]


def reply_topic(request: str) -> str:
    """Where the answer to a request topic goes: the same levels, ``resp`` for ``req`` (legacy topics stay legacy)."""
    return request.removesuffix("req") + "resp"


@dataclass(frozen=True)
class Broker:
    """Where and how to connect: ``mqtt://[user[:password]@]host[:1883]`` or ``mqtts://…[:8883]``."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca: Path | None = None

    @classmethod
    def from_url(cls, url: str, username: str | None = None, password: str | None = None,
                 ca: str | Path | None = None) -> Broker:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise MqttError(f"broker URL {url!r} is not mqtt://host:port or mqtts://host:port")
        tls = parts.scheme == "mqtts" or ca is not None
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise MqttError(f"broker URL {url!r} has a bad port") from exc
        return cls(parts.hostname, port, tls, username or (unquote(parts.username) if parts.username else None),
                   password or (unquote(parts.password) if parts.password else None), Path(ca) if ca else None)

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def _nodelay(client: mqtt.Client, userdata: Any, sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def make_client(broker: Broker, client_id: str, manual_ack: bool = False) -> mqtt.Client:
    """A paho 2.x MQTT v5 client with TCP_NODELAY, TLS and credentials as the broker needs."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                         manual_ack=manual_ack)
    client.on_socket_open = _nodelay
    if broker.tls:
        try:
            client.tls_set(ca_certs=str(broker.ca) if broker.ca else None)
        except (ssl.SSLError, OSError) as exc:  # a CA file that is missing, unreadable or not PEM
            raise MqttError(f"the CA certificate {broker.ca} cannot be loaded ({exc}); give the CA that "
                            "`bisup broker --secure` printed") from exc
    if broker.username:
        client.username_pw_set(broker.username, broker.password)
    return client


def connect(client: mqtt.Client, broker: Broker, clean_start: bool = True, session_expiry_s: int = 0,
            timeout_s: float = 10.0) -> None:
    """Connect, start the network loop and wait for CONNACK; MqttError names the broker and the fix."""
    done, outcome = threading.Event(), {}

    def on_connect(client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason_code: ReasonCode,
                   properties: Properties | None) -> None:
        outcome.setdefault("reason", reason_code)
        outcome.setdefault("properties", properties)  # the CONNACK's (Receive Maximum...), for the caller's on_connect
        done.set()

    previous = client.on_connect
    client.on_connect = on_connect
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry_s
    try:
        client.connect(broker.host, broker.port, keepalive=30, clean_start=clean_start, properties=props)
    except ssl.SSLError as exc:  # an OSError too, but the broker runs: its certificate is the problem
        raise MqttError(_tls_failure(broker, exc)) from exc
    except (OSError, ValueError) as exc:
        raise MqttError(f"cannot reach the MQTT broker at {broker.url}: {exc}; is it running? (`bisup broker` "
                        "starts one)") from exc
    client.loop_start()
    if not done.wait(timeout_s):
        _give_up(client)
        hint = "" if broker.tls else "; if that port speaks TLS (8883 usually does), use mqtts:// with --tls-ca"
        raise MqttError(f"the MQTT broker at {broker.url} did not answer CONNECT within {timeout_s:g} s{hint}")
    if outcome["reason"].is_failure:
        _give_up(client)
        raise MqttError(f"the MQTT broker at {broker.url} refused the connection: {outcome['reason']}; check the "
                        "username, password file and TLS CA")
    client.on_connect = previous
    if previous is not None:
        previous(client, None, None, outcome["reason"], outcome["properties"])


def _tls_failure(broker: Broker, exc: ssl.SSLError) -> str:
    """A failed TLS handshake, named as such with the fix, never as an unreachable broker."""
    reason = getattr(exc, "verify_message", None) or exc.reason or str(exc)
    if broker.ca is None:
        fix = ("the broker's certificate is not signed by a CA this machine trusts: pass --tls-ca CA.pem, the CA "
               "that signed it (`bisup broker --secure` prints its path)")
    else:
        fix = (f"the broker's certificate does not verify against --tls-ca {broker.ca}: pass the CA that signed "
               "it, and connect by a host name the certificate names")
    return f"TLS with the MQTT broker at {broker.url} failed ({reason}): {fix}"


def _give_up(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


class DeviceLink:
    """A device's side of the MQTT transport, with the same send/receive shape as a serial link."""

    def __init__(self, broker: Broker, device_id: str, deployment: str, timeout_s: float = 10.0):
        self.device_id, self.deployment = device_id, check_deployment(deployment)
        self._inbox: queue.Queue[bytes] = queue.Queue()
        self._client = make_client(broker, device_client_id(device_id))
        self._client.on_connect = self._subscribe
        self._client.on_message = lambda client, userdata, message: self._inbox.put(message.payload)
        try:
            connect(self._client, broker, timeout_s=timeout_s)
        except MqttError as exc:
            if broker.username and broker.username != device_id and "refused" in str(exc):
                raise MqttError(f"the MQTT broker at {broker.url} refused device {device_id!r} logged in as "
                                f"{broker.username!r}: a device's --device-id must equal its --username, which "
                                f"`bisup broker --secure` binds to client id {device_client_id(broker.username)!r}"
                                ) from exc
            raise

    def _subscribe(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags | None, reason_code: ReasonCode,
                   properties: Properties | None) -> None:
        client.subscribe(response_topic(self.device_id, self.deployment), qos=1)  # again after every reconnect

    def send(self, body: bytes) -> None:
        self._client.publish(request_topic(self.device_id, self.deployment), body, qos=1)

    def receive(self, timeout_s: float) -> list[bytes | p.ProtocolError]:
        """What arrived within ``timeout_s`` (MQTT delivers whole bodies, so never a cut frame)."""
        try:
            bodies = [self._inbox.get(timeout=timeout_s)]
        except queue.Empty:
            return []
        while not self._inbox.empty():
            bodies.append(self._inbox.get_nowait())
        return bodies

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
