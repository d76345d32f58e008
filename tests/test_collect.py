"""`bisup bridge --collect`: relayed inputs kept once each, in shards that a crash never tears."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from links import StderrLines

from bisup.cli import main
from bisup.firmware_bridge import collect
from bisup.firmware_bridge.collect import CollectError, Collector, read_collected
from bisup.firmware_bridge.protocol import Source
from bisup.firmware_bridge.relay import Answer, InferRequest, InputQuantization

QUANT = InputQuantization(1 / 255, -128, (8, 8, 1))


def _relay(collector: Collector, i: int, device: str = "d1", rejected: bool = False, stage: int = 0) -> None:
    x = np.full(64, i % 256 - 128, np.int8)
    x[0] = i // 256
    probs = np.eye(10, dtype=np.float32)[i % 10]
    collector.relayed(device, InferRequest(device, i, x, (i + 1) % 10, -30, stage),
                      Answer(i, i % 10, 0.9, Source.FALLBACK if rejected else Source.REMOTE, rejected, i % 10, probs))


def test_records_come_back_once_each_with_what_the_remote_said(tmp_path):
    c = Collector(tmp_path, QUANT, "ab" * 32, print, shard_records=4)
    for i in range(10):
        _relay(c, i, rejected=i == 3)
    _relay(c, 5)  # the same input again: kept once
    _relay(c, 11, stage=2)  # an activation, not an input
    c.close()
    got = read_collected(tmp_path)
    assert len(got) == 10 and c.duplicates == 1 and c.written_shards == 3
    assert list(got.remote_label) == [i % 10 for i in range(10)]
    assert list(got.accepted) == [i != 3 for i in range(10)]
    assert got.probabilities.shape == (10, 10) and got.inputs().shape == (10, 8, 8, 1)
    assert got.model_hash == "ab" * 32 and set(got.device) == {"d1"}
    restarted = Collector(tmp_path, QUANT, "ab" * 32, print)  # knows what is there already
    _relay(restarted, 2)
    assert restarted.duplicates == 1


def test_what_waits_is_written_within_the_flush_interval_without_another_relay(tmp_path):
    c = Collector(tmp_path, QUANT, "00", print, flush_s=0.2)
    _relay(c, 0)
    deadline = time.monotonic() + 5
    while not list(tmp_path.glob("shard-*.npz")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(read_collected(tmp_path)) == 1
    c.close()


def test_a_folder_that_cannot_be_written_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CollectError, match=f"collect folder {blocker / 'sub'} is not writable"):
        Collector(blocker / "sub", QUANT, "00", print)


def test_a_full_disk_keeps_the_buffer_and_loses_nothing_written(tmp_path, monkeypatch):
    """ENOSPC is injected (mocked): no small filesystem can be mounted on these machines."""
    logged = []
    c = Collector(tmp_path, QUANT, "00", logged.append, shard_records=2)
    _relay(c, 0)
    _relay(c, 1)  # first shard written
    real = collect._write_shard

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(collect, "_write_shard", full)
    _relay(c, 2)
    _relay(c, 3)
    assert any("No space left on device" in line and "keeping 2 records" in line for line in logged)
    assert len(read_collected(tmp_path)) == 2 and not list(tmp_path.glob(".tmp-*"))
    monkeypatch.setattr(collect, "_write_shard", real)
    _relay(c, 4)
    c.close()
    assert len(read_collected(tmp_path)) == 5


def test_the_cap_stops_collecting_and_says_so_once(tmp_path):
    logged = []
    c = Collector(tmp_path, QUANT, "00", logged.append, shard_records=1, max_bytes=1)
    for i in range(5):
        _relay(c, i)
    c.close()
    assert len(read_collected(tmp_path)) == 1
    assert sum("its cap of 1 B" in line for line in logged) == 1


def test_a_corrupt_shard_is_named(tmp_path):
    c = Collector(tmp_path, QUANT, "00", print, shard_records=1)
    _relay(c, 0)
    _relay(c, 1)
    shard = sorted(tmp_path.glob("shard-*.npz"))[1]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CollectError, match=f"shard {shard} is corrupt.*move it aside"):
        read_collected(tmp_path)
    logged = []
    Collector(tmp_path, QUANT, "00", logged.append)  # a bridge still starts, and says which shard it skips
    assert any(str(shard) in line for line in logged)


@pytest.mark.slow
def test_killing_a_collecting_process_never_leaves_a_torn_shard(tmp_path):
    """SIGKILL a process that writes a shard every record: whatever is there reads back whole, and the next
    collector on the folder leaves no temporary file behind."""
    script = textwrap.dedent("""
        import sys
        sys.path.insert(0, "tests")  # the test module's sibling imports, as pytest's rootdir mode sets them
        from tests.test_collect import QUANT, _relay
        from bisup.firmware_bridge.collect import Collector
        c = Collector(sys.argv[1], QUANT, "00", print, shard_records=1)
        print("ready", flush=True)
        for i in range(100000):
            _relay(c, i)
    """)
    for round_ in range(3):
        folder = tmp_path / f"run{round_}"
        process = subprocess.Popen([sys.executable, "-c", script, str(folder)], stdout=subprocess.PIPE, text=True,
                                   cwd=str(Path(__file__).parents[1]))
        assert process.stdout.readline().strip() == "ready"
        time.sleep(0.5 + 0.3 * round_)
        process.send_signal(signal.SIGKILL)
        process.wait()
        got = read_collected(folder)  # raises on a torn shard
        assert len(got) > 0 and len(np.unique(got.x_int8, axis=0)) == len(got)
        Collector(folder, QUANT, "00", print).close()  # clears what the killed flush left, if it left anything
        assert not list(folder.glob(".tmp-*")) and len(read_collected(folder)) >= len(got)


@pytest.mark.slow
def test_bridge_collect_over_a_pty(bundle_dir, digits_example, tmp_path):
    """`bisup bridge --serial pty --collect DIR`: every relayed input of a device run is in the shards."""
    x, y = np.load(digits_example["test"]).values()
    data = tmp_path / "data.npz"
    np.savez(data, x=x[:120], y=y[:120])
    strict = tmp_path / "strict"  # relay everything, so there is something to collect
    strict.mkdir()
    for name in ("model.tflite", "report.json"):
        (strict / name).write_bytes((bundle_dir / name).read_bytes())
    thresholds = json.loads((bundle_dir / "thresholds.json").read_text())
    thresholds["local"]["threshold_int8"] = 128
    (strict / "thresholds.json").write_text(json.dumps(thresholds))
    out = tmp_path / "collected"
    bridge = subprocess.Popen([sys.executable, "-m", "bisup.cli", "bridge", "--serial", "pty", "--remote",
                               str(digits_example["model"]), "--bundle", str(strict), "--collect", str(out)],
                              stderr=subprocess.PIPE, text=True)
    try:
        line, before = StderrLines(bridge).wait_for("device end of the pty: ")
        assert any("loading the remote model" in said for said in before), "the long remote load is not announced"
        path = line.split("device end of the pty: ")[1].split(" ")[0]
        # A device that waits for every answer, so none is still queued at the bridge when the device is done and
        # the bridge is stopped (with the default 0.5 s x 4 attempts, a loaded bridge can lag behind the device).
        result = CliRunner().invoke(main, ["device", "--serial", path, "--bundle", str(strict), "--data", str(data),
                                           "--json", "--timeout-ms", "10000"])
    finally:
        bridge.send_signal(signal.SIGINT)
        bridge.wait(timeout=60)
    assert result.exit_code == 0, result.output
    got = read_collected(out)
    assert len(got) == len(np.unique(got.x_int8, axis=0)) == json.loads(result.stdout)["requests"] - _repeats(x[:120])
    assert got.accepted.mean() > 0.9


def _repeats(x: np.ndarray) -> int:
    return len(x) - len(np.unique(x.reshape(len(x), -1), axis=0))


@pytest.mark.slow
def test_bridge_start_up_problems_are_one_line_each(bundle_dir, digits_example, tmp_path):
    """An unwritable --collect folder and a --metrics-port in use stop `bisup bridge` before it serves."""
    from cli_errors import error_line

    from bisup.firmware_bridge.metrics import Metrics

    blocker = tmp_path / "file"
    blocker.write_text("")
    base = ["bridge", "--serial", "pty", "--remote", str(digits_example["model"]), "--bundle", str(bundle_dir)]
    unwritable = CliRunner().invoke(main, [*base, "--collect", str(blocker / "sub")])
    assert f"collect folder {blocker / 'sub'} is not writable" in error_line(unwritable)
    busy = Metrics().serve(0)
    try:
        in_use = CliRunner().invoke(main, [*base, "--metrics-port", str(busy.server_port)])
    finally:
        busy.shutdown()
        busy.server_close()
    assert f"metrics port {busy.server_port} on 127.0.0.1 is in use" in error_line(in_use)
