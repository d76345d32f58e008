"""The link emulator on real ptys and TCP sockets: bandwidth and delay measured, time scaling, outages that drop
(serial) or hold (TCP), TCP loss as resends, and bad input in one line.

Timing bounds are generous (a loaded 2-core machine) but each would still fail on an unthrottled link: the
expected times are hundreds of milliseconds where a plain pty or loopback takes well under ten."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from bisup.firmware_bridge.link_emulator import (
    QUEUE_BYTES,
    LinkEmulator,
    LinkError,
    emulated_pty,
    listen,
    tcp_proxy,
)
from bisup.firmware_bridge.link_schedule import LinkSchedule


def _open(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    os.set_blocking(fd, False)
    return fd


def _read_until(read, count: int, timeout_s: float = 10.0) -> tuple[bytes, float]:
    """What ``read`` (nonblocking, None when empty) gives until ``count`` bytes or the timeout; and when the
    last byte came (monotonic)."""
    got, last, deadline = b"", 0.0, time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        chunk = read()
        if chunk:
            got, last = got + chunk, time.monotonic()
        else:
            time.sleep(0.002)
    return got, last


def _pty_reader(fd: int):
    def read() -> bytes | None:
        try:
            return os.read(fd, 65536)
        except BlockingIOError:
            return None
    return read


def _pty_transfer(schedule: str, payload: bytes, time_scale: float = 1.0, wait_s: float = 10.0) -> tuple[bytes, float]:
    """``payload`` from the device's end to the bridge's: what arrived and how long the last byte took."""
    with emulated_pty(LinkSchedule.parse(schedule), time_scale) as link:
        device, bridge = _open(link.device_path), _open(link.bridge_path)
        try:
            start = time.monotonic()
            os.write(device, payload)
            got, last = _read_until(_pty_reader(bridge), len(payload), wait_s)
        finally:
            os.close(device)
            os.close(bridge)
    return got, last - start


def test_serial_bandwidth_is_the_schedules():
    """4,000 B at 64 kbit/s take 0.5 s (plus 5 ms one way); an unthrottled pty takes about a millisecond."""
    payload = bytes(range(256)) * 15 + bytes(160)
    got, took = _pty_transfer("0s 64kbps 10ms 0%", payload)
    assert got == payload
    assert 0.45 <= took <= 1.2, took


def test_serial_delay_is_half_the_round_trip():
    got, took = _pty_transfer("0s 10Mbps 400ms 0%", b"ping")
    assert got == b"ping"
    assert 0.19 <= took <= 0.6, took


def test_time_scale_compresses_the_schedule():
    """At 20x, 2,000 B at 8 kbit/s (2 s of link time) and a 2 s round trip (1 s one way) take 0.15 s of host time."""
    payload = bytes(2000)
    got, took = _pty_transfer("0s 8kbps 2s 0%", payload, time_scale=20)
    assert got == payload
    assert 0.14 <= took <= 0.6, took


def test_a_serial_outage_drops_bytes_and_the_link_comes_back():
    schedule = LinkSchedule.parse("0s outage\n300ms 1Mbps 0ms 0%")
    with emulated_pty(schedule) as link:
        device, bridge = _open(link.device_path), _open(link.bridge_path)
        try:
            os.write(device, b"lost in the outage")
            lost, _ = _read_until(_pty_reader(bridge), 1, 0.2)
            time.sleep(max(0.0, 0.35 - link.emulator.link_time()))
            os.write(device, b"after")
            after, _ = _read_until(_pty_reader(bridge), 5, 5.0)
        finally:
            os.close(device)
            os.close(bridge)
    assert lost == b""
    assert after == b"after"
    assert link.uplink.stats.dropped == len(b"lost in the outage")


def test_serial_loss_drops_whole_packets():
    with emulated_pty(LinkSchedule.parse("0s 10Mbps 0ms 50%"), seed=1) as link:
        device, bridge = _open(link.device_path), _open(link.bridge_path)
        try:
            os.write(device, bytes(64 * 40))
            got, _ = _read_until(_pty_reader(bridge), 64 * 40, 1.0)
        finally:
            os.close(device)
            os.close(bridge)
    stats = link.uplink.stats
    assert 0 < stats.dropped < 64 * 40 and stats.dropped % 64 == 0
    assert len(got) == stats.delivered == 64 * 40 - stats.dropped


class Echo:
    """A TCP echo server on a free port (the far side of the proxy)."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = self.server.getsockname()[:2]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.server.close()


