"""`bisup hil --emulate`: the digits test split through QEMU and the serial bridge.

The firmware is built with arm-none-eabi-gcc from the C device library and the bundle's model as
generated C, and runs on QEMU's Cortex-M4 (and M7, M33, M55): the board computes every output itself,
and the report compares them with the host TFLM interpreter byte for byte.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from cli_errors import error_line
from click.testing import CliRunner

from bisup.calibration import single as calibrate
from bisup.cli import main
from bisup.export import bundles
from bisup.firmware_bridge.remotes import open_remote

pytestmark = [pytest.mark.slow, pytest.mark.toolchain,
              pytest.mark.skipif(not (shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc")),
                                 reason="qemu-system-arm and arm-none-eabi-gcc are needed (CI installs them)")]


@pytest.fixture(scope="module")
def hil_setup(demo_run, tmp_path_factory):
    """The demo's export, calibrated on the test split itself, packed as a .bisup bundle."""
    result, _, cache = demo_run
    out = tmp_path_factory.mktemp("hil")
    for name in ("model.tflite", "report.json", "test.npz"):
        shutil.copy(f"{result.out_dir}/{name}", out / name)
    remote_path = cache / "digits-v1-seed0" / "remote.keras"
    calibration = calibrate.calibrate(out / "model.tflite", open_remote(remote_path), out / "test.npz",
                                      calibrate.Mode("budget", 0.3))
    calibrate.write(calibration, out)
    bundles.build(out, out / "digits.bisup")
    return out, remote_path, calibration.thresholds().achieved


@pytest.mark.parametrize("machine", ["mps2-an386", "mps2-an500", "mps2-an505", "mps3-an547"])
def test_each_emulated_board_runs_the_model_itself(hil_setup, machine, tmp_path):
    """Cortex-M4, M7, M33 and M55: the generated model on the emulated core agrees with host TFLM on every
    input, and the device reports what one inference costs in instructions."""
    out, remote_path, _ = hil_setup
    result = CliRunner().invoke(main, ["hil", "--emulate", machine, "--bundle", str(out / "digits.bisup"), "--data",
                                       str(out / "test.npz"), "--remote", str(remote_path), "--report",
                                       str(tmp_path / "hil.json")])
    assert result.exit_code == 0, result.stderr + result.stdout
    report = json.loads((tmp_path / "hil.json").read_text())
    assert report["complete"] and report["device_outputs_equal_oracle"] == 1.0 and report["offline_agreement"] == 1.0
    cost = report["device_inference"]
    assert 10_000 < cost["instructions_p50"] < 5_000_000 and cost["macs"] > 20_000
    assert "instructions (p50" in result.stdout
    layers = report["device_layers"]  # measured per layer, and they add up to the whole inference
    assert [layer["op"] for layer in layers][:3] == ["CONV_2D", "MAX_POOL_2D", "CONV_2D"]
    assert sum(layer["instructions_p50"] for layer in layers) == pytest.approx(cost["instructions_p50"], rel=0.05)


@pytest.mark.parametrize("machine", ["mps2-an386", "mps2-an500"])
def test_cycles_are_estimated_per_layer_from_a_trace(hil_setup, machine, tmp_path):
    """--cycles traces input 0's inference: the trace's instructions per layer are what the board's SysTick
    measured (so the layers are delimited right), and the estimated cycles are more than the instructions on the
    single-issue M4 (loads and taken branches cost 2-3) and fewer on the dual-issue M7."""
    out, remote_path, _ = hil_setup
    # input 0 twice: the profile's median is then input 0's, the one traced (data-dependent layers differ)
    np.savez(tmp_path / "few.npz", **{k: v[[0, 0]] for k, v in np.load(out / "test.npz").items()})
    result = CliRunner().invoke(main, ["hil", "--emulate", machine, "--bundle", str(out / "digits.bisup"), "--data",
                                       str(tmp_path / "few.npz"), "--remote", str(remote_path), "--cycles",
                                       "--report", str(tmp_path / "hil.json")])
    assert result.exit_code == 0, result.stderr + result.stdout
    report = json.loads((tmp_path / "hil.json").read_text())
    estimate, layers = report["device_cycle_estimate"], report["device_layers"]
    assert len(estimate["layers"]) == len(layers)
    for traced, measured in zip(estimate["layers"], layers, strict=True):  # SysTick resolves 40 instructions
        assert traced["instructions"] == pytest.approx(measured["instructions_p50"], rel=0.02, abs=200)
    assert sum(estimate["mix"].values()) == pytest.approx(1.0) and estimate["mix"]["load_store"] > 0.2
    ratio = estimate["cycles_per_instruction"]
    assert (1.1 < ratio < 2.5) if machine == "mps2-an386" else (0.5 < ratio < 1.0)
    assert "cycles, estimated (input 0)" in result.stdout and "est. cycles" in result.stdout


