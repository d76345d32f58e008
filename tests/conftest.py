"""Shared fixtures: one digits model trained and converted per session, reused by the slow tests."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

pytest_plugins = ["pytester"]


@pytest.fixture(scope="session")
def digits_example(tmp_path_factory):
    """The packaged example: a trained CNN plus calib/val/test/holdout .npz files."""
    from bisup.examples.digits import write_example

    return write_example(tmp_path_factory.mktemp("digits"), epochs=40, seed=0, progress=lambda message: None,
                         remote_epochs=None)  # the tests use the local CNN as their remote; test_cli trains one


@pytest.fixture(scope="session")
def converted(digits_example):
    """The example exported once with the default supervisor; boards are judged from it."""
    from bisup.export.single import convert

    return convert(digits_example["model"], digits_example["calib"], "max-softmax", digits_example["holdout"])


@pytest.fixture(scope="session")
def bundle_dir(converted, digits_example, tmp_path_factory):
    """An export folder plus thresholds.json: what the bridge and the virtual device load."""
    from bisup.boards import load_board
    from bisup.calibration import single as calibrate
    from bisup.export.single import write
    from bisup.firmware_bridge.remotes import open_remote

    out = tmp_path_factory.mktemp("bundle")
    write(converted, load_board("nrf52840"), out)
    result = calibrate.calibrate(out / "model.tflite", open_remote(digits_example["model"]), digits_example["val"],
                                 calibrate.Mode("budget", 0.3))
    calibrate.write(result, out)
    return out


@pytest.fixture(scope="session")
def archive(bundle_dir, tmp_path_factory):
    """`bisup bundle` of the test bundle; tests that tamper with it work on copies."""
    from click.testing import CliRunner

    from bisup.cli import main

    out = tmp_path_factory.mktemp("dist") / "digits-1.0.bisup"
    result = CliRunner().invoke(main, ["bundle", str(bundle_dir), "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`bisup demo` once per session in its own cache: (result, progress messages, cache folder)."""
    from bisup.examples import demo

    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BISUP_CACHE", str(cache))
        messages: list[str] = []
        result = demo.run(progress=messages.append)
    return result, messages, cache


@pytest.fixture
def mosquitto(tmp_path):
    """A plain local mosquitto on a free port; per test, so that a test may restart it or leave it broken."""
    from bisup.service.broker import run_broker

    with run_broker(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
def secure_mosquitto(tmp_path):
    """A TLS mosquitto with passwords and ACLs for devices d1 and d2 and the bridge user."""
    from bisup.service.broker import run_broker

    with run_broker(tmp_path / "mosquitto-secure", secure=True, devices=("d1", "d2")) as broker:
        yield broker


@pytest.fixture(scope="session")
def image_reader(tmp_path_factory):
    """The firmware's model-image reader (tests/c/image_harness.c on bisup_image.c), built for the host under
    sanitizers: a callable from an image file to what the harness prints."""
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed (CI installs it)")
    root = Path(__file__).resolve().parents[1]
    lib = root / "firmware_bridge" / "c"
    exe = tmp_path_factory.mktemp("c") / "image_harness"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=all", f"-I{lib}", str(lib / "bisup_image.c"),
                    str(root / "tests" / "c" / "image_harness.c"), "-o", str(exe)], check=True)
    return lambda path: subprocess.run([str(exe), str(path)], check=True, capture_output=True, text=True).stdout