def _echo_through(schedule: str, payload: bytes, seed: int = 0, queue_bytes: int = QUEUE_BYTES,
                  ) -> tuple[bytes, float, float, list]:
    """``payload`` to an echo server through the proxy and back: what came back, how long it took, when it came
    in link time, and the emulator's lines."""
    echo = Echo()
    try:
        with tcp_proxy(LinkSchedule.parse(schedule), echo.address, seed=seed, queue_bytes=queue_bytes) as proxy:
            with socket.create_connection(proxy.address) as client:
                start = time.monotonic()
                threading.Thread(target=client.sendall, args=(payload,), daemon=True).start()
                client.setblocking(False)

                def read() -> bytes | None:
                    try:
                        return client.recv(65536)
                    except BlockingIOError:
                        return None
                got, last = _read_until(read, len(payload))
            lines, t0 = proxy.emulator.lines, proxy.emulator.t0
    finally:
        echo.close()
    return got, last - start, last - t0, lines


def test_tcp_proxy_throttles_both_ways():
    """3,000 B to an echo server and back at 120 kbit/s with a 100 ms round trip: the echo overlaps the upload, so
    0.2 s of serialisation, 50 ms each way and one packet's turn: about 0.31 s (loopback: a millisecond)."""
    payload = os.urandom(3000)
    got, took, _, _ = _echo_through("0s 120kbps 100ms 0%", payload)
    assert got == payload
    assert 0.28 <= took <= 1.2, took


def test_tcp_outage_holds_bytes_until_the_link_returns():
    got, _, arrived, lines = _echo_through("0s outage\n400ms 10Mbps 0ms 0%", b"held")
    assert got == b"held"
    assert 0.39 <= arrived <= 1.5, arrived
    assert lines[0].stats.held == 4 and lines[0].stats.dropped == 0


def test_tcp_loss_is_resends_that_cost_time_not_bytes():
    payload = os.urandom(64 * 20)
    got, took, _, lines = _echo_through("0s 10Mbps 0ms 30%", payload, seed=2)
    assert got == payload
    resent = sum(line.stats.resent for line in lines)
    assert resent > 0
    assert took >= 0.19, took  # at least one 200 ms retransmission timeout on the way


def test_a_flooding_serial_sender_overflows_a_bounded_queue():
    """256 KB written at once into an 80 kbit/s line holding 8 KB: what does not fit is dropped as overflow (a
    radio's full transmit buffer), the queue never passes its bound, and the emulator keeps carrying bytes."""
    with emulated_pty(LinkSchedule.parse("0s 80kbps 0ms 0%"), queue_bytes=8192) as link:
        device, bridge = _open(link.device_path), _open(link.bridge_path)
        try:
            flood, deadline = memoryview(bytes(256 * 1024)), time.monotonic() + 20
            while flood and time.monotonic() < deadline:
                try:
                    flood = flood[os.write(device, flood):]
                except BlockingIOError:
                    time.sleep(0.001)
            got, _ = _read_until(_pty_reader(bridge), 8192, 3.0)
        finally:
            os.close(device)
            os.close(bridge)
    stats = link.uplink.stats
    assert not flood  # the sender was never blocked: a UART has no flow control
    assert link.uplink.peak_queued <= 8192
    assert stats.overflow >= 256 * 1024 - 8192 - 4096 and stats.overflow <= stats.dropped
    assert len(got) >= 4096


