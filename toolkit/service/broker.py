"""``bisup broker``: a local mosquitto with a generated config, for trying the MQTT bridge and for tests.

Everything lives in one state folder: ``mosquitto.conf`` (rewritten by ``run_broker``), ``mosquitto.log``
(the broker's stderr, appended) and ``mosquitto.db`` (persistence, so persistent sessions and their
queued QoS 1 messages survive ``restart()``). The CLI's default folder is ``default_state_dir()``, outside
any working tree (a server key and passwords must never be one ``git add`` away), created mode 0700;
every secret file in it is created 0600 (``_write_private``). The listener is on loopback with
TCP_NODELAY, because Nagle's algorithm costs tens of milliseconds per QoS 1 round trip.

``secure=True`` adds TLS (a throwaway CA whose key is never written, and a server certificate for
localhost/127.0.0.1/::1) and mosquitto's dynamic-security plugin, whose file this module writes: one
random password per device plus a bridge user (PBKDF2-SHA512 hashes, as the plugin stores them), and
per-device roles. Device ``d`` must connect with client id ``bisup-device-d`` (so no device can take
over another's session or kick it off), may only publish ``bisup/v1/<deployment>/d/req``, and may only subscribe
to and receive ``bisup/v1/<deployment>/d/resp[/...]``, for any deployment (a rollout moves a device from one to
the next without touching the broker; its id stays its own); everything else is denied by default, subscriptions
included, the legacy topics without a deployment level too. The bridge user reads every ``req`` (also through its
``$share`` group, one shared subscription per deployment) and writes every ``resp``.
The CA, server certificate and passwords are reused when the folder already has them, so devices keep
working across runs.

Why the plugin and not ``acl_file``: mosquitto 2.0's ``acl_file`` check never refuses a SUBSCRIBE (not
even ``$share/...``), and a message the broker hands to a shared-group member without read access is
dropped for the whole group, so a device that learned the bridge's group name could swallow a share of
every device's requests; and ``acl_file`` cannot bind a client id to a user. The plugin refuses both
(the random group name stays, as a second fence).
"""

from __future__ import annotations

import base64
import contextlib
import glob
import hashlib
import ipaddress
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bisup.converters.errors import BisupError
from bisup.firmware_bridge.mqtt_link import (
    Broker,
    MqttError,
    connect,
    device_client_id,
    make_client,
    request_topic,
    response_topic,
)

DEFAULT_DEVICES = ("d1", "d2")
BRIDGE_USER = "bisup-bridge"
PLAIN_GROUP = "bisup"
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
LOG_TAIL_LINES = 15
DYNSEC_FILE = "dynamic-security.json"
DYNSEC_ITERATIONS = 101  # what `mosquitto_ctrl dynsec` writes; the salt and the TLS link protect the rest
CERT_DAYS = 825  # the longest validity that Apple's and browsers' TLS stacks accept for a server certificate
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # safe as a topic level, password-file user and ACL user
_SBIN = "/usr/sbin:/usr/local/sbin"  # mosquitto is in sbin on Debian, which is not on every user's PATH


class BrokerError(BisupError, RuntimeError):
    """The local broker could not be set up or started; the message says why and what to do."""


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/bisup/broker``, else ``~/.local/state/bisup/broker`` (the XDG base directory rule:
    a relative XDG_STATE_HOME is ignored): outside the working tree, where ``git status`` cannot see keys."""
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "bisup" / "broker"


@dataclass(frozen=True)
class BrokerConfig:
    """What to generate: one loopback listener on ``port``, plain or TLS with per-user passwords and ACLs."""

    workdir: Path
    port: int
    secure: bool = False
    devices: tuple[str, ...] = DEFAULT_DEVICES
    bridge_user: str = BRIDGE_USER
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.secure else 'mqtt'}://{host}:{self.port}"

    @property
    def conf_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    @property
    def ca_path(self) -> Path:
        return self.workdir / "ca.pem"

    @property
    def credentials_path(self) -> Path:
        return self.workdir / "credentials.json"

    def password_file(self, user: str) -> Path:
        """One user's password alone, as ``--password-file`` takes it (kept off command lines)."""
        return self.workdir / "secrets" / user


@dataclass(frozen=True)
class Credentials:
    """Secure mode's secrets: every user's password and the bridge's unguessable shared-subscription group."""

    passwords: dict[str, str] = field(default_factory=dict)
    bridge_group: str = PLAIN_GROUP