def test_hil_passes_beside_cpu_burners(hil_setup):
    """The waits count the board's own instructions: two busy loops beside the run change how long it takes in
    host seconds, not whether it passes (bench/hil_under_load.py repeats this on VWW on every board)."""
    import subprocess
    import sys

    out, remote_path, _ = hil_setup
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        result = CliRunner().invoke(main, ["hil", "--emulate", "mps3-an547", "--bundle", str(out / "digits.bisup"),
                                           "--data", str(out / "test.npz"), "--remote", str(remote_path)])
    finally:
        for burner in burners:
            burner.terminate()
            burner.wait()
    assert result.exit_code == 0, result.stderr + result.stdout


def test_hil_on_qemu_matches_the_calibrated_figures(hil_setup):
    out, remote_path, achieved = hil_setup
    result = CliRunner().invoke(main, ["hil", "--emulate", "mps2-an386", "--bundle", str(out / "digits.bisup"),
                                       "--data", str(out / "test.npz"), "--remote", str(remote_path),
                                       "--report", str(out / "hil.json"), "--junit", str(out / "hil.xml")])
    assert result.exit_code == 0, result.stderr + result.stdout
    report = json.loads((out / "hil.json").read_text())
    assert report["complete"] and report["reported"] == report["samples"] == 360
    assert report["offline_agreement"] == 1.0 and report["device_outputs_equal_oracle"] == 1.0
    # the same data the thresholds were calibrated on: the board must reproduce those figures exactly
    assert report["accuracy"]["system"] == pytest.approx(achieved["accuracy"])
    assert report["remote_fraction"] == pytest.approx(achieved["remote_fraction"])
    assert report["rejected_fraction"] == pytest.approx(achieved["rejected_fraction"])
    assert 0 < report["remote_fraction"] < 0.4
    assert report["device_latency_us"]["p50"] is not None
    suite = ET.parse(out / "hil.xml").getroot()
    assert suite.get("tests") == "3" and suite.get("failures") == "0"


def test_bundle_for_another_model_is_refused(hil_setup, converted, tmp_path):
    """The board reports the hash of the model it runs; a bundle with another model is named."""
    from bisup.firmware_bridge.bundle import Bundle
    from bisup.hil import target

    out, remote_path, _ = hil_setup
    board_bundle = Bundle.load(out / "digits.bisup")
    other = Bundle(board_bundle.path, converted.model, board_bundle.thresholds)  # what the host expects
    with pytest.raises(target.HilError, match="the board runs model .* but the bundle holds"):
        elf = target.build_firmware("mps2-an386", board_bundle, tmp_path)
        with target.boot("mps2-an386", elf) as link:
            target.HilSession(link, None).handshake(other.model_hash, 10)