def test_a_flooding_tcp_sender_is_pushed_back_and_loses_nothing():
    """1 MB through a proxy whose lines hold 16 KB: the emulator stops reading the sender while a line is full
    (TCP's flow control then holds the sender), so its queue stays within the bound plus one read, and every
    byte still arrives."""
    payload = os.urandom(1024 * 1024)
    got, _, _, lines = _echo_through("0s 40Mbps 0ms 0%", payload, queue_bytes=16384)
    assert got == payload
    assert all(line.peak_queued <= 16384 + 65536 for line in lines), [line.peak_queued for line in lines]
    assert all(line.stats.overflow == 0 for line in lines)


def test_a_taken_port_is_one_line_naming_it():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(LinkError) as error:
            listen("127.0.0.1", port, "the proxy")
    message = str(error.value)
    assert f"127.0.0.1:{port}" in message and "--listen" in message and "\n" not in message


@pytest.mark.parametrize(("kind", "scale", "wanted"), [("radio", 1.0, "neither 'serial' nor 'tcp'"),
                                                       ("serial", 0.0, "must be positive")])
def test_bad_emulator_settings_are_named(kind, scale, wanted):
    with pytest.raises(LinkError, match=wanted):
        LinkEmulator(LinkSchedule.constant(1e6), kind, scale)


def test_close_is_prompt_with_bytes_still_in_flight():
    """A byte due in an hour does not keep the emulator's thread alive."""
    with emulated_pty(LinkSchedule.parse("0s 1Mbps 7200s 0%")) as link:
        device = _open(link.device_path)
        os.write(device, b"slow")
        time.sleep(0.05)
        start = time.monotonic()
    os.close(device)
    assert time.monotonic() - start < 2.0


@pytest.fixture(scope="module")
def relayed(bundle_dir, digits_example):
    """A bridge handler on the test bundle (its local CNN as the remote) and 24 test inputs."""
    import numpy as np

    from bisup.firmware_bridge.bundle import Bundle
    from bisup.firmware_bridge.handler import RequestHandler
    from bisup.firmware_bridge.relay import Relay
    from bisup.firmware_bridge.remotes import open_remote

    bundle = Bundle.load(bundle_dir)
    remote = open_remote(digits_example["model"])
    handler = RequestHandler(Relay(remote, bundle.remote_supervisor, bundle.quantization), bundle)
    x = np.load(digits_example["test"])["x"][:24]
    return bundle, handler, x, remote.predict(x).argmax(axis=1)


def _remote_labels_match(answers, expected) -> None:
    from bisup.firmware_bridge import protocol as p

    for answer, label in zip(answers, expected, strict=True):
        if answer.source is p.Source.REMOTE:
            assert answer.label == label


@pytest.mark.slow
def test_serial_loss_makes_the_device_resend_and_still_get_answers(relayed):
    """One packet in five is lost: frames fail their CRC, the device resends after its timeout, and every input
    is still answered by the remote (threshold 128: every input relayed)."""
    import serial

    from bisup.firmware_bridge import protocol as p
    from bisup.firmware_bridge.serial_bridge import SerialBridge
    from bisup.firmware_bridge.virtual_device import SerialLink, VirtualDevice

    bundle, handler, x, expected = relayed
    stop = threading.Event()
    with emulated_pty(LinkSchedule.parse("0s 1Mbps 10ms 20%"), seed=5) as link:
        bridge = threading.Thread(target=SerialBridge(link.bridge_path, handler).run, args=(stop,), daemon=True)
        bridge.start()
        try:
            with serial.serial_for_url(link.device_path, timeout=0.02) as port:
                device = VirtualDevice(SerialLink(port), bundle.local_model(), 128, timeout_s=0.15, retries=12)
                device.hello()
                answers = device.run(x)
        finally:
            stop.set()
            bridge.join(timeout=5)
    assert link.uplink.stats.dropped + link.downlink.stats.dropped > 0
    assert device.stats.resends > 0 and device.stats.bad_frames + handler.counts["error_bad_crc"] + \
        handler.counts["error_bad_cobs"] > 0
    assert all(a.source is p.Source.REMOTE for a in answers) or device.stats.rejected
    assert sum(a.source is p.Source.REMOTE for a in answers) >= len(x) - device.stats.rejected
    _remote_labels_match(answers, expected)


