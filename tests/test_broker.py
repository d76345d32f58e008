"""`bisup.service.broker` on a real mosquitto: QoS 1 delivery, a persistent session's queue across a restart,
TLS with per-device passwords and ACLs around the bridge's shared subscription, and clear start errors.

"Nothing arrives" is checked without sleeping: mosquitto keeps one publisher's messages in order for
each subscriber, so a forbidden message is published first and an allowed one after it; once the
allowed one is in, the forbidden one would have been too.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import socket
import stat
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from bisup.firmware_bridge.mqtt_link import (
    TOPIC_ROOT,
    Broker,
    DeviceLink,
    MqttError,
    connect,
    device_client_id,
    make_client,
    request_topic,
    requests_of,
    response_topic,
)
from bisup.service.broker import BrokerError, run_broker

WAIT_S = 3.0
V1, V2 = "v1", "v2"  # two deployments of a rollout
NOT_AUTHORIZED = 0x87


class Inbox:
    """Messages as (topic, payload), and an event per expected count, so that waits never hang."""

    def __init__(self):
        self.messages: list[tuple[str, bytes]] = []
        self._changed = threading.Condition()

    def __call__(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append((message.topic, message.payload))
            self._changed.notify_all()

    def wait_for(self, count: int, timeout_s: float = WAIT_S) -> list[tuple[str, bytes]]:
        with self._changed:
            self._changed.wait_for(lambda: len(self.messages) >= count, timeout_s)
            return list(self.messages)


class Clients:
    """Connected paho clients, all disconnected at teardown."""

    def __init__(self):
        self._open: list[mqtt.Client] = []

    def connect(self, endpoint: Broker, client_id: str, inbox: Inbox | None = None, clean_start: bool = True,
                session_expiry_s: int = 0) -> mqtt.Client:
        client = make_client(endpoint, client_id)
        client.on_message = inbox  # before CONNECT: a resumed session delivers right after CONNACK
        connect(client, endpoint, clean_start, session_expiry_s, timeout_s=WAIT_S)
        self._open.append(client)
        return client

    def close(self, client: mqtt.Client) -> None:
        client.disconnect()
        client.loop_stop()
        self._open.remove(client)

    def close_all(self) -> None:
        for client in list(self._open):
            self.close(client)


@pytest.fixture
def clients():
    made = Clients()
    yield made
    made.close_all()


def _subscribe(client: mqtt.Client, topic: str) -> int:
    """Subscribe at QoS 1 and return the SUBACK's reason code (1 is granted QoS 1)."""
    done, codes = threading.Event(), []
    client.on_subscribe = lambda client, userdata, mid, reason_codes, properties: (codes.extend(reason_codes),
                                                                                     done.set())
    client.subscribe(topic, qos=1)
    assert done.wait(WAIT_S), f"no SUBACK for {topic}"
    return codes[0].value


def _publish(client: mqtt.Client, topic: str, payload: bytes) -> int:
    """Publish at QoS 1 and return the PUBACK's MQTT 5 reason code (0 is success)."""
    done, codes = threading.Event(), []
    client.on_publish = lambda client, userdata, mid, reason_code, properties: (codes.append(reason_code),
                                                                                done.set())
    client.publish(topic, payload, qos=1)
    assert done.wait(WAIT_S), f"no PUBACK for {topic}"
    return codes[0].value


def test_plain_broker_delivers_qos1(mosquitto, clients):
    inbox = Inbox()
    receiver = clients.connect(mosquitto.endpoint(), "receiver", inbox)
    assert _subscribe(receiver, request_topic("d1", V1)) == 1
    assert _publish(clients.connect(mosquitto.endpoint(), "sender"), request_topic("d1", V1), b"hello") == 0
    assert inbox.wait_for(1) == [(request_topic("d1", V1), b"hello")]
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}" and mosquitto.ca_path is None


def test_restart_keeps_a_persistent_sessions_queued_message(mosquitto, clients):
    endpoint, topic = mosquitto.endpoint(), response_topic("d1", V1)
    offline = clients.connect(endpoint, "persistent", clean_start=False, session_expiry_s=300)
    assert _subscribe(offline, topic) == 1
    clients.close(offline)
    assert _publish(clients.connect(endpoint, "sender"), topic, b"queued") == 0
    clients.close_all()
    port = mosquitto.port
    mosquitto.restart()
    assert mosquitto.port == port and mosquitto.process.poll() is None
    inbox = Inbox()
    clients.connect(endpoint, "persistent", inbox, clean_start=False, session_expiry_s=300)
    assert inbox.wait_for(1) == [(topic, b"queued")]


