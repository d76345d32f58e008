"""Messages a user test found misleading: each now one clear line that names the input and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_errors import error_line
from click.testing import CliRunner
from links import StderrLines

from bisup import datasets
from bisup.cli import main


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_retrain_help_names_no_option_retrain_lacks():
    """retrain shares the risk-mode help with calibrate but has no --risk-procedure of its own."""
    retrain_help = _run("retrain", "--help").stdout
    assert "--risk-procedure" not in retrain_help
    assert "picked by the sample count" in " ".join(retrain_help.split())
    assert "see --risk-procedure" in " ".join(_run("calibrate", "--help").stdout.split())


def test_calibrate_help_prints_a_single_percent_sign():
    """click does not %-format help strings, so a doubled %% reached the screen as it was written."""
    calibrate_help = " ".join(_run("calibrate", "--help").stdout.split())
    assert "spends 20% of --data" in calibrate_help and "%%" not in calibrate_help


@pytest.mark.parametrize(("write", "kind"), [
    (lambda path: path.write_text("x0,x1,label\n0.1,0.2,1\n"), "(it is text, e.g. CSV)"),
    (lambda path: np.save(path.open("wb"), np.zeros((3, 2), np.float32)), "(it is a single .npy array)"),
])
def test_a_data_file_that_is_not_an_npz_never_suggests_unpickling(tmp_path, write, kind):
    """numpy reads a non-zip file as a pickle and suggests allow_pickle=, which would run the file's code."""
    data = tmp_path / "data.npz"
    write(data)
    with pytest.raises(datasets.DataError) as caught:
        datasets.load_npz(data)
    assert str(caught.value) == (f"data file {data} is not an .npz archive with arrays x (and y) {kind}; save one "
                                 "with np.savez(path, x=..., y=...)")
    assert "pickle" not in str(caught.value)


