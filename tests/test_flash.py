"""`bisup flash`: the model image, the ESP partition table and the plans, checked with esptool's own
image reader, the C reader the firmware uses, and real (absent) hardware for the failure paths."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import struct
from pathlib import Path

import pytest
from cli_errors import error_line
from click.testing import CliRunner

from bisup.boards import load_board
from bisup.cli import main
from bisup.firmware_bridge.image import HEADER_BYTES, ImageError, ModelImage
from bisup.flashing import esp_partitions
from bisup.flashing.esp_partitions import Partition, PartitionError


def test_model_image_round_trip_and_refusals():
    image = ModelImage(bytes(range(256)) * 7, threshold_int8=-17)
    data = image.encode()
    assert data[:4] == b"BSUP" and len(data) == HEADER_BYTES + 1792
    assert ModelImage.decode(data + b"\xff" * 100) == image  # trailing erased flash is fine
    corrupt = bytearray(data)
    corrupt[HEADER_BYTES + 5] ^= 1
    for bad, reason in ((bytes(corrupt), "SHA-256"), (data[:-1], "only 1791"), (b"\xff" * 64, "magic"),
                        (data[:10], "shorter")):
        with pytest.raises(ImageError, match=reason):
            ModelImage.decode(bad)


def test_partition_table_binary_layout():
    """The documented ESP-IDF layout, decoded here independently of esp_partitions.from_binary."""
    table = esp_partitions.for_board(load_board("esp32s3"))
    data = esp_partitions.to_binary(table)
    assert len(data) == 0xC00
    rows = [struct.unpack_from("<2sBBII16sI", data, 32 * i) for i in range(len(table))]
    assert [(r[0], r[1], r[2], r[3], r[5].rstrip(b"\0")) for r in rows] == [
        (b"\xaa\x50", 1, 0x02, 0x9000, b"nvs"), (b"\xaa\x50", 1, 0x01, 0xF000, b"phy_init"),
        (b"\xaa\x50", 0, 0x00, 0x10000, b"factory"), (b"\xaa\x50", 1, 0x40, 0x310000, b"model")]
    md5_row = data[32 * len(table):32 * len(table) + 32]
    assert md5_row[:16] == b"\xeb\xeb" + b"\xff" * 14
    assert md5_row[16:] == hashlib.md5(data[:32 * len(table)]).digest()
    assert set(data[32 * len(table) + 32:]) == {0xFF}
    assert esp_partitions.from_binary(data, 8 << 20) == table


@pytest.mark.parametrize("table, problem", [
    ([Partition("factory", "app", 0, 0x18000, 0x10000)], "not 0x10000-aligned"),
    ([Partition("a", "data", 0x40, 0x9000, 0x2000), Partition("b", "data", 0x40, 0xA000, 0x1000)], "inside"),
    ([Partition("model", "data", 0x40, 0x10000, 0x400000)], "past the"),
    ([Partition("x" * 17, "data", 0x40, 0x9000, 0x1000)], "too long"),
])
def test_partition_table_checks(table, problem):
    with pytest.raises(PartitionError, match=problem):
        esp_partitions.check(table, 0x400000)


def test_partition_table_with_wrong_md5_is_refused():
    data = bytearray(esp_partitions.to_binary(esp_partitions.for_board(load_board("esp32"))))
    data[12] ^= 1  # first entry's size
    with pytest.raises(PartitionError, match="MD5"):
        esp_partitions.from_binary(bytes(data), 4 << 20)


def _image_info(path: Path) -> str:
    """esptool's own image reader (its Python API prints, so capture stdout)."""
    from esptool import cmds

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cmds.image_info(str(path))
    return out.getvalue()