def test_devices_see_only_their_own_topics_and_reach_the_bridge(secure_mosquitto, clients):
    broker = secure_mosquitto
    bridge_inbox, a_inbox, b_inbox = Inbox(), Inbox(), Inbox()
    bridge = clients.connect(broker.endpoint("bisup-bridge"), "bridge", bridge_inbox)
    assert _subscribe(bridge, f"$share/{broker.bridge_group}/{requests_of(V1)}") == 1
    device_a = clients.connect(broker.endpoint("d1"), device_client_id("d1"), a_inbox)
    device_b = clients.connect(broker.endpoint("d2"), device_client_id("d2"), b_inbox)
    assert _subscribe(device_b, response_topic("d2", V1)) == 1
    assert _subscribe(device_a, response_topic("d2", V1)) == NOT_AUTHORIZED
    assert _subscribe(device_a, f"{TOPIC_ROOT}/#") == NOT_AUTHORIZED
    assert _subscribe(device_a, response_topic("d1", V1)) == 1

    assert _publish(device_a, request_topic("d2", V1), b"posing as d2") == NOT_AUTHORIZED
    assert _publish(device_a, request_topic("d1", V1), b"mine") == 0
    assert bridge_inbox.wait_for(1) == [(request_topic("d1", V1), b"mine")]

    assert _publish(bridge, response_topic("d2", V1), b"for d2") == 0
    assert _publish(bridge, response_topic("d1", V1), b"for d1") == 0
    assert a_inbox.wait_for(1) == [(response_topic("d1", V1), b"for d1")]
    assert b_inbox.wait_for(1) == [(response_topic("d2", V1), b"for d2")]


def test_device_acls_follow_a_rollout_and_nothing_more(secure_mosquitto, clients):
    """A device may move from deployment v1 to v2 (its own id in any deployment) but reach no other device's
    topics in any deployment, nor the legacy topics without a deployment level; the bridge holds one shared
    subscription per deployment under its one group name."""
    broker = secure_mosquitto
    bridge_inbox, a_inbox, b_inbox = Inbox(), Inbox(), Inbox()
    bridge = clients.connect(broker.endpoint("bisup-bridge"), "bridge", bridge_inbox)
    for deployment in (V1, V2):
        assert _subscribe(bridge, f"$share/{broker.bridge_group}/{requests_of(deployment)}") == 1
    device_a = clients.connect(broker.endpoint("d1"), device_client_id("d1"), a_inbox)
    device_b = clients.connect(broker.endpoint("d2"), device_client_id("d2"), b_inbox)
    legacy_request, legacy_answer = f"{TOPIC_ROOT}/d1/req", f"{TOPIC_ROOT}/d1/resp"
    for forbidden in (response_topic("d2", V2), response_topic("+", V2), response_topic("d2", "+"), legacy_answer,
                      f"$share/{broker.bridge_group}/{requests_of(V2)}"):
        assert _subscribe(device_a, forbidden) == NOT_AUTHORIZED, forbidden
    assert _subscribe(device_a, response_topic("d1", "+")) == 1  # its own answers, whichever deployment it runs
    assert _subscribe(device_b, response_topic("d2", V2)) == 1
    for forbidden in (request_topic("d2", V2), legacy_request):
        assert _publish(device_a, forbidden, b"refused") == NOT_AUTHORIZED, forbidden
    assert _publish(device_a, request_topic("d1", V1), b"as v1") == 0
    assert _publish(device_a, request_topic("d1", V2), b"as v2") == 0
    expected = [(request_topic("d1", V1), b"as v1"), (request_topic("d1", V2), b"as v2")]
    assert sorted(bridge_inbox.wait_for(2)) == expected

    assert _publish(bridge, response_topic("d2", V2), b"for d2") == 0
    assert _publish(bridge, response_topic("d1", V2), b"for d1") == 0
    assert a_inbox.wait_for(1) == [(response_topic("d1", V2), b"for d1")]
    assert b_inbox.wait_for(1) == [(response_topic("d2", V2), b"for d2")]