def write_config(config: BrokerConfig) -> Credentials:
    """Write mosquitto.conf and, in secure mode, the TLS files, password file, ACL and credentials."""
    _check_names(config)
    config.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)  # the mode applies to the folder it creates
    lines = _common_lines(config)
    credentials = Credentials()
    if config.secure:
        credentials = _write_security(config)
        lines += [f"certfile {config.workdir / 'server.pem'}", f"keyfile {config.workdir / 'server.key'}",
                  "tls_version tlsv1.2", "allow_anonymous false", f"plugin {_dynsec_plugin()}",
                  f"plugin_opt_config_file {config.workdir / DYNSEC_FILE}"]
    else:
        lines.append("allow_anonymous true")
    header = "# generated by `bisup broker` (toolkit/service/broker.py); rewritten on each run"
    config.conf_path.write_text("\n".join([header, *lines]) + "\n")
    return credentials


def _check_names(config: BrokerConfig) -> None:
    users = [*config.devices, config.bridge_user]
    bad = [user for user in users if not _NAME.fullmatch(user)]
    if bad:
        raise BrokerError(f"bad device or user name(s) {bad}: use letters, digits, '.', '_' and '-' (at most 64)")
    if len(set(users)) != len(users):
        raise BrokerError(f"device and bridge user names must all differ: {users}")


def _common_lines(config: BrokerConfig) -> list[str]:
    """Settings for both modes; ``user`` is us so that a root run keeps access to the work folder."""
    return [
        f"user {pwd.getpwuid(os.geteuid()).pw_name}",
        "per_listener_settings false",
        f"listener {config.port} {config.host}",
        "set_tcp_nodelay true",
        "persistence true",
        f"persistence_location {config.workdir}",
        "persistence_file mosquitto.db",
        "autosave_interval 60",
        "max_inflight_messages 100",  # per client; bridge workers hold requests unacked while the remote answers
        "max_queued_messages 10000",  # a restarted worker or a reconnecting device finds its backlog
        "log_dest stderr",  # start() appends stderr to mosquitto.log, so early errors land there too
        "log_type error", "log_type warning", "log_type notice", "log_type information",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
    ]


def _write_security(config: BrokerConfig) -> Credentials:
    if not all((config.workdir / name).exists() for name in ("ca.pem", "server.pem", "server.key")):
        _write_certificates(config)
    credentials = _credentials(config)
    _write_private(config.credentials_path, json.dumps({
        "url": config.url, "ca": str(config.ca_path), "bridge_user": config.bridge_user,
        "bridge_group": credentials.bridge_group, "passwords": credentials.passwords}, indent=2) + "\n")
    for user, password in credentials.passwords.items():
        config.password_file(user).parent.mkdir(mode=0o700, exist_ok=True)
        _write_private(config.password_file(user), password + "\n")
    _write_private(config.workdir / DYNSEC_FILE, json.dumps(_dynsec(config, credentials), indent=2) + "\n")
    return credentials


def _credentials(config: BrokerConfig) -> Credentials:
    """Passwords (and the group) from an earlier run where there are any, new random ones for new users."""
    old = json.loads(config.credentials_path.read_text()) if config.credentials_path.exists() else {}
    known = old.get("passwords", {})
    users = [config.bridge_user, *config.devices]
    passwords = {user: known.get(user) or secrets.token_urlsafe(18) for user in users}
    return Credentials(passwords, old.get("bridge_group") or f"bisup-{secrets.token_hex(8)}")


def _write_private(path: Path, text: str) -> None:
    """Write a secret into a file that is 0600 from the moment it exists: a new file, created with that mode,
    renamed over the old one (so an older, looser file cannot keep its mode, and no reader sees half a file)."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _dynsec_plugin() -> str:
    """Debian's mosquitto ships the dynamic-security plugin next to libmosquitto."""
    for pattern in ("/usr/lib/*/mosquitto_dynamic_security.so", "/usr/lib/mosquitto_dynamic_security.so",
                    "/usr/local/lib/mosquitto_dynamic_security.so"):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise BrokerError("mosquitto's dynamic-security plugin (mosquitto_dynamic_security.so) is not installed; "
                      "apt-get install mosquitto (2.0 or newer)")


