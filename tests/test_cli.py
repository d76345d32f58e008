"""The command line: tables and JSON, and one clear line plus a non-zero exit for each bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_errors import error_line
from click.testing import CliRunner

from bisup.boards import board_names
from bisup.cli import main


def _run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def _assert_clean_error(result, *fragments: str) -> None:
    line = error_line(result)
    for fragment in fragments:
        assert fragment in line, line


def test_boards_lists_every_profile_as_table_and_json():
    table = _run("boards")
    assert table.exit_code == 0
    for name in board_names():
        assert name in table.stdout
    data = json.loads(_run("boards", "--json").stdout)
    assert {b["name"] for b in data} >= {"esp32", "esp32s3", "nrf52840", "stm32h743", "rp2040"}
    assert all(b["flash_bytes"] > 0 and b["ram_bytes"] > 0 and b["arch"] for b in data)


def test_unknown_board(tmp_path):
    result = _run("export", "m.keras", "--calib", "c.npz", "--board", "esp8266", "--out", tmp_path)
    _assert_clean_error(result, "unknown board 'esp8266'", "esp32s3")


@pytest.mark.slow
def test_export_json_is_the_report(digits_example, tmp_path):
    result = _run("export", digits_example["model"], "--calib", digits_example["calib"], "--board", "nrf52840",
                  "--out", tmp_path, "--json", "--supervisor", "margin")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == json.loads((tmp_path / "report.json").read_text())
    assert report["supervisor"] == "margin" and report["fits"] is True
    engine = report["engine"]  # the figures the table prints, under the same names in the JSON
    assert engine["macs"] == sum(layer["macs"] for layer in engine["layers"]) > 0
    assert engine["latency"]["estimate_us"] > 0 and engine["flash_bytes"] > 0 and engine["tflm_flash_bytes"] > 0
    assert {"parameter_bytes", "arena_offset", "arena_end"} <= set(engine["layers"][0])


@pytest.mark.slow
def test_export_table_and_caveat_warning(digits_example, tmp_path):
    result = _run("export", digits_example["model"], "--calib", digits_example["calib"], "--board", "esp32s3",
                  "--out", tmp_path, "--no-layers")
    assert result.exit_code == 0, result.stderr
    assert "int8 top-1 (TFLM)" in result.stdout and "AUROC float / int8" in result.stdout
    assert "no estimate for xtensa-lx7" in result.stdout and "layer (C engine)" not in result.stdout
    steps = [line.split()[1] for line in result.stderr.splitlines() if line.startswith("bisup: ")]
    assert steps == ["loading", "loading", "choosing", "supervisor", "converting", "measuring", "evaluating",
                     "writing", "generating", "compiling"]  # a line before each step that takes time, in order
    assert "Warning: esp32s3: esp-nn's per-channel FULLY_CONNECTED" in result.stderr
    assert "(on the calibration set: pass --eval for held-out figures)" in result.stdout  # no --eval given


@pytest.mark.slow
def test_digits_writes_the_remote_model_the_walkthrough_uses(tmp_path):
    result = _run("digits", tmp_path, "--epochs", "1", "--remote-epochs", "1")
    assert result.exit_code == 0, result.stderr
    from bisup.firmware_bridge.remotes import open_remote

    remote = open_remote(tmp_path / "remote.keras")
    x = np.load(tmp_path / "test.npz")["x"][:4]
    assert remote.predict(x).shape == (4, 10) and f"remote: {tmp_path / 'remote.keras'}" in result.stdout


@pytest.mark.slow
def test_model_that_does_not_fit_names_number_and_limit(digits_example, tmp_path):
    tiny = tmp_path / "tiny.toml"
    tiny.write_text('name = "tiny"\ntitle = "Tiny"\narch = "cortex-m0plus"\ncpu_mhz = 48\n'
                    'flash_bytes = 4096\nram_bytes = 512\nflash_method = "pyocd"\n')
    result = _run("export", digits_example["model"], "--calib", digits_example["calib"], "--board", tiny,
                  "--out", tmp_path / "out")
    _assert_clean_error(result, "does not fit tiny", "leaves 4,096 B", "of flash")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["fits"] is False and (tmp_path / "out" / "model_data.cc").is_file()  # nothing is lost
    assert report["engine"]["generated"] is False  # 512 B of RAM: not even the engine's 640 B arena fits
    assert "memory peaks at op 1 (MAX_POOL_2D) with 640 B live" in report["engine"]["reason"]
    assert report["engine"]["arena_bytes"] == 640 and report["engine"]["macs"] > 0  # the plan that did not fit
    assert "layer (C engine plan)" in result.stdout and "no estimate for cortex-m0plus" in result.stdout
    assert "Warning: no model_infer.c (the C engine): the planned arena of 640 B exceeds" in result.stderr


def test_corrupt_model_file(tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"this is not a keras archive")
    np.savez(tmp_path / "c.npz", x=np.zeros((200, 8, 8, 1), np.float32))
    result = _run("export", bad, "--calib", tmp_path / "c.npz", "--board", "esp32", "--out", tmp_path / "o")
    _assert_clean_error(result, "bad.keras is corrupt")


def test_missing_model(tmp_path):
    result = _run("export", tmp_path / "nope.keras", "--calib", "c.npz", "--board", "esp32", "--out", tmp_path)
    _assert_clean_error(result, "nope.keras does not exist")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"x": np.zeros((200, 8, 8), np.float32)}, "samples have shape (8, 8) but the model takes (8, 8, 1)"),
        ({"x": np.zeros((200, 8, 8, 1), np.uint8)}, "x is uint8, expected float32"),
        ({"x": np.zeros((20, 8, 8, 1), np.float32)}, "has 20 samples; full-int8 calibration needs at least 100"),
        ({"inputs": np.zeros((200, 8, 8, 1), np.float32)}, "has no array 'x'"),
        ({"x": np.zeros((200, 8, 8, 1), np.float32), "y": np.full(200, 12)}, "labels span 12..12"),
        ({"x": np.zeros((200, 8, 8, 1), np.float32), "y": np.zeros(150, int)}, "x has 200 samples but y has 150"),
    ],
)
def test_bad_calibration_sets(digits_example, tmp_path, arrays, fragment):
    np.savez(tmp_path / "calib.npz", **arrays)
    result = _run("export", digits_example["model"], "--calib", tmp_path / "calib.npz", "--board", "esp32",
                  "--out", tmp_path / "o")
    _assert_clean_error(result, fragment)


def test_missing_calibration_file(digits_example, tmp_path):
    result = _run("export", digits_example["model"], "--calib", tmp_path / "none.npz", "--board", "esp32",
                  "--out", tmp_path / "o")
    _assert_clean_error(result, "none.npz does not exist")


@pytest.mark.slow
@pytest.mark.parametrize(("name", "body", "fragments"), [
    ("TopKMargin", "values, _ = keras.ops.top_k(probs, 2)\n        return values[:, :1] - values[:, 1:]",
     ("TOPK_V2",)),
    ("PerClass", "return probs * 2.0",
     ("PerClass supervisor returns shape (None, 10)", "one confidence per input")),
])
def test_a_custom_supervisor_the_board_cannot_run_is_named(digits_example, tmp_path, name, body, fragments):
    source = tmp_path / "custom_sup.py"
    source.write_text(f"import keras\nclass {name}(keras.layers.Layer):\n    def call(self, probs):\n        {body}\n")
    result = _run("export", digits_example["model"], "--calib", digits_example["calib"], "--board", "esp32",
                  "--out", tmp_path / "o", "--supervisor", f"{source}:{name}")
    _assert_clean_error(result, *fragments)


def test_help_teaches_the_flow():
    result = _run("--help")
    assert "bisup export" in result.stdout and "bisup boards" in result.stdout
    export_help = _run("export", "--help").stdout
    assert "tflite-micro" in export_help and "--supervisor" in export_help
