"""`bisup bundle`: a versioned archive whose manifest catches tampering, truncation and padding."""

from __future__ import annotations

import json
import zipfile

import pytest
from cli_errors import error_line
from click.testing import CliRunner

from bisup.cli import main
from bisup.converters.artefacts import ExportReport
from bisup.export import bundles
from bisup.firmware_bridge.bundle import Bundle, BundleError

pytestmark = pytest.mark.slow


def _rewrite(source, target, change):
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = change(info.filename, old.read(info))
            if data is not None:
                new.writestr(info.filename, data)
    return target


def test_archive_holds_everything_with_hashes(archive, bundle_dir):
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("manifest.json"))
        assert json.loads(z.read("labels.json")) == [str(i) for i in range(10)]
        assert json.loads(z.read("input.json"))["dtype"] == "int8"
        report = ExportReport.from_json(z.read("report.json"))
    assert report.board == "nrf52840" and report.arena_recommended_bytes > report.arena_bytes > 0
    assert names == {"manifest.json", "model.tflite", "thresholds.json", "labels.json", "input.json", "report.json"}
    assert manifest["format"] == 2 and manifest["toolkit_version"]
    assert manifest["members"]["model.tflite"]["size"] == (bundle_dir / "model.tflite").stat().st_size
    verified = CliRunner().invoke(main, ["bundle", "--verify", str(archive)])
    assert verified.exit_code == 0 and "OK, 5 members match the manifest" in verified.stdout


def test_bridge_loads_the_archive_like_the_folder(archive, bundle_dir, monkeypatch):
    packed, folder = Bundle.load(archive), Bundle.load(bundle_dir)
    assert packed.model_hash == folder.model_hash and packed.threshold_int8 == folder.threshold_int8
    assert packed.report == folder.report and packed.thresholds == folder.thresholds
    from bisup.converters import arena

    def no_search(*args, **kwargs):
        raise AssertionError("the arena was searched again although the export report stores it")

    monkeypatch.setattr(arena, "minimum_arena", no_search)  # stands in for 13 subprocess probes
    assert packed.local_model().model_hash == folder.model_hash


def test_tampered_member_is_refused(archive, tmp_path):
    def flip(name, data):
        return data[:100] + bytes([data[100] ^ 1]) + data[101:] if name == "model.tflite" else data

    tampered = _rewrite(archive, tmp_path / "tampered.bisup", flip)
    result = CliRunner().invoke(main, ["bundle", "--verify", str(tampered)])
    assert "model.tflite has SHA-256" in error_line(result) and "modified after it was built" in error_line(result)
    with pytest.raises(BundleError, match="model.tflite has SHA-256"):
        Bundle.load(tampered)


def test_changed_threshold_is_refused(archive, tmp_path):
    def loosen(name, data):
        if name != "thresholds.json":
            return data
        thresholds = json.loads(data)
        thresholds["local"]["threshold_int8"] = -128
        return json.dumps(thresholds).encode()

    with pytest.raises(BundleError, match="thresholds.json is [0-9,]+ B in the archive but [0-9,]+ B in the manifest"):
        bundles.verify(_rewrite(archive, tmp_path / "loose.bisup", loosen))  # refused before decompressing


def test_added_and_removed_members_are_refused(archive, tmp_path):
    padded = _rewrite(archive, tmp_path / "padded.bisup", lambda name, data: data)
    with zipfile.ZipFile(padded, "a") as z:
        z.writestr("policy.json", b"{}")  # a bundle member's name, but not listed in this manifest
    with pytest.raises(BundleError, match=r"extra \['policy.json'\]"):
        bundles.verify(padded)
    foreign = _rewrite(archive, tmp_path / "foreign.bisup", lambda name, data: data)
    with zipfile.ZipFile(foreign, "a") as z:
        z.writestr("extra.bin", b"x")
    with pytest.raises(BundleError, match=r"member 'extra.bin' is not a bisup bundle member"):
        bundles.verify(foreign)
    stripped = _rewrite(archive, tmp_path / "stripped.bisup",
                        lambda name, data: None if name == "labels.json" else data)
    with pytest.raises(BundleError, match=r"missing \['labels.json'\]"):
        bundles.verify(stripped)


def test_truncated_bundle_is_refused(archive, tmp_path):
    cut = tmp_path / "cut.bisup"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    assert "truncated or not a bisup archive" in error_line(CliRunner().invoke(main, ["bundle", "--verify", str(cut)]))


def test_padded_bundle_is_refused(archive, tmp_path):
    """zipfile itself accepts bytes after the end record; the bundle check does not."""
    padded = tmp_path / "padded.bisup"
    padded.write_bytes(archive.read_bytes() + bytes(100))
    assert "has 100 bytes after the end of the archive" in error_line(
        CliRunner().invoke(main, ["bundle", "--verify", str(padded)]))


def test_a_flipped_byte_inside_a_compressed_member_is_named(archive, tmp_path):
    """A flipped byte in deflated data breaks decompression before any hash check: still one clear line."""
    with zipfile.ZipFile(archive) as zipped:
        info = zipped.getinfo("thresholds.json")
    data = bytearray(archive.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + info.compress_size // 2] ^= 0xFF  # inside the data
    flipped = tmp_path / "flipped.bisup"
    flipped.write_bytes(bytes(data))
    for command in (["bundle", "--verify", str(flipped)], ["flash", str(flipped), "--dry-run"]):
        line = error_line(CliRunner().invoke(main, command))
        assert "thresholds.json" in line and "internal error" not in line


def test_a_bundle_of_another_format_says_what_to_do(archive, tmp_path):
    def downgrade(name, data):
        if name != "manifest.json":
            return data
        manifest = json.loads(data)
        manifest["format"] = 1
        return json.dumps(manifest).encode()

    old = _rewrite(archive, tmp_path / "old.bisup", downgrade)
    line = error_line(CliRunner().invoke(main, ["bundle", "--verify", str(old)]))
    assert "format 1, from an older bisup" in line and "rebuild the bundle with `bisup bundle`" in line


def test_build_needs_calibration_first(converted, tmp_path):
    from bisup.boards import load_board
    from bisup.export.single import write

    write(converted, load_board("esp32"), tmp_path)
    result = CliRunner().invoke(main, ["bundle", str(tmp_path), "--out", str(tmp_path / "x.bisup")])
    assert "has no thresholds.json; run `bisup calibrate" in error_line(result)


def test_wrong_label_count(bundle_dir, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    result = CliRunner().invoke(main, ["bundle", str(bundle_dir), "--out", str(tmp_path / "x.bisup"),
                                       "--labels", str(labels)])
    assert "has 2 labels but the model has 10 classes" in error_line(result)
