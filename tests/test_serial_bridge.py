"""The serial bridge on real links: request handling, dedup, errors, noise, unplug, and the CLIs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import serial
from cli_errors import error_line
from click.testing import CliRunner
from links import NoisyProxy, StderrLines

from bisup.cli import main
from bisup.firmware_bridge import framing
from bisup.firmware_bridge import protocol as p
from bisup.firmware_bridge.bundle import Bundle
from bisup.firmware_bridge.device_model import LocalModel
from bisup.firmware_bridge.handler import RelayLog, RequestHandler
from bisup.firmware_bridge.relay import Relay
from bisup.firmware_bridge.remotes import open_remote
from bisup.firmware_bridge.serial_bridge import SerialBridge
from bisup.firmware_bridge.virtual_device import SerialLink, VirtualDevice

pytestmark = pytest.mark.slow


class CountingRemote:
    """A real remote model that counts its calls (to see that duplicates never reach it)."""

    def __init__(self, remote):
        self.remote, self.calls, self.name = remote, 0, remote.name

    def predict(self, x):
        self.calls += 1
        return self.remote.predict(x)


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return Bundle.load(bundle_dir)


@pytest.fixture(scope="module")
def remote(digits_example):
    return CountingRemote(open_remote(digits_example["model"]))


def _handler(bundle, remote, log=None):
    return RequestHandler(Relay(remote, bundle.remote_supervisor, bundle.quantization), bundle, RelayLog(log))


def _infer(seq, n=64, boot=1):
    return p.encode(p.Infer(seq, 3, -40, bytes(range(n)), boot=boot))


def test_duplicates_are_answered_from_the_cache(bundle, remote, tmp_path):
    handler = _handler(bundle, remote, tmp_path / "relay.jsonl")
    before = remote.calls
    first, again = handler.handle("d1", _infer(5)), handler.handle("d1", _infer(5))
    assert first == again and remote.calls == before + 1 and handler.counts["duplicate"] == 1
    other_device = handler.handle("d2", _infer(5))
    assert remote.calls == before + 2 and isinstance(p.decode(other_device), p.AnswerMsg)
    handler.log.close()
    entry = json.loads((tmp_path / "relay.jsonl").read_text().splitlines()[0])
    assert {"time", "device", "seq", "local_label", "local_confidence", "remote_label", "remote_confidence",
            "decision", "latency_ms"} <= set(entry)


def test_a_rebooted_device_never_gets_another_inputs_answer(bundle, remote, digits_example):
    """Sequence numbers restart at 1 after a reboot. The cache is keyed by boot id and payload digest,
    so only a true retry (same boot, seq and input) is served from it."""
    x, y = np.load(digits_example["test"]).values()
    two = [int(np.flatnonzero(y == label)[0]) for label in (0, 7)]
    x_q = bundle.local_model().run(x[two])[0]
    handler = _handler(bundle, remote)
    ask = lambda boot, row: p.decode(handler.handle("d1", p.encode(p.Infer(1, 3, -40, x_q[row].tobytes(),  # noqa: E731
                                                                          boot=boot))))
    before = remote.calls
    first, rebooted, same_boot_new_input, retry = ask(0xA, 0), ask(0xB, 1), ask(0xA, 1), ask(0xB, 1)
    assert (first.label, rebooted.label, same_boot_new_input.label) == (0, 7, 7)
    assert (first.boot, rebooted.boot) == (0xA, 0xB)  # every answer names the boot it is for
    assert retry == rebooted and remote.calls == before + 3 and handler.counts["duplicate"] == 1


def test_bad_requests_get_error_frames(bundle, remote):
    handler = _handler(bundle, remote)
    wrong_size = p.decode(handler.handle("d", _infer(6, n=10)))
    assert wrong_size == p.ErrorMsg(6, p.ErrorCode.BAD_TENSOR, bundle.input_elements, boot=1)
    wrong_version = p.decode(handler.handle("d", b"\x03" + _infer(7)[1:]))
    assert wrong_version == p.ErrorMsg(7, p.ErrorCode.BAD_VERSION, p.VERSION)
    assert handler.counts["error_bad_tensor"] == 1 and handler.counts["error_bad_version"] == 1


def test_hello_and_ping(bundle, remote):
    handler = _handler(bundle, remote)
    hello = p.decode(handler.handle("d", p.encode(p.Hello(1, (1, 0, 0), bytes(32), "dev"))))
    assert isinstance(hello, p.Hello) and hello.model_hash == bundle.model_hash
    assert p.decode(handler.handle("d", p.encode(p.Ping(9, boot=4)))) == p.Pong(9, boot=4)


def test_remote_failure_falls_back(bundle, tmp_path):
    import keras

    wide = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    wide.save(tmp_path / "wide.keras")
    handler = _handler(bundle, open_remote(tmp_path / "wide.keras"))
    answer = p.decode(handler.handle("d", _infer(3)))
    assert answer.source is p.Source.FALLBACK and answer.label == 3 and not answer.rejected
    assert handler.counts["remote_unavailable"] == 1


def test_line_noise_loses_no_request(bundle, remote, digits_example):
    """Every input is relayed (threshold 128) through a link that flips and drops bytes."""
    local = LocalModel(bundle.path / "model.tflite")
    x, y = np.load(digits_example["test"]).values()
    x, y = x[:60], y[:60]
    handler = _handler(bundle, remote)
    stop = threading.Event()
    with NoisyProxy(flip=0.002, drop=0.002, seed=3) as proxy:
        bridge = threading.Thread(target=SerialBridge(proxy.path_b, handler).run, args=(stop,), daemon=True)
        bridge.start()
        with serial.serial_for_url(proxy.path_a, timeout=0.02) as port:
            device = VirtualDevice(SerialLink(port), local, threshold_int8=128, timeout_s=0.15, retries=8)
            answers = device.run(x)
        stop.set()
        bridge.join(timeout=5)
    assert len(answers) == len(x)
    assert all(a.source in (p.Source.REMOTE, p.Source.FALLBACK) for a in answers)
    assert device.stats.requests == len(x) and device.stats.answered + (device.stats.fallback
                                                                         - sum(a.rejected for a in answers)) >= len(x)
    assert proxy.flipped + proxy.dropped > 0 and device.stats.resends > 0  # the noise really hit
    assert handler.counts["duplicate"] + handler.counts["error_bad_crc"] + handler.counts["error_bad_cobs"] > 0
    remote_labels = open_remote(digits_example["model"]).predict(x).argmax(axis=1)
    for answer, expected in zip(answers, remote_labels, strict=True):
        if answer.source is p.Source.REMOTE:
            assert answer.label == expected


def test_bridge_reopens_after_unplug(bundle, remote):
    """socket:// link: the peer hangs up once; the bridge reconnects and keeps serving."""
    server = socket.create_server(("127.0.0.1", 0))
    url = f"socket://127.0.0.1:{server.getsockname()[1]}"
    stop = threading.Event()
    bridge = SerialBridge(url, _handler(bundle, remote))
    thread = threading.Thread(target=bridge.run, args=(stop,), daemon=True)
    thread.start()
    pongs = []
    try:
        for seq in (1, 2):
            conn, _ = server.accept()
            conn.settimeout(0.2)
            reader, replies = framing.FrameReader(), []
            deadline = time.monotonic() + 10
            # resend as a device does: pyserial drops input that arrives while it opens the port
            while not replies and time.monotonic() < deadline:
                conn.sendall(framing.encode_frame(p.encode(p.Ping(seq))))
                with contextlib.suppress(TimeoutError):
                    replies = reader.feed(conn.recv(64))
            pongs.append(p.decode(replies[0]))
            conn.close()  # unplug
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()
    assert pongs == [p.Pong(1), p.Pong(2)] and bridge.reopens >= 1