def _hashed(password: str) -> dict:
    """A password as the plugin stores it: PBKDF2-HMAC-SHA512 over a 12-byte salt, base64."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, DYNSEC_ITERATIONS)
    return {"password": base64.b64encode(digest).decode(), "salt": base64.b64encode(salt).decode(),
            "iterations": DYNSEC_ITERATIONS}


def _acl(kind: str, topic: str) -> dict:
    return {"acltype": kind, "topic": topic, "allow": True}


def _dynsec(config: BrokerConfig, credentials: Credentials) -> dict:
    """The plugin's whole configuration: deny by default, one role per device, one for the bridge."""
    requests = request_topic("+", "+")  # every device's, in every deployment
    clients = [{"username": config.bridge_user, "textName": "bisup bridge workers", "roles": [{"rolename": "bridge"}],
                **_hashed(credentials.passwords[config.bridge_user])}]
    shared = f"$share/{credentials.bridge_group}/{requests}"
    roles = [{"rolename": "bridge", "acls": [
        _acl("subscribePattern", requests), _acl("subscribePattern", shared),
        _acl("publishClientReceive", requests), _acl("publishClientSend", response_topic("+", "+") + "/#")]}]
    for device in config.devices:
        clients.append({"username": device, "clientid": device_client_id(device), "textName": f"bisup device {device}",
                        "roles": [{"rolename": f"device-{device}"}], **_hashed(credentials.passwords[device])})
        answers = response_topic(device, "+")  # its own, in any deployment
        roles.append({"rolename": f"device-{device}", "acls": [
            _acl("publishClientSend", request_topic(device, "+")),
            _acl("subscribePattern", answers), _acl("subscribePattern", f"{answers}/#"),
            _acl("publishClientReceive", answers), _acl("publishClientReceive", f"{answers}/#")]})
    deny = {"publishClientSend": False, "publishClientReceive": False, "subscribe": False, "unsubscribe": True}
    return {"defaultACLAccess": deny, "clients": clients, "groups": [], "roles": roles}


def _write_certificates(config: BrokerConfig) -> None:
    """A CA that signs one loopback server certificate; its key is discarded, so it can never sign more."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bisup local broker CA")])
    start = datetime.now(UTC) - timedelta(hours=1)  # tolerate a little clock skew between machines
    ca = (_builder(ca_name, ca_name, ca_key.public_key(), start)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    server = (_builder(server_name, ca_name, key.public_key(), start)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.SubjectAlternativeName(_alt_names(config.host)), critical=False)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    config.ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (config.workdir / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write_private(config.workdir / "server.key", key_pem.decode())


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             start: datetime) -> x509.CertificateBuilder:
    """Common fields; a subject key id on both, which strict verifiers (Python 3.13's default) require."""
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


def _alt_names(host: str) -> list:
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
             x509.IPAddress(ipaddress.ip_address("::1"))]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return names + [x509.DNSName(host)] if host != "localhost" else names
    return names if address.is_loopback or address.is_unspecified else names + [x509.IPAddress(address)]