def _dry_run(archive: Path, board: str, out: Path) -> dict:
    result = CliRunner().invoke(main, ["flash", str(archive), "--board", board, "--dry-run", "--out", str(out),
                                       "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
@pytest.mark.toolchain
def test_esp32s3_dry_run_images_pass_esptool_and_the_firmware_reader(archive, bundle_dir, tmp_path, image_reader):
    plan = _dry_run(archive, "esp32s3", tmp_path)
    assert [(w["offset"], w["file"]) for w in plan["writes"]] == [(0x8000, "partition-table.bin"),
                                                                 (0x310000, "model.bin")]
    for write in plan["writes"]:
        assert hashlib.sha256((tmp_path / write["file"]).read_bytes()).hexdigest() == write["sha256"]
    info = _image_info(tmp_path / "model.bin")
    assert "Detected image type: ESP32-S3" in info
    assert "Checksum: " in info and info.count("(valid)") == 2 and "invalid" not in info
    table = esp_partitions.from_binary((tmp_path / "partition-table.bin").read_bytes(), 8 << 20)
    assert (tmp_path / "partitions.csv").read_text() == esp_partitions.to_csv(table)
    model = (bundle_dir / "model.tflite").read_bytes()
    threshold = json.loads((bundle_dir / "thresholds.json").read_text())["local"]["threshold_int8"]
    assert image_reader(tmp_path / "model.bin").split() == [
        "status=0", "offset=96", f"bytes={len(model)}", f"threshold={threshold}",
        f"hash={hashlib.sha256(model).hexdigest()}"]


@pytest.mark.slow
def test_esptool_sees_a_corrupted_esp_model_image(archive, tmp_path):
    _dry_run(archive, "esp32s3", tmp_path)
    data = bytearray((tmp_path / "model.bin").read_bytes())
    data[200] ^= 0x55
    (tmp_path / "model.bin").write_bytes(bytes(data))
    assert "invalid" in _image_info(tmp_path / "model.bin")


@pytest.mark.slow
@pytest.mark.toolchain
def test_cortex_m_dry_run_writes_the_bare_image_at_the_profile_address(archive, tmp_path, image_reader):
    plan = _dry_run(archive, "nrf52840", tmp_path)
    assert plan["tool"] == "pyocd" and [w["offset"] for w in plan["writes"]] == [load_board("nrf52840").model_offset]
    assert image_reader(tmp_path / "model.bin").split()[:2] == ["status=0", "offset=64"]


@pytest.mark.slow
def test_dry_run_table_names_every_write(archive):
    result = CliRunner().invoke(main, ["flash", str(archive), "--board", "esp32s3", "--port", "/dev/ttyUSB0",
                                       "--dry-run"])
    assert result.exit_code == 0, result.stderr
    assert "0x8000" in result.stdout and "0x310000" in result.stdout
    assert ("by hand: save the images with --out DIR, then: esptool --chip esp32s3 --port /dev/ttyUSB0 write-flash "
            "0x8000 DIR/partition-table.bin 0x310000 DIR/model.bin") in result.stdout
    assert "exported for nrf52840, not esp32s3" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--board", "mps2-an386"], "knows esptool and pyocd boards"),
    (["--board", "atmega328"], "unknown board"),
    (["--board", "esp32s3", "--port", "/dev/ttyBISUP-NONE"], "could not flash esp32s3 on /dev/ttyBISUP-NONE"),
    (["--board", "esp32s3"], "need --port"),
    # pyocd scans the USB bus for real; no probe is attached to a CI machine.
    (["--board", "nrf52840", "--probe", "bisup-no-such-probe"], "no debug probe found with id bisup-no-such-probe"),
])
def test_flash_failures_are_one_line(archive, args, message):
    result = CliRunner().invoke(main, ["flash", str(archive), *args])
    assert message in error_line(result)
    assert "\x1b[" not in result.output  # no tool's own coloured lines around ours


@pytest.mark.slow
def test_model_too_big_for_the_board(archive, tmp_path):
    profile = (load_board.__globals__["PROFILE_DIR"] / "esp32s3.toml").read_text()
    tiny = tmp_path / "tiny.toml"
    tiny.write_text(profile.replace("8_388_608", "3_215_360").replace('name = "esp32s3"', 'name = "tiny"'))
    result = CliRunner().invoke(main, ["flash", str(archive), "--board", str(tiny), "--dry-run"])
    assert "the 'model' partition (4,096 B)" in error_line(result)