def test_bridge_and_device_commands(bundle_dir, digits_example, tmp_path):
    # the test bundle's remote is the local model itself, so calibration relays nothing; raise the
    # threshold in a copy so that the less confident inputs go over the link
    strict = tmp_path / "bundle"
    shutil.copytree(bundle_dir, strict)
    thresholds = json.loads((strict / "thresholds.json").read_text())
    thresholds["local"]["threshold_int8"] = 120
    (strict / "thresholds.json").write_text(json.dumps(thresholds))
    bundle_dir, log = strict, tmp_path / "relay.jsonl"
    x, y = np.load(digits_example["test"]).values()
    reversed_set = tmp_path / "reversed.npz"
    np.savez(reversed_set, x=x[::-1], y=y[::-1])
    runs = []
    with NoisyProxy() as proxy:
        bridge = subprocess.Popen([sys.executable, "-m", "bisup.cli", "bridge", "--serial", proxy.path_b,
                                   "--remote", str(digits_example["model"]), "--bundle", str(bundle_dir),
                                   "--json-log", str(log)], stderr=subprocess.PIPE, text=True)
        said = StderrLines(bridge)
        said.wait_for("serving")  # it loads the remote first: 10-40 s on a busy machine
        try:  # two boots of one device, on other orders of the data: seqs restart at 1 in the second
            for data in (digits_example["test"], reversed_set):
                runs.append(CliRunner().invoke(main, ["device", "--serial", proxy.path_a, "--bundle",
                                                      str(bundle_dir), "--data", str(data), "--json",
                                                      "--timeout-ms", "3000"]))
        finally:
            bridge.send_signal(signal.SIGINT)
            bridge.wait(timeout=60)
            stderr = said.text()
    assert all(run.exit_code == 0 for run in runs), [run.stderr for run in runs]
    summary, second = (json.loads(run.stdout) for run in runs)
    assert summary["inputs"] == 360 and summary["requests"] == summary["answered"] > 0
    assert summary["local"] + summary["requests"] == 360 and summary["accuracy"] > 0.9
    assert second["accuracy"] == summary["accuracy"]  # before boot ids: 0.880 instead of 0.9805
    assert len(log.read_text().splitlines()) == summary["requests"] + second["requests"]
    counters = json.loads(stderr.strip().splitlines()[-1])  # the bridge prints its counters on exit
    assert counters["remote"] + counters.get("fallback-rejected", 0) == 2 * summary["requests"]
    assert counters.get("duplicate", 0) == 0