@pytest.mark.slow
def test_the_mqtt_proxy_carries_a_bridge_round_trip(mosquitto, relayed):
    """A device reaches mosquitto through the proxy (100 ms round trip), the bridge worker directly: every input
    is answered by the remote, and each relay costs at least the round trip."""
    from bisup.firmware_bridge import protocol as p
    from bisup.firmware_bridge.mqtt_bridge import start_workers
    from bisup.firmware_bridge.mqtt_link import Broker, DeviceLink, deployment_name
    from bisup.firmware_bridge.virtual_device import VirtualDevice

    bundle, handler, x, expected = relayed
    broker = Broker.from_url(mosquitto.url)
    workers = start_workers(broker, handler, prefix="link-")
    try:
        with tcp_proxy(LinkSchedule.parse("0s 200kbps 100ms 0%"), (broker.host, broker.port)) as proxy:
            link = DeviceLink(Broker(*proxy.address), "via-proxy", deployment_name(bundle.model_hash))
            try:
                device = VirtualDevice(link, bundle.local_model(), 128, "via-proxy", timeout_s=2.0, retries=3)
                device.hello()
                start = time.monotonic()
                answers = device.run(x[:10])
                took = time.monotonic() - start
            finally:
                link.close()
    finally:
        for worker in workers:
            worker.stop()
    assert proxy.connections == 1
    assert device.stats.requests == 10 and device.stats.resends == 0
    assert sum(a.source is p.Source.REMOTE for a in answers) == 10 - device.stats.rejected
    _remote_labels_match(answers, expected[:10])
    assert took >= 10 * 0.1 * 0.95, took  # loopback would take about 10 x 2 ms


def test_the_demo_names_a_bad_schedule_line_before_any_work(tmp_path):
    from cli_errors import error_line
    from click.testing import CliRunner

    from bisup.cli import main

    schedule = tmp_path / "link.txt"
    schedule.write_text("# start bandwidth rtt loss\n0s 2Mbps 20ms 0%\n30s 20kbs 150ms 1%\n60s end\n")
    result = CliRunner().invoke(main, ["demo", "--exits", "--link", str(schedule)])
    line = error_line(result)
    assert "line 3" in line and "20kbs" in line and "20kbps" in line