def test_emulated_board_refuses_an_image_it_cannot_run(hil_setup, converted, tmp_path):
    """Like a real board, the emulated one takes threshold and hash from the flashed model image; an image
    that is not one, or that holds another model than the compiled-in weights, gets no HELLO."""
    from bisup.firmware_bridge.bundle import Bundle
    from bisup.firmware_bridge.image import ModelImage
    from bisup.hil import target

    out, _, _ = hil_setup
    board_bundle = Bundle.load(out / "digits.bisup")
    elf = target.build_firmware("mps2-an386", board_bundle, tmp_path)
    good = (tmp_path / target.MODEL_IMAGE).read_bytes()
    assert ModelImage.decode(good) == ModelImage(board_bundle.model, board_bundle.threshold_int8)
    images = {"not an image": b"XSUP" + good[4:], "another model": ModelImage(converted.model, 0).encode()}
    for name, image in images.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(image)
        with pytest.raises(target.HilError, match="did not send HELLO"), \
                target.qemu("mps2-an386", elf, loaders=[target.image_loader("mps2-an386", path)]) as link:
            # 0.2 s of the board's own time: 200 M instructions, a thousand times what booting and greeting take
            target.HilSession(link, None).handshake(board_bundle.model_hash, 0.2)


def test_port_problems_are_named(hil_setup, tmp_path):
    out, remote_path, _ = hil_setup
    result = CliRunner().invoke(main, ["hil", "--port", "/dev/bisup-no-such-port", "--bundle",
                                       str(out / "digits.bisup"), "--data", str(out / "test.npz"), "--remote",
                                       str(remote_path)])
    assert "cannot open serial port /dev/bisup-no-such-port: no such device; check the cable" in error_line(result)
    both = CliRunner().invoke(main, ["hil", "--bundle", str(out), "--data", "x", "--remote", "r"])
    assert both.exit_code == 2 and "exactly one of --port and --emulate" in both.stderr


def test_pytest_plugin_fixtures_run_a_board(hil_setup, pytester):
    """A user's own HIL test, with the shipped plugin's fixtures, on the emulated board."""
    out, remote_path, _ = hil_setup
    pytester.makepyfile(f"""
        import numpy as np

        def test_board(bisup_device, bisup_bridge):
            data = np.load({str(out / "test.npz")!r})
            report = bisup_device.run(data["x"][:40], data["y"][:40])
            assert report["complete"] and report["offline_agreement"] == 1.0
            assert sum(bisup_bridge.counts.values()) > 0
    """)
    # the plugin comes from the installed package's pytest11 entry point, as for a user
    ran = pytester.runpytest("--bisup-emulate", "mps2-an386", "--bisup-bundle",
                             str(out / "digits.bisup"), "--bisup-remote", str(remote_path))
    ran.assert_outcomes(passed=1)
    skipped = pytester.runpytest()
    skipped.assert_outcomes(skipped=1)


def test_data_of_the_wrong_shape_is_named(hil_setup, tmp_path):
    out, remote_path, _ = hil_setup
    np.savez(tmp_path / "wide.npz", x=np.zeros((4, 8, 9, 1), np.float32), y=np.zeros(4, np.int64))
    result = CliRunner().invoke(main, ["hil", "--emulate", "mps2-an386", "--bundle", str(out / "digits.bisup"),
                                       "--data", str(tmp_path / "wide.npz"), "--remote", str(remote_path)])
    assert "samples have shape (8, 9, 1) but the model takes (8, 8, 1)" in error_line(result)


def test_port_already_in_use(hil_setup):
    """Another program holds the board's port (exclusive lock): say so instead of fighting over it."""
    import os

    import serial

    from bisup.firmware_bridge.ptylink import pty_pair

    out, remote_path, _ = hil_setup
    device_end, path, slave = pty_pair()
    try:
        with serial.Serial(path, exclusive=True):
            result = CliRunner().invoke(main, ["hil", "--port", path, "--bundle", str(out / "digits.bisup"),
                                               "--data", str(out / "test.npz"), "--remote", str(remote_path)])
    finally:
        device_end.close()
        os.close(slave)
    assert f"port {path} is already in use by another program" in error_line(result)