def test_an_npz_of_python_objects_never_suggests_unpickling(tmp_path):
    data = tmp_path / "objects.npz"
    np.savez(data, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(datasets.DataError, match="holds Python objects, not numeric arrays") as caught:
        datasets.load_npz(data)
    assert "pickle" not in str(caught.value)


def test_a_collected_shard_that_is_not_an_npz_never_suggests_unpickling(tmp_path):
    from bisup.firmware_bridge.collect import CollectError, read_collected

    (tmp_path / "shard-1-1-1.npz").write_text("not,an,archive\n")
    with pytest.raises(CollectError) as caught:
        read_collected(tmp_path)
    assert str(caught.value) == (f"shard {tmp_path / 'shard-1-1-1.npz'} is corrupt (not an .npz archive); move it "
                                 "aside to retrain on the others")


@pytest.mark.slow
def test_a_single_unit_sigmoid_model_is_named_with_the_dense2_fix(tmp_path):
    """A binary classifier with one sigmoid unit used to fail as 'labels span 0..1 but the model has 1 classes'."""
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.save(tmp_path / "binary.keras")
    np.savez(tmp_path / "calib.npz", x=np.zeros((120, 4), np.float32), y=np.arange(120) % 2)
    result = _run("export", tmp_path / "binary.keras", "--calib", tmp_path / "calib.npz", "--board", "esp32",
                  "--out", tmp_path / "out")
    assert error_line(result) == (
        f"Error: model {tmp_path / 'binary.keras'} has a single-unit (sigmoid) output, which bisup does not "
        "support: the supervisors need one score per class; give the model a Dense(2) output (softmax or logits) "
        "trained on labels 0 and 1")
    assert "1 classes" not in result.stderr


@pytest.mark.slow
def test_mqtts_without_the_ca_is_named_a_certificate_problem(secure_mosquitto):
    """The broker runs; only its certificate is not trusted. It used to end 'is it running?'."""
    from bisup.firmware_bridge.mqtt_link import Broker, DeviceLink, MqttError

    credentials = secure_mosquitto.endpoint("d1")
    untrusted = Broker.from_url(secure_mosquitto.url, "d1", credentials.password)  # mqtts:// but no --tls-ca
    with pytest.raises(MqttError) as caught:
        DeviceLink(untrusted, "d1", "v1", timeout_s=5)
    message = str(caught.value)
    assert message.startswith(f"TLS with the MQTT broker at {secure_mosquitto.url} failed (")
    assert message.endswith("): the broker's certificate is not signed by a CA this machine trusts: pass --tls-ca "
                            "CA.pem, the CA that signed it (`bisup broker --secure` prints its path)")
    assert "is it running" not in message


MISSING_PORT = ("cannot open serial port /dev/bisup-no-such-port: no such device; check the cable and the path, "
                "list ports with `python -m serial.tools.list_ports`")


def test_a_missing_serial_port_is_one_reason_and_a_fix_for_the_device():
    from bisup.firmware_bridge.serial_bridge import BridgeError
    from bisup.service.device import open_link

    with pytest.raises(BridgeError) as caught:
        open_link("/dev/bisup-no-such-port", None, "d1")
    assert str(caught.value) == MISSING_PORT  # pyserial's text said [Errno 2] twice and the path twice


def test_a_missing_serial_port_is_one_reason_and_a_fix_for_the_bridge():
    import threading

    from bisup.firmware_bridge.serial_bridge import BridgeError, SerialBridge

    with pytest.raises(BridgeError) as caught:
        SerialBridge("/dev/bisup-no-such-port", handler=None).run(threading.Event(), wait_for_port=False)
    assert str(caught.value) == f"{MISSING_PORT}; or pass --wait to wait until it appears"
    assert "Errno" not in str(caught.value)


def test_an_exits_folder_as_the_remote_of_a_single_exit_hil_says_what_remote_takes(tmp_path):
    """It used to reach TensorFlow, whose SavedModel loader complained about the folder in its own terms."""
    tails = tmp_path / "exits"
    tails.mkdir()
    for name in ("exits.keras", "tail0.keras", "tail1.keras"):
        (tails / name).write_bytes(b"PK")
    (tmp_path / "digits.bisup").write_bytes(b"a single-exit bundle")  # refused later; the remote is checked first
    np.savez(tmp_path / "test.npz", x=np.zeros((4, 8, 8, 1), np.float32), y=np.zeros(4, np.int64))
    result = _run("hil", "--emulate", "mps2-an386", "--bundle", tmp_path / "digits.bisup", "--data",
                  tmp_path / "test.npz", "--remote", tails)
    assert error_line(result) == (
        f"Error: remote model {tails} is a folder of exit tails (tail0.keras, tail1.keras), which serves a "
        "multi-exit bundle only; for this bundle --remote takes a .keras file, a SavedModel directory, a float "
        ".tflite file or a model server URL")
    assert "cannot be loaded" not in result.stderr  # the old message, with TensorFlow's text after it


PROBE = """
import json, sys
from pathlib import Path

from click.testing import CliRunner
from bisup.cli import main
result = CliRunner().invoke(main, sys.argv[1:])
heavy = sorted(m for m in ("tensorflow", "keras") if m in sys.modules)
print(json.dumps({"exit_code": result.exit_code, "stderr": result.stderr, "heavy": heavy}))
"""


@pytest.fixture
def inputs(tmp_path):
    """Files that exist (their contents are never reached) and the data files the checks look into."""
    for name in ("model.keras", "model.tflite", "remote.keras", "digits.bisup"):
        (tmp_path / name).write_bytes(b"placeholder")
    np.savez(tmp_path / "data.npz", x=np.zeros((4, 8, 8, 1), np.float32), y=np.zeros(4, np.int64))
    np.savez(tmp_path / "no_x.npz", inputs=np.zeros(4, np.float32))
    (tmp_path / "data.csv").write_text("x0,x1,label\n0.1,0.2,1\n")
    return tmp_path


@pytest.mark.parametrize(("args", "message"), [
    (["export", "{t}/missing.keras", "--calib", "{t}/data.npz", "--board", "esp32", "--out", "{t}/o"],
     "model {t}/missing.keras does not exist"),
    (["export", "{t}/model.keras", "--calib", "{t}/data.csv", "--board", "esp32", "--out", "{t}/o"],
     "data file {t}/data.csv is not an .npz archive with arrays x (and y) (it is text, e.g. CSV)"),
    (["export", "{t}/model.tflite", "--calib", "{t}/data.npz", "--board", "esp32", "--out", "{t}/o"],
     "model {t}/model.tflite must be a .keras file or a SavedModel directory"),
    (["calibrate", "--local", "{t}/missing.tflite", "--remote", "{t}/remote.keras", "--data", "{t}/data.npz",
      "--max-remote-fraction", "0.3", "--out", "{t}/o"], "local model {t}/missing.tflite does not exist"),
    (["calibrate", "--local", "{t}/model.tflite", "--remote", "{t}/remote.keras", "--data", "{t}/no_x.npz",
      "--max-remote-fraction", "0.3", "--out", "{t}/o"], "{t}/no_x.npz has no array 'x' (found ['inputs'])"),
    (["calibrate", "--local", "{t}/model.tflite", "--remote", "{t}/missing.keras", "--data", "{t}/data.npz",
      "--max-remote-fraction", "0.3", "--out", "{t}/o"], "remote model {t}/missing.keras does not exist"),
    (["hil", "--emulate", "mps2-an386", "--bundle", "{t}/digits.bisup", "--data", "{t}/missing.npz", "--remote",
      "{t}/remote.keras"], "data file {t}/missing.npz does not exist"),
    (["retrain", "--model", "{t}/model.keras", "--train", "{t}/data.npz", "--collected", "{t}/relayed", "--data",
      "{t}/data.npz", "--remote", "{t}/remote.keras", "--target-accuracy", "0.9", "--out", "{t}/o"],
     "collect folder {t}/relayed does not exist; run `bisup bridge --collect {t}/relayed` first"),
    (["retrain", "--model", "{t}/model.keras", "--train", "{t}/data.npz", "--collected", "{t}", "--data",
      "{t}/data.npz", "--remote", "{t}/remote.keras", "--test", "{t}/data.csv", "--target-accuracy", "0.9",
      "--out", "{t}/o"], "data file {t}/data.csv is not an .npz archive"),
    (["device", "--serial", "loop://", "--bundle", "{t}/missing.bisup", "--data", "{t}/data.npz"],
     "bundle {t}/missing.bisup does not exist"),
    (["device", "--serial", "loop://", "--bundle", "{t}/digits.bisup", "--data", "{t}/data.csv"],
     "data file {t}/data.csv is not an .npz archive"),
])
def test_file_errors_come_before_tensorflow_is_imported(inputs, args, message):
    """A bad path or data file is named at once, not after 15-30 s of importing TensorFlow and loading models:
    the command runs in a fresh interpreter, which must end without tensorflow or keras in sys.modules."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", PROBE, *(a.format(t=inputs) for a in args)], capture_output=True,
                          text=True, env=env, check=True)
    outcome = json.loads(done.stdout.splitlines()[-1])
    assert outcome["exit_code"] != 0
    errors = [line for line in outcome["stderr"].splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message.format(t=inputs) in errors[0], outcome["stderr"]
    assert outcome["heavy"] == []


def test_a_tflite_model_given_to_flash_says_to_bundle_it_first(tmp_path):
    """It used to say the .tflite was 'truncated or not a bisup archive'."""
    model = tmp_path / "model.tflite"
    model.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    result = _run("flash", model, "--board", "nrf52840", "--dry-run")
    assert error_line(result) == (
        f"Error: {model} is a TFLite model, not a bundle: run `bisup bundle BUILD_DIR --out NAME.bisup` first and "
        "give NAME.bisup (BUILD_DIR: the folder with model.tflite and thresholds.json that `bisup export` and "
        "`bisup calibrate` wrote)")


def test_a_hello_timeout_under_emulation_blames_host_load_not_the_port(monkeypatch):
    """QEMU that greets too late on a busy machine used to be told to check the port, baud rate and flashing.

    Mocked: the firmware build (arm-none-eabi-gcc), QEMU itself and the host-side TFLM run; the emulated board
    is a loop:// port that never says HELLO, which is what a QEMU too slow for the timeout looks like."""
    import contextlib
    from pathlib import Path
    from types import SimpleNamespace

    from bisup.hil import runner as hil
    from bisup.hil import target

    monkeypatch.setattr(hil.calibrate, "outcomes", lambda *args: (None, np.zeros((1, 4), np.int8)))
    monkeypatch.setattr(hil, "build_firmware", lambda *args, **kwargs: Path("firmware.elf"))

    def never_greets(machine, elf):
        with target.open_port("loop://") as port:
            yield target.BoardLink(port, emulated=True)

    monkeypatch.setattr(hil, "boot", contextlib.contextmanager(never_greets))
    bundle = SimpleNamespace(local_model=lambda: None, model_hash=bytes(32),
                             remote_supervisor=SimpleNamespace(kind="max-softmax"))
    handler = SimpleNamespace(relay=SimpleNamespace(remote=None))
    with pytest.raises(target.HilError) as caught:
        hil.run(bundle, np.zeros((1, 4), np.float32), np.zeros(1, np.int64), handler, emulate="mps2-an386",
                timeout_s=0.2)
    assert str(caught.value) == ("the emulated board did not send HELLO within 0.2 s of its own time (200 M "
                                 "instructions); its firmware or model image is wrong, or it needs a larger --timeout")
    with target.serial_link("loop://") as link, pytest.raises(target.HilError) as real:  # a real port keeps its advice
        target.HilSession(link, None).handshake(bytes(32), 0.2)
    assert str(real.value) == ("the board did not send HELLO within 0.2 s; check the port, the baud rate and that "
                               "the bisup firmware is flashed")


def _junit_error(path) -> str:
    """The one test case of a JUnit file for a failed run, as its error message."""
    import xml.etree.ElementTree as ET

    suite = ET.parse(path).getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "1" and suite.get("errors") == "1"
    (case,) = suite.findall("testcase")
    return case.find("error").get("message")


def test_a_hil_run_that_fails_before_its_checks_still_writes_the_junit_file(tmp_path):
    np.savez(tmp_path / "test.npz", x=np.zeros((4, 8, 8, 1), np.float32), y=np.zeros(4, np.int64))
    (tmp_path / "digits.bisup").write_bytes(b"not an archive")
    (tmp_path / "remote.keras").write_bytes(b"placeholder")
    result = _run("hil", "--port", "/dev/bisup-no-such-port", "--bundle", tmp_path / "digits.bisup", "--data",
                  tmp_path / "test.npz", "--remote", tmp_path / "remote.keras", "--junit", tmp_path / "hil.xml")
    assert error_line(result) == f"Error: {_junit_error(tmp_path / 'hil.xml')}"
    assert "digits.bisup is truncated or not a bisup archive" in error_line(result)


@pytest.mark.slow
def test_a_board_that_cannot_be_reached_still_gets_a_junit_file(archive, digits_example, tmp_path):
    """The HilError of a real run (the board's port is missing) is what CI sees in the JUnit file."""
    result = _run("hil", "--port", "/dev/bisup-no-such-port", "--bundle", archive, "--data", digits_example["test"],
                  "--remote", digits_example["model"], "--junit", tmp_path / "hil.xml")
    assert "cannot open serial port /dev/bisup-no-such-port: no such device" in error_line(result)
    assert error_line(result) == f"Error: {_junit_error(tmp_path / 'hil.xml')}"


def _thresholds(remote_threshold: float, remote_fraction: float):
    from bisup.converters.artefacts import LocalThreshold, RemoteThreshold, Thresholds

    achieved = {"accuracy": 0.9, "remote_fraction": remote_fraction, "rejected_fraction": 0.0,
                "accepted_accuracy": 0.9, "cost_saved": 1 - remote_fraction}
    return Thresholds(LocalThreshold("max-softmax", -128, 0.0, 1 / 256, -128),
                      RemoteThreshold("max-softmax", remote_threshold, max_reject=0.005), {"mode": "budget"}, None,
                      achieved, {"local_only_accuracy": 0.9, "remote_only_accuracy": 0.95})


@pytest.mark.parametrize(("remote_threshold", "remote_fraction", "shown"), [
    (-1.0, 0.0, "remote threshold          none (no input is relayed)"),
    (-1.0, 0.2, "remote threshold          none: every remote answer is accepted (max-softmax)"),
    (0.4321, 0.2, "remote threshold          0.4321 (max-softmax)"),
])
def test_calibrate_prints_no_remote_threshold_when_nothing_is_relayed(remote_threshold, remote_fraction, shown):
    """-1 is what thresholds.json stores for 'accept every score' (JSON has no -inf); printed it read as a cut."""
    from bisup.cli.tables import calibration_table

    table = calibration_table(_thresholds(remote_threshold, remote_fraction))
    assert f"  {shown}\n" in table and "-1.0000" not in table
    assert _thresholds(remote_threshold, remote_fraction).to_json()["remote"]["threshold"] == remote_threshold


def test_the_device_summary_is_a_table_with_shares_and_rounded_means():
    from bisup.cli.tables import device_table as table

    summary = {"requests": 110, "answered": 110, "remote": 105, "fallback": 5, "rejected": 3, "resends": 4,
               "bad_frames": 0, "inputs": 360, "local": 250, "accuracy": 0.972222222,
               "exits": {"exit1": 200, "exit2": 50, "remote": 110}, "mean_device_macs": 12345.678,
               "mean_bytes_sent": 21.3333333}
    assert table(summary).splitlines() == [
        "  inputs                  360",
        "  answered on the device  250 (69.4 %)",
        "  relayed to the bridge   110 (30.6 %), 4 resends",
        "  remote answers used     105",
        "  own label kept          5 of the relayed (3 rejected by the remote supervisor)",
        "  bad frames              0",
        "  exits                   exit1 200, exit2 50, remote 110",
        "  device MACs per input   12,346 (mean)",
        "  bytes sent per input    21.3 (mean)",
        "  accuracy                97.22 %",
    ]


@pytest.mark.slow
def test_bisup_device_prints_the_table_and_json_stays_json(bundle_dir, digits_example, tmp_path):
    """It used to end with a Python dict with unrounded floats."""
    import json
    import signal
    import subprocess
    import sys

    x, y = np.load(digits_example["test"]).values()
    np.savez(tmp_path / "small.npz", x=x[:40], y=y[:40])
    bridge = subprocess.Popen([sys.executable, "-m", "bisup.cli", "bridge", "--serial", "pty", "--remote",
                               str(digits_example["model"]), "--bundle", str(bundle_dir)], stderr=subprocess.PIPE,
                              text=True)
    try:
        line, _ = StderrLines(bridge).wait_for("device end of the pty: ")
        path = line.split("device end of the pty: ")[1].split(" ")[0]
        runs = [_run("device", "--serial", path, "--bundle", bundle_dir, "--data", tmp_path / "small.npz", *json_flag)
                for json_flag in ((), ("--json",))]
    finally:
        bridge.send_signal(signal.SIGINT)
        bridge.wait(timeout=60)
    table, as_json = runs
    assert table.exit_code == 0 and as_json.exit_code == 0, table.stderr + as_json.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == "  inputs                  40" and lines[-1].startswith("  accuracy                ")
    assert lines[-1].endswith(" %") and "{" not in table.stdout and "requests:" not in table.stdout
    assert json.loads(as_json.stdout)["inputs"] == 40


@pytest.mark.parametrize("board", ["esp32s3", "nrf52840"])
def test_the_manual_flash_command_names_files_that_exist(tmp_path, board):
    """The dry run's 'same as' command named model.bin, which only --out writes (and in its folder)."""
    import shlex

    from bisup.boards import load_board
    from bisup.cli.tables import flash_table as table
    from bisup.flashing.flash import FlashPlan, Write

    plan = FlashPlan(load_board(board), (Write(0x8000, b"table", "partition table", "partition-table.bin"),
                                         Write(0x310000, b"image", "model image", "model.bin")))
    without_out = table(plan, "/dev/ttyUSB0").splitlines()[-1]
    assert without_out.startswith("by hand: save the images with --out DIR, then: ")
    assert " model.bin" not in without_out and " DIR/model.bin" in without_out
    plan.save(tmp_path / "flash")
    with_out = table(plan, "/dev/ttyUSB0", tmp_path / "flash").splitlines()[-1]
    assert with_out.startswith("same as: ")
    named = [word for word in shlex.split(with_out) if word.endswith(".bin")]
    assert named and all((tmp_path / "flash" / Path(word).name).is_file() and Path(word).is_absolute()
                         for word in named)