def test_a_device_that_learns_the_group_name_cannot_join_it(secure_mosquitto, clients):
    """A shared-group member without read access would make mosquitto drop requests for the whole group.
    The dynamic-security plugin refuses a device every subscription but its own answers, so even the
    bridge's real group name gets it nothing, and every request reaches the bridge."""
    broker, bridge_inbox, spy_inbox = secure_mosquitto, Inbox(), Inbox()
    bridge = clients.connect(broker.endpoint("bisup-bridge"), "bridge", bridge_inbox)
    assert _subscribe(bridge, f"$share/{broker.bridge_group}/{requests_of(V1)}") == 1
    device = clients.connect(broker.endpoint("d1"), device_client_id("d1"), spy_inbox)
    for group in (broker.bridge_group, "bisup"):
        assert _subscribe(device, f"$share/{group}/{requests_of(V1)}") == NOT_AUTHORIZED
    other = clients.connect(broker.endpoint("d2"), device_client_id("d2"))
    for n in range(4):
        assert _publish(other, request_topic("d2", V1), bytes([n])) == 0
    assert bridge_inbox.wait_for(4) == [(request_topic("d2", V1), bytes([n])) for n in range(4)]
    assert spy_inbox.wait_for(1, timeout_s=0.5) == []


def test_a_device_cannot_take_another_devices_client_id(secure_mosquitto, clients):
    """Client ids are bound to credentials: d1's password with d2's client id is refused, and d2 stays on."""
    broker, inbox = secure_mosquitto, Inbox()
    victim = clients.connect(broker.endpoint("d2"), device_client_id("d2"), inbox)
    assert _subscribe(victim, response_topic("d2", V1)) == 1
    with pytest.raises(MqttError, match="Not authorized"):
        connect(make_client(broker.endpoint("d1"), device_client_id("d2")), broker.endpoint("d1"), timeout_s=WAIT_S)
    with pytest.raises(MqttError, match="--device-id must equal its --username"):
        DeviceLink(broker.endpoint("d1"), "d2", V1, timeout_s=WAIT_S)
    assert victim.is_connected()
    assert _publish(clients.connect(broker.endpoint("bisup-bridge"), "bridge"), response_topic("d2", V1), b"ok") == 0
    assert inbox.wait_for(1) == [(response_topic("d2", V1), b"ok")]


def test_wrong_password_anonymous_plain_tcp_and_unknown_ca_are_refused(secure_mosquitto):
    endpoint = secure_mosquitto.endpoint("d1")
    for bad, why in ((dataclasses.replace(endpoint, password="wrong"), "refused the connection: Not authorized"),
                     (dataclasses.replace(endpoint, username=None, password=None), "refused the connection"),
                     (dataclasses.replace(endpoint, tls=False, ca=None), "did not answer CONNECT.*use mqtts://"),
                     (dataclasses.replace(endpoint, ca=None), "not signed by a CA this machine trusts: pass --tls-ca")):
        with pytest.raises(MqttError, match=why):
            connect(make_client(bad, "intruder"), bad, timeout_s=0.5)


