"""Fleet scale (issue 19, item 6): thousands of simulated devices against 1, 2 and 4 MQTT bridge workers.

With and without one flooding device, and always against a raw paho echo on the same broker in the same run.

    python bench/fleet.py                       # 5,000 devices x 3 requests; workers 1, 2, 4; 1.5 min here
    python bench/fleet.py --quick               # 1,000 devices x 2 requests; workers 1, 2; a flood of 5,000
    python bench/fleet.py --devices 2000 --requests-per-device 5 --workers 1 4 --json fleet.json

Devices are protocol only (no TFLM): each is a device id whose requests are INFER bodies (16 int8
elements, a new seq each, so the dedup cache never answers) or, with ``--kind ping``, PING. Device ids
share ``--senders`` paho clients (8 by default) in one load process: thousands of TCP connections would
measure the OS, not the bridge. Each sender subscribes to its own devices' exact ``bisup/v1/<deployment>/<id>/resp``
topics (a ``bisup/v1/+/resp`` wildcard on every sender would make the broker deliver every answer to
every sender, which would measure that fan-out). A device sends its requests one after another and
waits at most ``--deadline`` (2 s) for each answer, as firmware would before falling back to its local
answer; an answer later than that counts as lost (and as late). At most ``--in-flight`` devices
(256) have a request out at once, spread over the senders.

Subjects, one at a time on one mosquitto (``bisup broker``'s config, whose version and settings are
printed): a raw paho echo (one client in the same shared subscription that republishes each request
body to the device's resp topic at QoS 1, no decoding; the baseline) and ``start_workers`` with 1, 2
and 4 bridge workers sharing one ``RequestHandler`` over a tiny numpy remote and no bundle. Each phase
starts its subject in a fresh process (the workers share its GIL, as ``bisup bridge --workers N`` does),
which reads its own VmRSS (``/proc/self/status``) and CPU time, so no phase inherits another's heap; the
devices and the flooder run in processes of their own, so their Python does not take the bridge's GIL.

Flood: the same, while one more device id on its own connection publishes ``--flood`` (20,000) INFER
requests as fast as its client can (QoS 1 by default, up to the broker's ``max_inflight_messages`` in
flight). Reported, for the other devices' requests sent while the flood lasted (its first request to
its last answer): their share answered within the deadline and their p50/p99; then their share over the
whole run, the flood's answered count (once the others are done, the flooder waits until no answer came
for a deadline; of its replies, how many were BUSY: the bridge's admission refusing it), the bridge process's RSS
before, at its peak and after, the broker's RSS growth, and
mosquitto's "messages are being dropped" notices (a client's queue, ``max_queued_messages``, ran over).

Every ratio is against the echo measured in the same run, because the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

SBIN = "/usr/sbin:/usr/local/sbin"  # where Debian puts mosquitto; not on every user's PATH
ELEMENTS = 16  # int8 elements per INFER: a small unsure input, so the wire and the bridge dominate, not the model
CLASSES = 4
GROUP = "fleet"  # the shared-subscription group of both the echo and the bridge workers
DEPLOYMENT = "fleet"  # the topics' deployment level, served by both the echo and the bridge workers
SEQ = struct.Struct("<I")  # every protocol version has the seq at offset 2, and the echo returns the body as is
SUBSCRIBE_CHUNK = 200  # topics per SUBSCRIBE packet
READY_TIMEOUT_S = 60.0
PHASE_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Plan:
    """What a load process does; plain data, because it crosses into a spawned process."""

    url: str
    tag: str  # unique per phase, in every client id
    boot: int  # a new boot id per phase, in every request, so no answer can come from an earlier phase's cache
    devices: int
    requests_per_device: int
    senders: int
    in_flight: int
    deadline_s: float
    kind: str
    broker_inflight: int
    flood: int = 0
    flood_qos: int = 1


@dataclass
class Phase:
    """One subject under one load: what the devices saw and what it cost the bridge process and the broker."""

    subject: str
    flood: bool
    sent: int = 0
    answered: int = 0
    lost: int = 0
    late: int = 0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    rps: float = 0.0
    seconds: float = 0.0
    cpu_s: float = 0.0
    rss_before_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_after_mb: float = 0.0
    broker_rss_growth_mb: float = 0.0
    drop_notices: list[str] = field(default_factory=list)
    flood_sent: int = 0
    flood_refused: int = 0
    flood_answered: int = 0
    flood_busy: int = 0  # of the flood's replies, ERROR BUSY (the admission limits refused the request)
    flood_send_s: float = 0.0
    flood_s: float = 0.0  # from the flood's first request to its last answer
    during_sent: int = 0  # the others' requests sent within that window, and their figures
    during_answered: int = 0
    during_p50_ms: float = float("nan")
    during_p99_ms: float = float("nan")


# ---------------------------------------------------------------------------------------------- load processes


def _body(kind: str, seq: int, boot: int, data: bytes) -> bytes:
    from bisup.firmware_bridge import protocol as p

    if kind == "ping":
        return p.encode(p.Ping(seq, boot=boot))
    return p.encode(p.Infer(seq, 1, -40, data, boot=boot))


class Sender:
    """One paho connection that speaks for many device ids: each device has at most one request out, and
    at most ``window`` of this sender's devices have one out at a time."""

    def __init__(self, plan: Plan, index: int, ids: list[str], window: int):
        from bisup.firmware_bridge.mqtt_link import Broker, make_client

        self.plan, self.ids, self.window = plan, ids, window
        self.broker = Broker.from_url(plan.url)
        self.client = make_client(self.broker, f"fleet-{plan.tag}-s{index}")
        self.client.max_inflight_messages_set(plan.broker_inflight)
        self.client.on_message = self._answer
        self.client.on_subscribe = self._subscribed
        rng = np.random.default_rng(index)
        self.data = {i: rng.integers(-128, 128, ELEMENTS, dtype=np.int8).tobytes() for i in ids}
        self.left = {i: plan.requests_per_device for i in ids}
        self.seq = dict.fromkeys(ids, 0)
        self.waiting = deque(ids)  # devices that have not started yet
        self.pending: dict[str, tuple[int, float]] = {}  # device -> (seq, sent at)
        self.deadlines: deque[tuple[float, str, int]] = deque()
        self.latencies: list[tuple[float, float]] = []  # (sent at, seconds to the answer)
        self.lost_at: list[float] = []  # when each request that got no answer in time was sent
        self.late = 0
        self.last = 0.0  # when the last answer came
        self.total = len(ids) * plan.requests_per_device
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._subacks = 0
        self._subscribed_all = threading.Event()

    def connect(self) -> None:
        """Connect and subscribe to every device's resp topic before the clock starts."""
        from bisup.firmware_bridge.mqtt_link import connect, response_topic

        connect(self.client, self.broker)
        topics = [(response_topic(i, DEPLOYMENT), 1) for i in self.ids]
        self._chunks = [topics[k : k + SUBSCRIBE_CHUNK] for k in range(0, len(topics), SUBSCRIBE_CHUNK)]
        for chunk in self._chunks:
            self.client.subscribe(chunk)
        if not self._subscribed_all.wait(READY_TIMEOUT_S):
            raise RuntimeError(f"a sender's {len(self.ids)} subscriptions were not acknowledged")

    def _subscribed(self, *args: Any) -> None:
        self._subacks += 1
        if self._subacks == len(self._chunks):
            self._subscribed_all.set()

    def start(self) -> None:
        """The first ``window`` devices send their first request."""
        with self._lock:
            out = [self._next_device() for _ in range(min(self.window, len(self.ids)))]
        self._send(out)

    def _request(self, device: str) -> tuple[str, bytes]:
        """The device's next request (lock held): its topic and body, recorded as pending."""
        from bisup.firmware_bridge.mqtt_link import request_topic

        self.seq[device] += 1
        self.left[device] -= 1
        now = time.perf_counter()
        self.pending[device] = (self.seq[device], now)
        self.deadlines.append((now + self.plan.deadline_s, device, self.seq[device]))
        body = _body(self.plan.kind, self.seq[device], self.plan.boot, self.data[device])
        return request_topic(device, DEPLOYMENT), body

    def _next_device(self) -> tuple[str, bytes] | None:
        return self._request(self.waiting.popleft()) if self.waiting else None

    def _finished(self, device: str) -> tuple[str, bytes] | None:
        """A device's request ended (answered or given up): its next request, or another device's first."""
        if self.answered_or_lost() == self.total:
            self.done.set()
        return self._request(device) if self.left[device] else self._next_device()

    def answered_or_lost(self) -> int:
        return len(self.latencies) + len(self.lost_at)

    def _send(self, out: list[tuple[str, bytes] | None]) -> None:
        for item in out:  # outside the lock: paho takes its own
            if item is not None:
                self.client.publish(item[0], item[1], qos=1)

    def _answer(self, client: Any, userdata: Any, message: Any) -> None:
        now = time.perf_counter()
        device = message.topic.split("/")[3]
        seq = SEQ.unpack_from(message.payload, 2)[0] if len(message.payload) >= 6 else -1
        with self._lock:
            pending = self.pending.get(device)
            if pending is None or pending[0] != seq:
                self.late += 1
                return
            del self.pending[device]
            self.latencies.append((pending[1], now - pending[1]))
            self.last = now
            out = self._finished(device)
        self._send([out])

    def expire(self, now: float) -> None:
        """Give up on requests past their deadline, as a device that falls back to its own answer."""
        out = []
        with self._lock:
            while self.deadlines and self.deadlines[0][0] <= now:
                _, device, seq = self.deadlines.popleft()
                pending = self.pending.get(device)
                if pending is not None and pending[0] == seq:
                    del self.pending[device]
                    self.lost_at.append(pending[1])
                    out.append(self._finished(device))
        self._send(out)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_fleet(plan: Plan, conn: Connection) -> None:
    """A load process: connect every sender, say ready, wait for go, run every device to the end, report."""
    ids = [f"d{i:05d}" for i in range(plan.devices)]
    senders = [Sender(plan, k, ids[k :: plan.senders], max(1, plan.in_flight // plan.senders))
               for k in range(plan.senders)]
    try:
        for sender in senders:
            sender.connect()
        conn.send("ready")
        conn.recv()
        start = time.perf_counter()
        for sender in senders:
            sender.start()
        while not all(s.done.is_set() for s in senders):
            time.sleep(0.02)
            now = time.perf_counter()
            for sender in senders:
                sender.expire(now)
        end = max(s.last for s in senders) if any(s.latencies for s in senders) else time.perf_counter()
        conn.send({"answered": [x for s in senders for x in s.latencies],
                   "lost": [x for s in senders for x in s.lost_at], "late": sum(s.late for s in senders),
                   "start": start, "end": end})
    finally:
        for sender in senders:
            sender.close()


def run_flood(plan: Plan, conn: Connection) -> None:
    """A flooding device: ``plan.flood`` INFER requests from one id, as fast as its client can publish them.
    Once the other devices are done it waits for the rest of its answers until none came for a deadline, so
    that "answered" tells dropped requests from a backlog still being served."""
    from bisup.firmware_bridge import protocol as p
    from bisup.firmware_bridge.mqtt_link import Broker, connect, make_client, request_topic, response_topic

    broker = Broker.from_url(plan.url)
    client = make_client(broker, f"fleet-{plan.tag}-flood")
    client.max_inflight_messages_set(plan.broker_inflight)  # the broker's receive maximum; more would be refused
    state = {"answered": 0, "busy": 0, "refused": 0, "last": 0.0}
    error, busy = bytes([p.MsgType.ERROR]), bytes([p.ErrorCode.BUSY])  # the type, and an ERROR's code after the header

    def answered(c: Any, u: Any, message: Any) -> None:
        state["answered"] += 1
        state["busy"] += message.payload[1:2] == error and message.payload[p.HEADER.size : p.HEADER.size + 1] == busy
        state["last"] = time.perf_counter()

    def published(c: Any, u: Any, mid: int, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            state["refused"] += 1

    client.on_message, client.on_publish = answered, published
    connect(client, broker)
    client.subscribe(response_topic("flood", DEPLOYMENT), qos=1)
    data = bytes(ELEMENTS)
    bodies = [_body(plan.kind, seq, plan.boot, data) for seq in range(1, plan.flood + 1)]
    topic = request_topic("flood", DEPLOYMENT)
    time.sleep(0.2)  # the SUBACK
    conn.send("ready")
    conn.recv()
    start = time.perf_counter()
    infos = [client.publish(topic, body, qos=plan.flood_qos) for body in bodies]
    infos[-1].wait_for_publish(PHASE_TIMEOUT_S)  # paho sends in order: every earlier one went out before it
    send_s = time.perf_counter() - start
    conn.recv()  # the other devices are done
    stopped = time.perf_counter()
    while (state["answered"] + state["refused"] < len(bodies)
           and time.perf_counter() - max(state["last"], stopped) < plan.deadline_s):
        time.sleep(0.05)
    conn.send({"sent": len(bodies), "send_s": send_s, "start": start, **state})
    client.disconnect()
    client.loop_stop()


# ---------------------------------------------------------------------------------------------- the subjects


class TinyRemote:
    """A RemoteModel in a few microseconds (a fixed linear layer and a softmax), so the bench measures the
    bridge and the broker, not a model."""

    name = "tiny-numpy"

    def __init__(self) -> None:
        self.weights = np.random.default_rng(0).normal(size=(ELEMENTS, CLASSES))

    def predict(self, x: np.ndarray) -> np.ndarray:
        logits = np.asarray(x, dtype=np.float64).reshape(len(x), -1) @ self.weights
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def _handler() -> Any:
    """A fresh RequestHandler per phase (empty dedup cache); no bundle, only the two fields the handler reads."""
    from bisup.firmware_bridge.handler import RequestHandler
    from bisup.firmware_bridge.relay import InputQuantization, Relay, RemoteSupervisor

    relay = Relay(TinyRemote(), RemoteSupervisor("max-softmax", 0.5), InputQuantization(1 / 64, 0, (ELEMENTS,)))
    return RequestHandler(relay, SimpleNamespace(input_elements=ELEMENTS, model_hash=bytes(32)))


def _echo(broker: Any, tag: str) -> Callable[[], None]:
    """The baseline: raw paho in the same shared subscription, republishing each body from the network thread."""
    from bisup.firmware_bridge.mqtt_link import connect, make_client, reply_topic, requests_of

    client = make_client(broker, f"fleet-{tag}-echo")
    client.on_message = lambda c, u, m: c.publish(reply_topic(m.topic), m.payload, qos=1)
    connect(client, broker)
    client.subscribe(f"$share/{GROUP}/{requests_of(DEPLOYMENT)}", qos=1)

    def stop() -> None:
        client.disconnect()
        client.loop_stop()

    return stop


def _bridge(broker: Any, tag: str, count: int, threads: int) -> Callable[[], None]:
    from bisup.firmware_bridge.mqtt_bridge import Routing, start_workers

    # Session expiry 0: a stopped worker must not keep a share (or a queued backlog) of the next phase's requests.
    workers = start_workers(broker, _handler(), count, group=GROUP, threads=threads, session_expiry_s=0,
                            prefix=f"{tag}-w", routing=Routing(DEPLOYMENT))

    def stop() -> None:
        for worker in workers:
            worker.stop()

    return stop


def run_subject(plan: Plan, workers: int, threads: int, conn: Connection) -> None:
    """A fresh bridge process per phase: the echo (``workers`` 0) or that many bridge workers. It reads its own
    VmRSS and CPU time, so no phase inherits another's heap, threads or allocator state."""
    from bisup.firmware_bridge.mqtt_link import Broker

    broker = Broker.from_url(plan.url)
    stop = _echo(broker, plan.tag) if workers == 0 else _bridge(broker, plan.tag, workers, threads)
    try:
        time.sleep(0.3)  # the SUBACKs (the workers subscribe from on_connect, with nothing to wait on)
        conn.send("ready")
        conn.recv()  # the devices are about to start
        rss_before, cpu_before, peak = _rss_mb(), os.times(), PeakRss()
        conn.recv()  # the devices (and the flood) are done
        cpu_after, rss_peak, rss_after = os.times(), peak.stop(), _rss_mb()
    finally:
        stop()
    conn.send({"rss_before_mb": rss_before, "rss_peak_mb": rss_peak, "rss_after_mb": rss_after,
               "cpu_s": (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)})


# ---------------------------------------------------------------------------------------------- measuring


def _rss_mb(pid: int | str = "self") -> float:
    """VmRSS of a process in MiB (0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    found = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(found.group(1)) / 1024 if found else 0.0


class PeakRss:
    """Samples this process's VmRSS every 50 ms: a flood's backlog may be freed before the phase ends."""

    def __init__(self) -> None:
        self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _rss_mb())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _rss_mb())


def _spawn(target: Callable[..., None], plan: Plan, *extra: int) -> tuple[Any, Connection]:
    context = multiprocessing.get_context("spawn")  # no fork of a process whose paho threads hold locks
    parent, child = context.Pipe()
    process = context.Process(target=target, args=(plan, *extra, child), daemon=True)
    process.start()
    child.close()
    return process, parent


def _receive(conn: Connection, what: str, timeout_s: float) -> Any:
    """The next message from a load process; a clear error (its traceback is above) if it died or hangs."""
    try:
        if conn.poll(timeout_s):
            return conn.recv()
    except EOFError:
        raise RuntimeError(f"the {what} process exited early (its traceback is above)") from None
    raise RuntimeError(f"the {what} process did not answer within {timeout_s:g} s")


def _phase(subject: str, workers: int, threads: int, plan: Plan, broker_pid: int, log: Path) -> Phase:
    """Start the subject's process, run the fleet (and the flood) against it, stop it; the figures of that run."""
    result = Phase(subject, plan.flood > 0)
    processes = [_spawn(run_subject, plan, workers, threads)]
    try:
        _expect(processes[0][1], "bridge", "ready")
        processes.append(_spawn(run_fleet, plan))
        if plan.flood:
            processes.append(_spawn(run_flood, plan))
        for _, conn in processes[1:]:
            _expect(conn, "load", "ready")
        log_offset, broker_before = log.stat().st_size, _rss_mb(broker_pid)
        for _, conn in processes:
            conn.send("go")
        fleet = _receive(processes[1][1], "fleet", PHASE_TIMEOUT_S)
        flood = None
        if plan.flood:
            processes[2][1].send("stop")
            flood = _receive(processes[2][1], "flood", PHASE_TIMEOUT_S)
        processes[0][1].send("report")
        bridge = _receive(processes[0][1], "bridge", PHASE_TIMEOUT_S)
        result.broker_rss_growth_mb = _rss_mb(broker_pid) - broker_before
        with log.open("rb") as file:
            file.seek(log_offset)
            result.drop_notices = [line for line in file.read().decode(errors="replace").splitlines()
                                   if "dropped" in line.lower()]
    finally:
        for process, conn in processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
            conn.close()
    for key, value in bridge.items():
        setattr(result, key, value)
    _fill(result, fleet, flood)
    return result


def _expect(conn: Connection, what: str, message: str) -> None:
    if _receive(conn, what, READY_TIMEOUT_S) != message:
        raise RuntimeError(f"the {what} process did not start")


def _fill(result: Phase, fleet: dict, flood: dict | None) -> None:
    """The devices' figures for the whole run and, under a flood, for the requests sent while it lasted."""
    answered = np.array(fleet["answered"]).reshape(-1, 2)  # (sent at, seconds)
    lost = np.array(fleet["lost"])
    result.answered, result.lost, result.late = len(answered), len(lost), fleet["late"]
    result.sent = result.answered + result.lost
    result.seconds = fleet["end"] - fleet["start"]
    result.rps = result.answered / result.seconds if result.seconds > 0 else 0.0
    if len(answered):
        result.p50_ms, result.p99_ms = (float(np.percentile(answered[:, 1], q)) * 1000 for q in (50, 99))
    if flood is None:
        return
    result.flood_sent, result.flood_refused, result.flood_answered = flood["sent"], flood["refused"], flood["answered"]
    result.flood_busy = flood["busy"]
    result.flood_send_s = flood["send_s"]
    end = flood["last"] if flood["answered"] else flood["start"] + flood["send_s"]
    result.flood_s = end - flood["start"]
    inside = answered[(answered[:, 0] >= flood["start"]) & (answered[:, 0] <= end)]
    result.during_answered = len(inside)
    result.during_sent = len(inside) + int(np.sum((lost >= flood["start"]) & (lost <= end)))
    if len(inside):
        result.during_p50_ms, result.during_p99_ms = (float(np.percentile(inside[:, 1], q)) * 1000 for q in (50, 99))


# ---------------------------------------------------------------------------------------------- reporting


def _mosquitto() -> str:
    """The mosquitto binary, or exit with one line: without a broker there is nothing to measure."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path=SBIN)
    if not found:
        sys.exit(f"bench/fleet.py: mosquitto is not installed (looked on PATH and in {SBIN}); "
                 "apt-get install mosquitto")
    return found


def _mosquitto_version(binary: str) -> str:
    out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=10)
    found = re.search(r"mosquitto version (\S+)", out.stdout + out.stderr)
    return found.group(1) if found else "unknown"


def _settings(conf: Path) -> dict[str, str]:
    """The settings that shape these figures, as the generated config states them."""
    wanted = ("set_tcp_nodelay", "max_inflight_messages", "max_queued_messages", "persistence", "autosave_interval",
              "allow_anonymous")
    settings = {}
    for line in conf.read_text().splitlines():
        key, _, value = line.partition(" ")
        if key in wanted:
            settings[key] = value.split("#")[0].strip()
    return settings


def _ms(value: float) -> str:
    return "-" if value != value else f"{value:,.1f}"


def _ratio(value: float, base: float) -> str:
    return "-" if not base or value != value or base != base else f"{value / base:.2f}x"


def _normal_table(rows: list[Phase]) -> None:
    echo = rows[0]
    print(f"{'subject':16s} {'answered':>9s} {'lost':>6s} {'late':>5s} {'p50 ms':>8s} {'p99 ms':>8s} {'req/s':>7s} "
          f"{'req/s/echo':>10s} {'p99/echo':>8s} {'CPU us/ans':>10s} {'RSS +MB':>7s} {'drops':>5s}")
    for r in rows:
        cpu = 1e6 * r.cpu_s / r.answered if r.answered else float("nan")
        print(f"{r.subject:16s} {r.answered:9,d} {r.lost:6,d} {r.late:5,d} {_ms(r.p50_ms):>8s} {_ms(r.p99_ms):>8s} "
              f"{r.rps:7,.0f} {_ratio(r.rps, echo.rps):>10s} {_ratio(r.p99_ms, echo.p99_ms):>8s} {cpu:10,.0f} "
              f"{r.rss_after_mb - r.rss_before_mb:7.1f} {len(r.drop_notices):5d}")


def _flood_table(rows: list[Phase], normal: dict[str, Phase]) -> None:
    """The others' figures for the requests they sent while the flood lasted (its first request to its last
    answer), the whole run's share, and what the flood cost in memory."""
    print(f"{'subject':16s} {'flood s':>7s} {'others sent':>11s} {'<=deadline':>10s} {'p50 ms':>8s} {'p99 ms':>8s} "
          f"{'p99/calm':>8s} {'whole run':>9s} {'flood answered (BUSY)':>22s} {'bridge RSS MB':>15s} "
          f"{'broker +MB':>10s} {'drops':>5s}")
    for r in rows:
        during = 100 * r.during_answered / r.during_sent if r.during_sent else float("nan")
        whole = 100 * r.answered / r.sent if r.sent else float("nan")
        calm = normal.get(r.subject)
        rss = f"{r.rss_before_mb:.0f}/{r.rss_peak_mb:.0f}/{r.rss_after_mb:.0f}"
        flood = f"{r.flood_answered:,d}/{r.flood_sent:,d} ({r.flood_busy:,d})"
        print(f"{r.subject:16s} {r.flood_s:7.1f} {r.during_sent:11,d} {during:9.1f}% {_ms(r.during_p50_ms):>8s} "
              f"{_ms(r.during_p99_ms):>8s} {_ratio(r.during_p99_ms, calm.p99_ms if calm else float('nan')):>8s} "
              f"{whole:8.1f}% {flood:>22s} {rss:>15s} {r.broker_rss_growth_mb:10.1f} {len(r.drop_notices):5d}")


def _measure(args: argparse.Namespace, running: Any, settings: dict[str, str], version: str,
             binary: str) -> dict[str, list[Phase]]:
    """Every subject without, then with, the flood; the echo first in each set."""
    print(f"mosquitto {version} ({binary}) on {running.url}; " + ", ".join(f"{k} {v}" for k, v in settings.items()))
    print(f"{args.devices:,d} devices x {args.requests_per_device} {args.kind.upper()} requests (QoS 1) over "
          f"{args.senders} connections, at most {args.in_flight} in flight, deadline {args.deadline:g} s; "
          f"bridge workers {args.workers} x {args.threads} threads; flood {args.flood:,d} at QoS "
          f"{args.flood_qos}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    subjects = [("echo (baseline)", 0)] + [(f"bridge x{n}", n) for n in args.workers]
    results: dict[str, list[Phase]] = {"normal": [], "flood": []}
    for flood in ([0, args.flood] if args.flood else [0]):
        for number, (name, workers) in enumerate(subjects):
            tag = f"{'f' if flood else 'n'}{number}"
            plan = Plan(running.url, tag, int.from_bytes(os.urandom(4), "little"), args.devices,
                        args.requests_per_device, args.senders, args.in_flight, args.deadline, args.kind,
                        int(settings.get("max_inflight_messages", "20")), flood, args.flood_qos)
            phase = _phase(name, workers, args.threads, plan, running.process.pid, running.config.log_path)
            results["flood" if flood else "normal"].append(phase)
            print(f"  done: {name}{', flood' if flood else ''} in {phase.seconds:.1f} s", file=sys.stderr)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=5000, help="simulated device ids")
    parser.add_argument("--requests-per-device", type=int, default=3, help="each one after the last ended")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="bridge worker counts to measure")
    parser.add_argument("--senders", type=int, default=8, help="paho connections the device ids share")
    parser.add_argument("--in-flight", type=int, default=256, help="devices with a request out at once, at most")
    parser.add_argument("--deadline", type=float, default=2.0, help="seconds a device waits for an answer")
    parser.add_argument("--kind", choices=("infer", "ping"), default="infer", help="what every device sends")
    parser.add_argument("--threads", type=int, default=16, help="thread pool per bridge worker (the bridge's default)")
    parser.add_argument("--flood", type=int, default=20000, help="requests from the flooding device (0: no flood)")
    parser.add_argument("--flood-qos", type=int, choices=(0, 1), default=1, help="the flooding device's QoS")
    parser.add_argument("--quick", action="store_true", help="1,000 devices x 2, workers 1 2, flood 5,000")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON (- for stdout)")
    args = parser.parse_args()
    if args.quick:  # smaller defaults; what the command line gave explicitly stays
        for name, value in (("devices", 1000), ("requests_per_device", 2), ("workers", [1, 2]), ("flood", 5000)):
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    binary = _mosquitto()

    from bisup.service.broker import BrokerError, run_broker

    version = _mosquitto_version(binary)
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="bisup-fleet-") as work, run_broker(Path(work)) as running:
            settings = _settings(running.config.conf_path)
            results = _measure(args, running, settings, version, binary)
    except BrokerError as exc:  # one line; the broker's log tail would be lost with the folder anyway
        sys.exit(f"bench/fleet.py: the local mosquitto did not start: {str(exc).splitlines()[0]}")
    print("Devices only (lost: no answer within the deadline; late: answered after it; CPU: this process's, per "
          "answer; drops: mosquitto's dropping notices)")
    _normal_table(results["normal"])
    if results["flood"]:
        print(f"\nOne device floods {args.flood:,d} requests (QoS {args.flood_qos}) while the others run. Others: "
              "their requests sent while the flood lasted (first request to last answer); p99/calm: against the "
              "same subject without the flood; whole run: share answered in time over all their requests. "
              "bridge RSS: this process before/peak/after")
        _flood_table(results["flood"], {r.subject: r for r in results["normal"]})
    notices = sorted({re.sub(r"^\S+: ", "", n) for rows in results.values() for r in rows for n in r.drop_notices})
    for notice in notices[:8]:
        print(f"  mosquitto: {notice}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        def plain(phase: Phase) -> dict:  # NaN (no answer at all) is not JSON: null
            return {k: None if isinstance(v, float) and v != v else v for k, v in asdict(phase).items()}

        document = {"mosquitto": {"version": version, "settings": settings}, "args": vars(args),
                    **{key: [plain(r) for r in rows] for key, rows in results.items()}}
        text = json.dumps(document, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