def test_each_boot_of_the_emulated_board_has_its_own_id(hil_setup, tmp_path):
    """The boot id comes from the board's entropy (QEMU's loader plays the TRNG), so a reset board
    never reuses the id under which the bridge cached its previous answers."""
    from bisup.firmware_bridge.bundle import Bundle
    from bisup.hil import target

    out, _, _ = hil_setup
    board_bundle = Bundle.load(out / "digits.bisup")
    elf = target.build_firmware("mps2-an386", board_bundle, tmp_path)
    boots = []
    for _ in range(2):
        with target.boot("mps2-an386", elf) as link:
            hello = target.HilSession(link, None).handshake(board_bundle.model_hash, 10)
            boots.append(hello.boot)
    assert boots[0] != boots[1] and hello.max_body >= board_bundle.input_elements


def test_a_board_added_as_one_toml_file_runs(hil_setup, tmp_path, monkeypatch):
    """A copy of the mps2-an386 profile under another name, in a BISUP_BOARDS_PATH folder and nowhere else:
    `bisup hil --emulate` builds the shipped firmware it names for its memory map, and the board says HELLO."""
    from bisup.boards import PROFILE_DIR
    from bisup.firmware_bridge.bundle import Bundle
    from bisup.hil import target

    out, _, _ = hil_setup
    folder = tmp_path / "my-boards"
    folder.mkdir()
    profile = (PROFILE_DIR / "mps2-an386.toml").read_text().replace('name = "mps2-an386"', 'name = "my-m4"')
    (folder / "my-m4.toml").write_text(profile)
    monkeypatch.setenv("BISUP_BOARDS_PATH", str(folder))
    board_bundle = Bundle.load(out / "digits.bisup")
    elf = target.build_firmware("my-m4", board_bundle, tmp_path)
    with target.boot("my-m4", elf) as link:
        hello = target.HilSession(link, None).handshake(board_bundle.model_hash, 10)
    assert hello.device_id == "qemu-my-m4" and hello.model_hash == board_bundle.model_hash


def test_feeding_says_how_far_it_got():
    """A long HIL run reports its progress (every few host seconds; here at every input) but not at the end."""
    import numpy as np

    from bisup.hil import target

    class Session(target.HilSession):
        def feed(self, index, x_q, timeout_s):
            return index

    said = []
    got = Session(target.BoardLink(port=None), None).feed_all(np.zeros((3, 4), np.int8), 1.0, said.append, every_s=0)
    assert got == [0, 1, 2]
    assert said == ["1/3 inputs reported", "2/3 inputs reported"]


def test_hil_over_an_emulated_link_carries_the_relays_and_reports_every_input(hil_setup, tmp_path):
    """`--link`: the board's relays cross the emulated link (delayed, throttled) while the harness's frames pass;
    every input is still reported, with the calibrated decisions. No loss or outage here: each lost frame costs the
    emulated board a 2 s resend timeout in its own time, minutes of host time on a loaded machine."""
    out, remote_path, achieved = hil_setup
    schedule = tmp_path / "link.txt"
    schedule.write_text("0s 100kbps 40ms 0%\n")
    data = tmp_path / "few.npz"
    x, y = np.load(out / "test.npz").values()
    np.savez(data, x=x[:40], y=y[:40])
    result = CliRunner().invoke(main, ["hil", "--emulate", "mps2-an386", "--bundle", str(out / "digits.bisup"),
                                       "--data", str(data), "--remote", str(remote_path), "--link", str(schedule),
                                       "--json"])
    assert result.exit_code == 0, result.stderr + result.stdout
    report = json.loads(result.stdout)
    assert report["complete"] and report["reported"] == 40 and report["offline_agreement"] == 1.0
    carried = next(line for line in result.stderr.splitlines() if "link: up" in line)
    assert " 0 B delivered" not in carried.split(";")[0]


def test_hil_names_a_bad_link_schedule_line_before_building(hil_setup, tmp_path):
    out, remote_path, _ = hil_setup
    schedule = tmp_path / "link.txt"
    schedule.write_text("0s 100kbps 40ms 0%\n10s 5kbps 40ms\n")
    result = CliRunner().invoke(main, ["hil", "--emulate", "mps2-an386", "--bundle", str(out / "digits.bisup"),
                                       "--data", str(out / "test.npz"), "--remote", str(remote_path), "--link",
                                       str(schedule)])
    assert "line 2" in error_line(result)