def _find(program: str) -> str:
    found = shutil.which(program) or shutil.which(program, path=_SBIN)
    if not found:
        raise BrokerError(f"{program} is not installed (looked on PATH and in {_SBIN}): apt-get install mosquitto")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's pick), for a broker that needs no fixed port."""
    with socket.socket(_family(host)) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _check_port_free(host: str, port: int) -> None:
    """Fail before starting: otherwise the readiness probe could reach whatever already listens there.

    SO_REUSEADDR as mosquitto sets it, so a port left in TIME_WAIT by a stopped broker counts as free."""
    with socket.socket(_family(host)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen()
        except OSError as exc:
            raise BrokerError(f"port {port} on {host} is already in use ({exc.strerror}); stop what listens there "
                              f"(`ss -ltnp 'sport = :{port}'` shows it) or choose another port") from exc


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class LocalBroker:
    """A mosquitto process for one ``BrokerConfig``; ``restart()`` keeps the port and the persistence file."""

    config: BrokerConfig
    credentials: Credentials
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def port(self) -> int:
        return self.config.port

    @property
    def ca_path(self) -> Path | None:
        return self.config.ca_path if self.config.secure else None

    @property
    def bridge_group(self) -> str:
        """The shared-subscription group the bridge must use (``--group``); random and private in secure mode."""
        return self.credentials.bridge_group

    def endpoint(self, user: str | None = None) -> Broker:
        """How a client (``mqtt_link.make_client``/``connect``) reaches this broker as ``user``."""
        if self.config.secure and user not in self.credentials.passwords:
            raise BrokerError(f"no user {user!r} on this broker; users: {sorted(self.credentials.passwords)}")
        password = self.credentials.passwords.get(user) if user else None
        return Broker.from_url(self.url, user, password, self.ca_path)

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> LocalBroker:
        """Start mosquitto and return once it accepts an MQTT connection; BrokerError with its log otherwise."""
        _check_port_free(self.config.host, self.port)
        log_path = self.config.log_path
        offset = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            self.process = subprocess.Popen([_find("mosquitto"), "-c", str(self.config.conf_path)],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            self._wait_ready(time.monotonic() + timeout_s, offset)
        except BaseException:  # also Ctrl-C while waiting: never leave a mosquitto behind
            self.stop()
            raise
        return self

    def _wait_ready(self, deadline: float, log_offset: int) -> None:
        """Listening first (cheap to poll), then a real MQTT CONNECT, which also proves TLS and passwords."""
        where = f"{self.config.host}:{self.port}"
        while not _accepts(self.config.host, self.port):
            if self.process.poll() is not None:
                raise self._failure(f"mosquitto exited (code {self.process.returncode}) before listening on {where}",
                                    log_offset)
            if time.monotonic() > deadline:
                raise self._failure(f"mosquitto did not listen on {where} in time", log_offset)
            time.sleep(0.02)
        probe_user = self.config.bridge_user if self.config.secure else None
        endpoint = self.endpoint(probe_user)
        try:
            probe = make_client(endpoint, f"bisup-broker-probe-{secrets.token_hex(4)}")
            connect(probe, endpoint, timeout_s=max(deadline - time.monotonic(), 1.0))
        except MqttError as exc:
            # Broken TLS files: mosquitto may listen for a moment before it fails on them and exits.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=2)
            if self.process.returncode is not None:
                raise self._failure(f"mosquitto exited (code {self.process.returncode}) on {where}: {exc}",
                                    log_offset) from exc
            raise self._failure(f"mosquitto on {where} does not accept connections: {exc}", log_offset) from exc
        probe.disconnect()
        probe.loop_stop()

    def _failure(self, message: str, log_offset: int) -> BrokerError:
        with self.config.log_path.open("rb") as log:
            log.seek(log_offset)
            lines = log.read().decode(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        tail = "\n".join(f"  {line}" for line in lines) or "  (empty)"
        return BrokerError(f"{message}\nmosquitto log ({self.config.log_path}):\n{tail}")

    def stop(self) -> None:
        """SIGTERM, so that mosquitto writes its persistence file; SIGKILL only if it hangs."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Stop and start on the same port; persistent sessions and their queued messages come back."""
        self.stop()
        self.start(timeout_s)

    def describe(self) -> list[str]:
        """What a user needs to connect, one line each (passwords stay in files)."""
        lines = [f"mosquitto on {self.url}", self._state_line()]
        if self.config.secure:
            lines += [f"TLS CA certificate: {self.ca_path}",
                      f"credentials (mode 0600): {self.config.credentials_path}; one password per file in "
                      f"{self.config.password_file(self.config.bridge_user).parent}",
                      f"users: bridge {self.config.bridge_user!r} (group {self.bridge_group!r}), "
                      f"devices {', '.join(self.config.devices)}"]
        return lines

    def _state_line(self) -> str:
        """Where the state lives and its mode, with a warning when others can look into the folder."""
        folder = self.config.workdir
        mode = stat.S_IMODE(folder.stat().st_mode)
        secrets_too = ", CA, server key and passwords (files 0600)" if self.config.secure else ""
        what = f"config, log, persistence{secrets_too}"
        line = f"state folder: {folder} (mode {mode:04o}): {what}"
        return line + (f"; warning: others can read it: chmod 700 {folder}" if mode & 0o077 else "")

    def commands(self, bundle: str, remote: str, data: str) -> list[str]:
        """Complete `bisup bridge` and `bisup device` command lines for this broker, ready to paste."""
        def login(user: str) -> str:
            if not self.config.secure:
                return ""
            return f" --tls-ca {self.ca_path} --username {user} --password-file {self.config.password_file(user)}"

        bridge = (f"bisup bridge --mqtt {self.url} --group {self.bridge_group}{login(self.config.bridge_user)} "
                  f"--bundle {bundle} --remote {remote}")
        devices = [f"bisup device --mqtt {self.url}{login(device)} --device-id {device} --bundle {bundle} "
                   f"--data {data}" for device in self.config.devices]
        return [bridge, *devices]


@contextmanager
def run_broker(workdir: str | Path, port: int = 0, secure: bool = False, devices: Iterable[str] = DEFAULT_DEVICES,
               host: str = "127.0.0.1", bridge_user: str = BRIDGE_USER,
               timeout_s: float = READY_TIMEOUT_S) -> Iterator[LocalBroker]:
    """A started broker (``port=0``: a free one) that is stopped when the block ends, whatever happens."""
    config = BrokerConfig(Path(workdir).resolve(), port or free_port(host), secure, tuple(devices), bridge_user, host)
    broker = LocalBroker(config, write_config(config))
    try:
        yield broker.start(timeout_s)
    finally:
        broker.stop()