def test_bisup_link_carries_bytes_between_a_device_pty_and_the_bridge_pty(tmp_path):
    """The command as a user runs it: it prints both ptys, bytes written on the device's arrive on the bridge's
    after the schedule's delay, and on exit it prints the byte counts as JSON."""
    import json
    import subprocess
    import sys

    from links import StderrLines

    schedule = tmp_path / "link.txt"
    schedule.write_text("0s 1Mbps 300ms 0%\n")
    process = subprocess.Popen([sys.executable, "-m", "bisup.cli", "link", str(schedule), "--serial", "pty",
                                "--duration", "3", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    stderr = StderrLines(process)
    device_path = stderr.wait_for("device side:", 60)[0].split("--serial ")[1].split()[0]
    bridge_path = stderr.wait_for("bridge side:", 10)[0].split("--serial ")[1].split()[0]
    device, bridge = _open(device_path), _open(bridge_path)
    try:
        start = time.monotonic()
        os.write(device, b"hello bridge")
        got, last = _read_until(_pty_reader(bridge), 12, 5.0)
    finally:
        os.close(device)
        os.close(bridge)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0, stderr.text()
    assert got == b"hello bridge" and last - start >= 0.14
    assert json.loads(out)["up"]["delivered"] == 12


@pytest.mark.parametrize(("args", "wanted"), [
    (["--serial", "pty"], "line 2 ('5s 1Mbps fast 0%')"),
    ([], "exactly one of --serial"),
])
def test_bisup_link_bad_input_is_one_line(tmp_path, args, wanted):
    from cli_errors import error_line
    from click.testing import CliRunner

    from bisup.cli import main

    schedule = tmp_path / "link.txt"
    schedule.write_text("0s 1Mbps 10ms 0%\n5s 1Mbps fast 0%\n")
    assert wanted in error_line(CliRunner().invoke(main, ["link", str(schedule), *args]))


def test_bisup_link_on_a_taken_port_names_it(tmp_path):
    from cli_errors import error_line
    from click.testing import CliRunner

    from bisup.cli import main

    schedule = tmp_path / "link.txt"
    schedule.write_text("0s 1Mbps 10ms 0%\n")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["link", str(schedule), "--mqtt", "mqtt://127.0.0.1:1883", "--listen",
                                           f"127.0.0.1:{port}"])
    assert f"cannot listen on 127.0.0.1:{port}" in error_line(result)


def test_hil_harness_frames_pass_an_outage_and_the_bridges_do_not():
    """On the board's UART the harness's FEED goes through untouched while the board's INFER is lost in the
    outage, cut whole at the frame delimiters (`bisup hil --link`)."""
    from bisup.firmware_bridge import framing
    from bisup.firmware_bridge import protocol as p
    from bisup.firmware_bridge.link_emulator import PtyLink
    from bisup.hil.link import harness_frame

    feed = framing.encode_frame(p.encode(p.Feed(1, bytes(64))))
    infer = framing.encode_frame(p.encode(p.Infer(2, 3, 40, bytes(64))))
    assert harness_frame(feed) and not harness_frame(infer)
    emulator = LinkEmulator(LinkSchedule.parse("0s outage"), spare=harness_frame)
    link = PtyLink(emulator)
    with emulator:
        device, bridge = _open(link.device_path), _open(link.bridge_path)
        try:
            os.write(bridge, feed[:10])
            os.write(bridge, feed[10:] + infer)  # the harness's frame split across writes, then the bridge's
            os.write(device, infer)
            to_board, _ = _read_until(_pty_reader(device), len(feed) + 1, 0.5)
            to_bridge, _ = _read_until(_pty_reader(bridge), 1, 0.2)
        finally:
            os.close(device)
            os.close(bridge)
    link.close()
    assert to_board == feed and to_bridge == b""
    assert link.uplink.stats.dropped == link.downlink.stats.dropped == len(infer)


def test_hil_harness_frames_never_overtake_the_bridges():
    """A FEED written right after the bridge's reply to HELLO arrives after it (a board not yet greeted would
    drop the FEED), though the link delays only the reply."""
    from bisup.firmware_bridge import framing
    from bisup.firmware_bridge import protocol as p
    from bisup.firmware_bridge.link_emulator import PtyLink
    from bisup.hil.link import harness_frame

    reply = framing.encode_frame(p.encode(p.Hello(1, (0, 2, 0), bytes(32), "bridge")))
    feed = framing.encode_frame(p.encode(p.Feed(1, bytes(64))))
    emulator = LinkEmulator(LinkSchedule.parse("0s 1Mbps 300ms 0%"), spare=harness_frame)
    link = PtyLink(emulator)
    with emulator:
        device, bridge = _open(link.device_path), _open(link.bridge_path)
        try:
            start = time.monotonic()
            os.write(bridge, reply + feed)
            got, last = _read_until(_pty_reader(device), len(reply) + len(feed), 3.0)
        finally:
            os.close(device)
            os.close(bridge)
    link.close()
    assert got == reply + feed and last - start >= 0.14