def test_credentials_are_private_hashed_and_reused(tmp_path):
    with run_broker(tmp_path, secure=True, devices=("d1",)) as broker:
        saved = json.loads((tmp_path / "credentials.json").read_text())
        ca = broker.ca_path.read_bytes()
    assert saved["passwords"] == broker.credentials.passwords and set(saved["passwords"]) == {"bisup-bridge", "d1"}
    assert saved["bridge_group"] == broker.bridge_group and saved["url"] == broker.url
    for path in (tmp_path / "credentials.json", tmp_path / "server.key", broker.config.password_file("d1")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert broker.config.password_file("d1").read_text().strip() == saved["passwords"]["d1"]
    assert stat.S_IMODE((tmp_path / "dynamic-security.json").stat().st_mode) == 0o600
    stored = json.loads((tmp_path / "dynamic-security.json").read_text())
    d1 = next(client for client in stored["clients"] if client["username"] == "d1")
    assert d1["clientid"] == device_client_id("d1") and saved["passwords"]["d1"] not in json.dumps(stored)
    expected = hashlib.pbkdf2_hmac("sha512", saved["passwords"]["d1"].encode(), base64.b64decode(d1["salt"]),
                                   d1["iterations"])
    assert base64.b64decode(d1["password"]) == expected
    with run_broker(tmp_path, secure=True, devices=("d1", "d2")) as again:
        assert again.ca_path.read_bytes() == ca and again.bridge_group == broker.bridge_group
        assert again.credentials.passwords["d1"] == saved["passwords"]["d1"] and "d2" in again.credentials.passwords


def test_port_in_use_names_the_port(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port {port} on 127.0.0.1 is already in use"):
            with run_broker(tmp_path, port=port):
                pass


def test_broken_tls_files_give_mosquittos_log(tmp_path):
    for name in ("ca.pem", "server.pem", "server.key"):
        (tmp_path / name).write_text("not PEM\n")
    with pytest.raises(BrokerError, match=r"(?s)mosquitto exited \(code \d+\).*mosquitto log.*Error"):
        with run_broker(tmp_path, secure=True):
            pass


def test_missing_mosquitto_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("bisup.service.broker._SBIN", str(tmp_path))
    with pytest.raises(BrokerError, match="apt-get install mosquitto"):
        with run_broker(tmp_path):
            pass


def test_bad_device_names_are_refused(tmp_path):
    with pytest.raises(BrokerError, match="bad device or user name"):
        with run_broker(tmp_path, secure=True, devices=("d1", "+")):
            pass


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_cli_broker_serves_until_interrupted(tmp_path, stop):
    """`bisup broker` prints where it listens, serves, and takes mosquitto down with it on Ctrl-C and on
    `kill` (SIGTERM), so no orphaned mosquitto keeps the port."""
    import signal
    import subprocess
    import sys

    from bisup.service.broker import free_port

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bisup.cli", "broker", "--port", str(port), "--dir",
                                str(tmp_path / "b")], stderr=subprocess.PIPE, text=True)
    if stop == "SIGTERM":  # at once: the handler must be in place before mosquitto starts
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
        assert not _listening(port), "SIGTERM during start-up orphaned mosquitto"
        return
    try:
        assert f"mosquitto on mqtt://127.0.0.1:{port}" in process.stderr.readline()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        process.send_signal(getattr(signal, stop))
        process.wait(timeout=15)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_secure_broker_prints_commands_that_work_as_printed(tmp_path):
    """`bisup broker --secure` prints complete bridge and device commands; a device started from its
    printed line connects (the rest of the line is the README's walk-through paths)."""
    with run_broker(tmp_path, secure=True, devices=("d1", "d2")) as broker:
        bridge, *devices = broker.commands("b.bisup", "r.keras", "t.npz")
        assert "..." not in bridge and f"--group {broker.bridge_group}" in bridge and "--bundle b.bisup" in bridge
        assert len(devices) == 2 and "--device-id d2" in devices[1]
        words = devices[0].split()
        option = {words[i]: words[i + 1] for i in range(2, len(words) - 1, 2)}
        password = Path(option["--password-file"]).read_text().strip()
        endpoint = Broker.from_url(option["--mqtt"], option["--username"], password, option["--tls-ca"])
        DeviceLink(endpoint, option["--device-id"], V1).close()  # connects: the printed credentials are right


def test_cli_broker_on_a_taken_port_is_one_line(tmp_path):
    from cli_errors import error_line
    from click.testing import CliRunner

    from bisup.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["broker", "--port", str(port), "--dir", str(tmp_path / "b")])
    assert str(port) in error_line(result)


def test_a_ca_file_that_is_not_pem_is_one_error_naming_it(tmp_path):
    """Not an ssl.SSLError from deep in paho: the race in which mosquitto still listens on broken TLS files
    (before it exits) used to surface that way."""
    from bisup.firmware_bridge.mqtt_link import Broker, MqttError, make_client

    ca = tmp_path / "ca.pem"
    ca.write_text("not PEM\n")
    with pytest.raises(MqttError, match=f"the CA certificate {ca} cannot be loaded"):
        make_client(Broker.from_url("mqtts://127.0.0.1:8883", None, None, ca), "probe")