def test_bridge_port_that_does_not_exist(bundle_dir, digits_example):
    result = CliRunner().invoke(main, ["bridge", "--serial", "/dev/bisup-no-such-port", "--remote",
                                       str(digits_example["model"]), "--bundle", str(bundle_dir)])
    assert "cannot open serial port /dev/bisup-no-such-port" in error_line(result)


def test_device_without_a_bundle(tmp_path, digits_example):
    result = CliRunner().invoke(main, ["device", "--serial", "loop://", "--bundle", str(tmp_path), "--data",
                                       str(digits_example["test"])])
    assert "has no model.tflite" in error_line(result)


def test_device_hello_timeout(bundle_dir, digits_example):
    """A link where nobody answers: a clear message, not a hang."""
    server = socket.create_server(("127.0.0.1", 0))
    try:
        result = CliRunner().invoke(main, ["device", "--serial", f"socket://127.0.0.1:{server.getsockname()[1]}",
                                           "--bundle", str(bundle_dir), "--data", str(digits_example["test"]),
                                           "--hello-timeout", "1"])
    finally:
        server.close()
    assert "no HELLO from the bridge within 1 s" in error_line(result)


def test_bridge_takes_pyserial_spy_urls(bundle, remote, tmp_path):
    """spy:// wraps the pty and writes a hex trace of both directions to a file."""
    from bisup.firmware_bridge.ptylink import pty_pair

    port, path, slave = pty_pair()
    trace = tmp_path / "trace.txt"
    stop = threading.Event()
    thread = threading.Thread(target=SerialBridge(f"spy://{path}?file={trace}", _handler(bundle, remote)).run,
                              args=(stop,), daemon=True)
    thread.start()
    try:
        reader, reply = framing.FrameReader(), []
        deadline = time.monotonic() + 10
        while not reply and time.monotonic() < deadline:  # until the bridge has opened the port
            port.write(framing.encode_frame(p.encode(p.Ping(77))))
            reply = reader.feed(port.read(64))
    finally:
        stop.set()
        thread.join(timeout=5)
        port.close()
        os.close(slave)
    assert p.decode(reply[0]) == p.Pong(77)
    assert "TX" in trace.read_text() and "RX" in trace.read_text()