def _serve_briefly(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """`bisup broker ARGS` run from ``cwd`` until it has said where its state is; then Ctrl-C. Its stderr."""
    import os
    import signal
    import subprocess
    import sys

    repo = str(Path(__file__).resolve().parents[1])
    env = {key: value for key, value in os.environ.items() if key not in ("HOME", "XDG_STATE_HOME")} | env
    env["PYTHONPATH"] = os.pathsep.join([repo, env.get("PYTHONPATH", "")])
    process = subprocess.Popen([sys.executable, "-m", "bisup.cli", "broker", *args], cwd=cwd, env=env,
                               stderr=subprocess.PIPE, text=True)
    said = []
    try:
        for line in process.stderr:
            said.append(line)
            if "state folder:" in line:
                break
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=15)
    return "".join(said)


def test_cli_broker_keeps_its_state_in_dir_not_in_the_working_directory(tmp_path):
    from bisup.service.broker import free_port

    work, state = tmp_path / "work", tmp_path / "state"
    work.mkdir()
    said = _serve_briefly(["--secure", "--port", str(free_port()), "--device", "d1", "--dir", str(state)], work,
                          {"HOME": str(tmp_path / "home")})
    assert f"state folder: {state} (mode 0700): config" in said and "warning" not in said
    assert list(work.iterdir()) == [] and not (tmp_path / "home").exists()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for secret in ("server.key", "credentials.json", "dynamic-security.json", "secrets/d1", "secrets/bisup-bridge"):
        assert stat.S_IMODE((state / secret).stat().st_mode) == 0o600, secret
    assert (state / "mosquitto.conf").is_file() and (state / "ca.pem").is_file()


@pytest.mark.parametrize("xdg", [True, False])
def test_cli_broker_state_defaults_to_the_users_state_folder_outside_the_working_directory(tmp_path, xdg):
    from bisup.service.broker import free_port

    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    env = {"HOME": str(home)} | ({"XDG_STATE_HOME": str(tmp_path / "xdg")} if xdg else {})
    said = _serve_briefly(["--port", str(free_port())], work, env)
    state = (tmp_path / "xdg" if xdg else home / ".local" / "state") / "bisup" / "broker"
    assert f"state folder: {state} (mode 0700): config" in said
    assert (state / "mosquitto.conf").is_file() and stat.S_IMODE(state.stat().st_mode) == 0o700
    assert list(work.iterdir()) == []


def test_default_state_dir_follows_xdg_and_ignores_a_relative_one(tmp_path, monkeypatch):
    from bisup.service.broker import default_state_dir

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "bisup" / "broker"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")  # invalid by the XDG rule: ignored
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "bisup" / "broker"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "bisup" / "broker"


def test_secret_files_are_created_private_not_chmodded_after(tmp_path, monkeypatch):
    """Even with umask 0 and chmod forbidden, every secret is 0600 and the folder 0700: the modes come from
    creation, so there is no moment in which a secret sits in a readable file. A file an older version
    left 0644 is replaced, not reused."""
    import os

    from bisup.service.broker import BrokerConfig, free_port, write_config

    state = tmp_path / "state"
    (state / "secrets").mkdir(parents=True, mode=0o700)
    (state / "secrets" / "d1").write_text("old password\n")
    (state / "secrets" / "d1").chmod(0o644)

    def forbidden(*args, **kwargs):
        raise AssertionError("chmod after creation")

    monkeypatch.setattr(os, "chmod", forbidden)
    monkeypatch.setattr(Path, "chmod", forbidden)
    old = os.umask(0)
    try:
        fresh = tmp_path / "fresh"
        credentials = write_config(BrokerConfig(fresh, free_port(), secure=True, devices=("d1",)))
        write_config(BrokerConfig(state, free_port(), secure=True, devices=("d1",)))
    finally:
        os.umask(old)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    for folder in (fresh, state):
        for secret in ("server.key", "credentials.json", "dynamic-security.json", "secrets/d1"):
            assert stat.S_IMODE((folder / secret).stat().st_mode) == 0o600, (folder, secret)
    assert (fresh / "secrets" / "d1").read_text().strip() == credentials.passwords["d1"]
    assert not [p.name for p in fresh.rglob("*.tmp")]  # no temporary file is left behind