def test_bridge_that_fails_at_start_prints_only_its_error(bundle_dir, digits_example):
    result = CliRunner().invoke(main, ["bridge", "--serial", "/dev/bisup-no-such-port", "--remote",
                                       str(digits_example["model"]), "--bundle", str(bundle_dir)])
    assert result.exit_code == 1 and "{}" not in result.stderr  # no counters: it never served


def test_remote_deadline_must_leave_the_device_time(bundle_dir, digits_example):
    result = CliRunner().invoke(main, ["bridge", "--serial", "loop://", "--remote", str(digits_example["model"]),
                                       "--bundle", str(bundle_dir), "--deadline-ms", "2000"])
    assert "--deadline-ms 2000 ms is not shorter than the devices' wait of 2000 ms" in error_line(result)


def test_a_model_server_that_is_down_at_start_gets_fallbacks(bundle_dir, digits_example, tmp_path):
    """The README promises `fallback` answers when the remote fails; that holds from the first request."""
    strict = tmp_path / "bundle"
    shutil.copytree(bundle_dir, strict)
    thresholds = json.loads((strict / "thresholds.json").read_text())
    thresholds["local"]["threshold_int8"] = 120  # relay most inputs
    (strict / "thresholds.json").write_text(json.dumps(thresholds))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        down = f"oip+http://127.0.0.1:{probe.getsockname()[1]}/v2/models/digits"  # nothing listens there
    with NoisyProxy() as proxy:
        bridge = subprocess.Popen([sys.executable, "-m", "bisup.cli", "bridge", "--serial", proxy.path_b,
                                   "--remote", down, "--bundle", str(strict)], stderr=subprocess.PIPE, text=True)
        said = StderrLines(bridge)
        said.wait_for("serving")
        try:
            result = CliRunner().invoke(main, ["device", "--serial", proxy.path_a, "--bundle", str(strict), "--data",
                                               str(digits_example["test"]), "--json"])
        finally:
            bridge.send_signal(signal.SIGINT)
            bridge.wait(timeout=60)
            stderr = said.text()
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["requests"] == summary["answered"] == summary["fallback"] > 0 and summary["remote"] == 0
    assert "answering `fallback` until it responds" in stderr
    assert json.loads(stderr.strip().splitlines()[-1])["remote_unavailable"] == summary["requests"]


def test_serial_bridge_on_a_pty_needs_no_board_and_no_socat(bundle_dir, digits_example, tmp_path):
    """The README's walk-through: `bisup bridge --serial pty` prints the device end; two device runs (two
    boots) in a row use it, as a board that resets would."""
    x, y = np.load(digits_example["test"]).values()
    small = tmp_path / "small.npz"
    np.savez(small, x=x[:60], y=y[:60])
    bridge = subprocess.Popen([sys.executable, "-m", "bisup.cli", "bridge", "--serial", "pty", "--remote",
                               str(digits_example["model"]), "--bundle", str(bundle_dir)], stderr=subprocess.PIPE,
                              text=True)
    try:
        said = StderrLines(bridge)
        line, _ = said.wait_for("device end of the pty: ")
        path = line.split("device end of the pty: ")[1].split(" ")[0]
        runs = [CliRunner().invoke(main, ["device", "--serial", path, "--bundle", str(bundle_dir), "--data",
                                          str(small), "--json"]) for _ in range(2)]
    finally:
        bridge.send_signal(signal.SIGINT)
        bridge.wait(timeout=60)
    assert all(run.exit_code == 0 for run in runs), [run.stderr for run in runs]
    first, second = (json.loads(run.stdout) for run in runs)
    assert first["inputs"] == 60 and first["accuracy"] == second["accuracy"] > 0.9


def test_a_device_writing_to_a_dead_pty_loses_bytes_instead_of_hanging():
    """Nobody reads the bridge end (the bridge died): a UART would drop the bytes; the pty must not block forever
    once its buffer is full. 1 MB is far more than a pty buffers."""
    import os

    from bisup.firmware_bridge.serial_bridge import pty_pair

    port, _, slave = pty_pair()
    try:
        start = time.monotonic()
        written = port.write(bytes(1 << 20))
        assert 0 < written < 1 << 20
        assert time.monotonic() - start < 30
    finally:
        port.close()
        os.close(slave)
